package proxy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/retention"
	"github.com/trustproxy/trustproxy/internal/sample"
	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/wiring"
)

// world is a real upstream registry and a real notary-server with two
// signers: alice, whom trustproxy trusts, and mallory, whom it does not.
type world struct {
	*testenv.Env
	alice, mallory *testenv.Key
	roots          map[string]string // GUN -> pinned root certificate ID
}

func newWorld(t *testing.T) *world {
	t.Helper()
	return &world{
		Env:     testenv.New(t),
		alice:   testenv.NewKey(t, "alice"),
		mallory: testenv.NewKey(t, "mallory"),
		roots:   map[string]string{},
	}
}

// initRepo creates gun's trust data with a targets/releases delegation held
// by signer, and pins its root.
func (w *world) initRepo(t *testing.T, gun string, signer *testenv.Key) {
	t.Helper()
	w.roots[gun] = w.Notary.Init(t, gun)
	w.Notary.AddDelegation(t, gun, testenv.Releases, signer)
}

// pushSigned pushes a fresh image as repo:tag and signs it in targets/releases.
func (w *world) pushSigned(t *testing.T, repo, tag, seed string) v1.Hash {
	t.Helper()
	img := testenv.Image(t, seed, 2, 32<<10)
	d := w.Registry.Push(t, repo, tag, img)
	w.Notary.SignImage(t, "docker.io/"+repo, tag, img, testenv.Releases)
	return d
}

// pushSignedLayer pushes library/app:tag, an image of one layer of size
// bytes drawn from seed, signs it in targets/releases, and returns the
// layer's digest and length.
func (w *world) pushSignedLayer(t *testing.T, tag, seed string, size int64) (v1.Hash, int64) {
	t.Helper()
	img := testenv.Image(t, seed, 1, size)
	w.Registry.Push(t, "library/app", tag, img)
	w.Notary.SignImage(t, gun, tag, img, testenv.Releases)
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	return ld, mustSize(t, layers[0])
}

// pushSignedIndex pushes library/app:multi, an index of a linux/amd64 and a
// linux/arm64/v8 image, and signs it in targets/releases (initializing the
// repository's trust data).
func (w *world) pushSignedIndex(t *testing.T) (signed v1.Hash, amd, arm v1.Image) {
	t.Helper()
	w.initRepo(t, gun, w.alice)
	amd = testenv.ImageFor(t, "multi", "linux/amd64", 1, 4096)
	arm = testenv.ImageFor(t, "multi", "linux/arm64/v8", 1, 4096)
	idx := testenv.Index(t, amd, arm)
	signed = w.Registry.PushIndex(t, "library/app", "multi", idx)
	w.Notary.SignImage(t, gun, "multi", idx, testenv.Releases)
	return signed, amd, arm
}

// config is the YAML of a trustproxy in front of w: the pinned roots, alice
// as the one trusted signer, extra appended at the top level.
func (w *world) config(t testing.TB, dataDir, extra string) string {
	t.Helper()
	var pins strings.Builder
	for gun, id := range w.roots {
		fmt.Fprintf(&pins, "      %s: [%s]\n", gun, id)
	}
	if pins.Len() == 0 {
		pins.WriteString("      {}\n")
	}
	return fmt.Sprintf(`data_dir: %s
upstreams:
  - name: docker.io
    url: %s
    notary:
      url: %s
      ca_file: %s
trust:
  refresh_ttl: 1h
  pinning:
    certs:
%s  signers:
    - name: alice
      public_key: %s
  rules:
    - repositories: "docker.io/**"
      signers: [alice]
%s`, dataDir, w.Registry.URL(), w.Notary.URL(), w.Notary.CAFile(), pins.String(), w.alice.CertFile, extra)
}

// instance is one trustproxy under test.
type instance struct {
	proxy     *proxy.Server
	retention *retention.Collector // nil without retention configured
	srv       *httptest.Server
	host      string
	logs      *testenv.LogBuffer
	metrics   *prometheus.Registry
	dataDir   string
}

// start runs trustproxy with the YAML configuration cfg.
func start(t testing.TB, cfg string) *instance {
	t.Helper()
	return startAt(t, func(string) string { return cfg })
}

// startAt runs trustproxy with the configuration that cfg returns for the
// URL trustproxy will serve at (what scan.registry_url names). The admin
// API is served too.
func startAt(t testing.TB, cfg func(url string) string) *instance {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + l.Addr().String()
	c, err := config.Load(strings.NewReader(cfg(url)), nil)
	if err != nil {
		t.Fatalf("config: %v\n%s", err, cfg(url))
	}
	logs := &testenv.LogBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := prometheus.NewRegistry()
	p, err := wiring.Open(t.Context(), c, log, reg)
	if err != nil {
		t.Fatalf("proxy.Open: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := p.Close(ctx); err != nil {
			t.Errorf("proxy.Close: %v", err)
		}
	})
	srv := httptest.NewUnstartedServer(p.Handler(p))
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("trustproxy log:\n%s", logs.String())
		}
	})
	return &instance{proxy: p.Server, retention: p.Retention, srv: srv, host: strings.TrimPrefix(srv.URL, "http://"), logs: logs, metrics: reg, dataDir: c.DataDir}
}

// startFor starts trustproxy in front of w with a fresh data directory.
func (w *world) start(t *testing.T, extra string) *instance {
	t.Helper()
	return start(t, w.config(t, t.TempDir(), extra))
}

// replicaConfig is the YAML of one of d's replicas in front of w: data
// directory dataDir, trust data reused for refresh (trust.refresh_ttl), and
// the storage and Redis of d with the further redis fields (d.YAML).
func (w *world) replicaConfig(t *testing.T, d *testenv.Deployment, dataDir string, refresh time.Duration, redisFields ...string) string {
	t.Helper()
	cfg := w.config(t, dataDir, d.YAML(redisFields...))
	return strings.Replace(cfg, "refresh_ttl: 1h", "refresh_ttl: "+refresh.String(), 1)
}

// replica starts one of d's replicas in front of w (replicaConfig). With a
// refresh of 1ns, trust data is checked again on every request, so that
// every pull goes through the trust floor.
func (w *world) replica(t *testing.T, d *testenv.Deployment, dataDir string, refresh time.Duration) *instance {
	t.Helper()
	return start(t, w.replicaConfig(t, d, dataDir, refresh))
}

// peer starts one of d's replicas in front of the upstream at up (w's
// registry or a front of it) with a data directory of its own,
// redis.replica_url as replicaURL says for the replica's own URL, and the
// further redis fields.
func (w *world) peer(t *testing.T, d *testenv.Deployment, up string, replicaURL func(own string) string, redisFields ...string) *instance {
	t.Helper()
	dataDir := t.TempDir()
	return startAt(t, func(own string) string {
		fields := append([]string{"replica_url: " + replicaURL(own)}, redisFields...)
		return strings.Replace(w.config(t, dataDir, d.YAML(fields...)), w.Registry.URL(), up, 1)
	})
}

// pull pulls repo:ref (tag or @digest) through p like a client (sample.Pull).
func (p *instance) pull(t *testing.T, ref string) (v1.Hash, error) {
	t.Helper()
	return sample.Pull(t.Context(), p.host+"/"+ref)
}

// mustPull is pull that fails t on error.
func (p *instance) mustPull(t *testing.T, ref string) v1.Hash {
	t.Helper()
	d, err := p.pull(t, ref)
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	return d
}

// get sends method path (with query) to trustproxy and returns the status
// and body.
func (p *instance) get(t *testing.T, method, path string, header ...string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, p.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// wantDenied asserts a 403 DENIED registry error whose message names reason:
// a reference, repository or content that fails a policy.
func wantDenied(t *testing.T, status int, body []byte, reason proxy.Reason) {
	t.Helper()
	wantRefused(t, status, body, http.StatusForbidden, "DENIED", reason)
}

// wantRefused asserts a registry error of wantStatus and code whose message
// names reason. A reference that a verified trust view does not hold is 404
// MANIFEST_UNKNOWN (not_signed) or BLOB_UNKNOWN (not_referenced); other
// refusals are 403 DENIED (wantDenied).
func wantRefused(t *testing.T, status int, body []byte, wantStatus int, code string, reason proxy.Reason) {
	t.Helper()
	var e struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) == 0 {
		t.Fatalf("status %d, body %q: not a registry error", status, body)
	}
	if status != wantStatus || e.Errors[0].Code != code || !strings.Contains(e.Errors[0].Message, "("+string(reason)+")") {
		t.Fatalf("got %d %s %q, want %d %s naming %s", status, e.Errors[0].Code, e.Errors[0].Message, wantStatus, code, reason)
	}
}

// decision returns the last decision line about repo and ref. A blob's
// decision is logged when its serving ends, which may be just after the
// client has its last byte: decision waits a little for it.
func (p *instance) decision(t *testing.T, repo, ref string) map[string]any {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var last map[string]any
		for _, line := range p.logs.Lines() {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) != nil || m["msg"] != "decision" {
				continue
			}
			if m["repo"] == repo && m["ref"] == ref {
				last = m
			}
		}
		if last != nil {
			return last
		}
		if time.Now().After(deadline) {
			t.Fatalf("no decision logged for %s %s", repo, ref)
		}
	}
}

// wantDecision asserts the last decision about repo and ref.
func (p *instance) wantDecision(t *testing.T, repo, ref, verdict string, reason proxy.Reason) {
	t.Helper()
	d := p.decision(t, repo, ref)
	if d["verdict"] != verdict || d["reason"] != string(reason) {
		t.Fatalf("decision for %s %s: %v, want verdict %s reason %s", repo, ref, d, verdict, reason)
	}
}

// decisions sums trustproxy_decisions_total{verdict,reason} over its
// other labels (upstream, rule).
func (p *instance) decisions(t *testing.T, verdict, reason string) float64 {
	t.Helper()
	mfs, err := p.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != "trustproxy_decisions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["verdict"] == verdict && labels["reason"] == reason {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// storedBlobs lists the blob digests in trustproxy's filesystem storage.
func (p *instance) storedBlobs(t *testing.T) []string {
	t.Helper()
	var out []string
	root := filepath.Join(p.dataDir, "storage", "docker", "registry", "v2", "blobs", "sha256")
	_ = filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
		if err == nil && info.Name() == "data" {
			out = append(out, "sha256:"+filepath.Base(filepath.Dir(path)))
		}
		return nil
	})
	return out
}

// gauge reads the gauge name (no labels).
func (p *instance) gauge(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := p.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no gauge %s", name)
	return 0
}
