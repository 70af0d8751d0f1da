package proxy_test

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

// countingFront is the upstream registry w, except that a GET of blob
// waits delay first; it counts those GETs.
func countingFront(t *testing.T, w *world, blob string, delay time.Duration) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	u, _ := url.Parse(w.Registry.URL())
	rp := httputil.NewSingleHostReverseProxy(u)
	var n atomic.Int64
	s := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+blob) {
			n.Add(1)
			time.Sleep(delay)
		}
		rp.ServeHTTP(rw, r)
	}))
	t.Cleanup(s.Close)
	return s, &n
}

// tlsPeer starts one of d's replicas in front of the upstream at up with
// peer TLS under ca: its peer listener on a port of its own, served as
// trustproxy serve does (proxy.Server.PeerServer), and its replica_url as
// replicaURL says for that listener's https:// URL. It returns the
// replica and its peer listener's address.
func (w *world) tlsPeer(t *testing.T, d *testenv.Deployment, up string, ca *testenv.ClusterCA, replicaURL func(own string) string) (*instance, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	cert, key := ca.Issue(t)
	r := w.peer(t, d, up, func(string) string { return replicaURL("https://" + addr) },
		"peer_listen: "+addr, fmt.Sprintf("peer_tls: {ca_file: %s, cert_file: %s, key_file: %s}", ca.CertFile, cert, key))
	h, tc := r.proxy.PeerServer()
	if h == nil {
		t.Fatal("no peer server with redis.peer_tls set")
	}
	srv := &http.Server{Handler: h, ErrorLog: log.New(io.Discard, "", 0)} // handshake refusals are the tests' own
	go func() { _ = srv.Serve(tls.NewListener(l, tc)) }()
	t.Cleanup(func() { srv.Close() })
	if status, _, body := r.get(t, http.MethodGet, "/v2/library/app/manifests/v1"); status != 200 {
		t.Fatalf("manifest: %d %s", status, body)
	}
	return r, addr
}

// blobIs GETs layer from r and says whether the body is the layer.
func blobIs(r *instance, layer v1.Hash) error {
	resp, err := http.Get(r.srv.URL + "/v2/library/app/blobs/" + layer.String())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 || digest.FromBytes(body).String() != layer.String() {
		return fmt.Errorf("%d, %d bytes that are not the layer", resp.StatusCode, len(body))
	}
	return nil
}

// With peer TLS, two replicas fill through each other over mutual TLS
// under the cluster CA: the blob is fetched once from the upstream. The
// fills are served only there: not on the registry port, not in plain
// HTTP, not to a client without a certificate of the cluster CA.
func TestPeerFillsOverTLS(t *testing.T) {
	w := newWorld(t)
	layer := signedLayer(t, w, "tls", 2<<20)
	up, fetches := countingFront(t, w, layer.String(), time.Second)
	d := testenv.NewDeployment(t, testenv.StartRedis(t, ""))
	ca := testenv.NewClusterCA(t)
	self := func(own string) string { return own }
	a, peerA := w.tlsPeer(t, d, up.URL, ca, self)
	b, _ := w.tlsPeer(t, d, up.URL, ca, self)

	errA := make(chan error, 1)
	go func() { errA <- blobIs(a, layer) }()
	time.Sleep(300 * time.Millisecond) // a holds the fill lock, its upstream not answered yet
	if err := blobIs(b, layer); err != nil {
		t.Fatalf("replica b: %v", err)
	}
	if err := <-errA; err != nil {
		t.Fatalf("replica a: %v", err)
	}
	if n := fetches.Load(); n != 1 {
		t.Fatalf("%d upstream fetches of the blob for two replicas, want 1 (b streams a's fill)", n)
	}

	q := "/internal/fills?blob=" + url.QueryEscape(gun+"@"+layer.String()) + "&exp=9999999999"
	if status, _, _ := a.get(t, http.MethodGet, q); status != http.StatusNotFound {
		t.Errorf("fill requests on the registry port with peer TLS: %d, want 404", status)
	}
	if resp, err := http.Get("http://" + peerA + q); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 || resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusNotFound {
			t.Errorf("plain HTTP on the peer listener reached the fill handler: %d", resp.StatusCode)
		}
	}
	pem, err := os.ReadFile(ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	if resp, err := noCert.Get("https://" + peerA + q); err == nil {
		resp.Body.Close()
		t.Errorf("a client without a certificate of the cluster CA got an answer: %d", resp.StatusCode)
	}
}

// A replica with peer TLS follows a fill lock only to a peer that proves
// itself with a certificate of the cluster CA, over https: a holder URL
// served with another CA's certificate, or a plain http:// one (a replica
// without peer TLS), is not used. The replica fetches the blob from the
// upstream itself and serves the right bytes; nothing reaches the
// impostor's handler.
func TestPeerNotOfTheClusterCANotUsed(t *testing.T) {
	var asked atomic.Int64
	impostor := http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		_, _ = rw.Write([]byte("attacker-chosen bytes, not the layer"))
	})
	tlsImpostor := httptest.NewUnstartedServer(impostor)
	tlsImpostor.Config.ErrorLog = log.New(io.Discard, "", 0)
	tlsImpostor.StartTLS() // httptest's own CA, not the cluster's
	t.Cleanup(tlsImpostor.Close)
	plainImpostor := httptest.NewServer(impostor)
	t.Cleanup(plainImpostor.Close)

	tests := []struct {
		name   string
		holder func(t *testing.T, w *world, d *testenv.Deployment, up string, ca *testenv.ClusterCA) *instance
	}{
		{"certificate of another CA", func(t *testing.T, w *world, d *testenv.Deployment, up string, ca *testenv.ClusterCA) *instance {
			r, _ := w.tlsPeer(t, d, up, ca, func(string) string { return tlsImpostor.URL })
			return r
		}},
		{"plain http holder", func(t *testing.T, w *world, d *testenv.Deployment, up string, ca *testenv.ClusterCA) *instance {
			r := w.peer(t, d, up, func(string) string { return plainImpostor.URL })
			if status, _, body := r.get(t, http.MethodGet, "/v2/library/app/manifests/v1"); status != 200 {
				t.Fatalf("manifest: %d %s", status, body)
			}
			return r
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			layer := signedLayer(t, w, "impostor "+tt.name, 1<<20)
			up, fetches := countingFront(t, w, layer.String(), time.Second)
			d := testenv.NewDeployment(t, testenv.StartRedis(t, ""))
			ca := testenv.NewClusterCA(t)
			holder := tt.holder(t, w, d, up.URL, ca)
			b, _ := w.tlsPeer(t, d, up.URL, ca, func(own string) string { return own })
			before := asked.Load()
			done := make(chan error, 1)
			go func() { done <- blobIs(holder, layer) }()
			time.Sleep(300 * time.Millisecond) // the holder's lock names the impostor
			if err := blobIs(b, layer); err != nil {
				t.Fatalf("replica with peer TLS: %v", err)
			}
			<-done
			if n := asked.Load() - before; n != 0 {
				t.Fatalf("%d requests reached the impostor's handler", n)
			}
			// b waits up to 2 s for a holder that keeps its lock fresh
			// (it is alive, only not reachable as a peer): the holder's
			// fill may end meanwhile, and b serves the stored blob.
			if n := fetches.Load(); n < 1 || n > 2 {
				t.Fatalf("%d upstream fetches, want the holder's, and b's own unless the holder's fill ended while b waited", n)
			}
		})
	}
}
