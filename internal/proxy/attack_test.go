package proxy_test

// Attacks by a hostile upstream or anonymous client, end to end through
// trustproxy. Each test failed on the code before the check it exercises.

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trust"
)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// signImage pushes img as library/app:tag and signs it in targets/releases.
func (w *signedInProcess) signImage(t *testing.T, tag string, img v1.Image) v1.Hash {
	t.Helper()
	d := w.reg.Push(t, "library/app", tag, img)
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.repo.AddTarget(testenv.Releases, tag, digest.Digest(d.String()), int64(len(raw))); err != nil {
		t.Fatal(err)
	}
	if err := w.repo.Publish(); err != nil {
		t.Fatal(err)
	}
	return d
}

func firstLayer(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	d, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// wantError asserts a registry error with code and a message holding want.
func wantError(t *testing.T, status int, body []byte, wantStatus int, code, want string) {
	t.Helper()
	if status != wantStatus || !strings.Contains(string(body), `"code":"`+code+`"`) || !strings.Contains(string(body), want) {
		t.Fatalf("got %d %s, want %d %s naming %q", status, body, wantStatus, code, want)
	}
}

// TestPlantedNamesKeepTheRollbackFloor (attack 2): before library/app is
// ever pulled, an anonymous client asks for repository names that a
// path-joined trust cache maps onto library/app's files. Nothing is
// written for them; library/app is then served, and a full replay of its
// older trust metadata is refused.
func TestPlantedNamesKeepTheRollbackFloor(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "v1")
	old := w.Notary.Record(t, gun)
	v2 := w.pushSigned(t, "library/app", "v2", "v2")
	dataDir := t.TempDir()
	p := start(t, strings.Replace(w.config(t, dataDir, ""), "refresh_ttl: 1h", "refresh_ttl: 1ns", 1))

	for _, name := range []string{
		"library/app/pinning",
		"library/app/metadata/timestamp.json",
		"library/app/metadata/snapshot.json",
		"library/app/metadata/targets.json",
		"library/app/metadata/targets/releases.json",
		"library/app/metadata/root.json",
	} {
		status, _, body := p.get(t, http.MethodGet, "/v2/"+name+"/manifests/v1")
		wantDenied(t, status, body, proxy.Reason(trust.NoTrustData))
	}
	if entries, _ := os.ReadDir(filepath.Join(dataDir, "trust")); len(entries) != 0 {
		t.Fatalf("requests for repositories without trust data left %d entries in the trust cache", len(entries))
	}
	if got := p.mustPull(t, "library/app:v2"); got != v2 {
		t.Fatalf("served %s, want %s", got, v2)
	}
	w.Notary.Replay(gun, old)
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, proxy.Reason(trust.Rollback))
}

// capture is a server on 127.0.0.1 that records what reaches it; it is
// also reachable as localhost:<port>, a name that resolves to loopback.
type capture struct {
	*httptest.Server
	conns atomic.Int64
	mu    sync.Mutex
	auth  []string
}

func newCapture(t *testing.T, h http.HandlerFunc) *capture {
	c := &capture{}
	c.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		c.auth = append(c.auth, r.Header.Get("Authorization"))
		c.mu.Unlock()
		h(w, r)
	}))
	c.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			c.conns.Add(1)
		}
	}
	c.Start()
	t.Cleanup(c.Close)
	return c
}

func (c *capture) port() string {
	_, p, _ := net.SplitHostPort(c.Listener.Addr().String())
	return p
}

func (c *capture) authHeaders() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.auth...)
}

// bearerUpstream makes w's registry ask for a bearer token from realm, and
// accept only the token "good".
func bearerUpstream(w *signedInProcess, realm string) {
	w.reg.SetFault(func(rw http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get("Authorization") == "Bearer good" {
			return false
		}
		rw.Header().Set("WWW-Authenticate", `Bearer realm="`+realm+`",service="registry.test"`)
		rw.WriteHeader(http.StatusUnauthorized)
		return true
	})
}

// TestUnlistedTokenRealmGetsNoCredentials (attack 3): an upstream whose
// challenge names a realm of its choosing (here a name that resolves to
// loopback, which go-containerregistry accepts) receives nothing there: the
// pull is refused with a reason, and the realm sees no connection.
func TestUnlistedTokenRealmGetsNoCredentials(t *testing.T) {
	w := newSignedInProcess(t)
	must(t, w.repo.Publish())
	stolen := newCapture(t, func(rw http.ResponseWriter, r *http.Request) { fmt.Fprint(rw, `{"token":"good"}`) })
	bearerUpstream(w, "http://localhost:"+stolen.port()+"/token")
	p := start(t, w.config(t, time.Minute, "username: mirror, password: s3cret, ", ""))

	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantError(t, status, body, http.StatusServiceUnavailable, "UNAVAILABLE", "upstreams[0].token_realms")
	if n := stolen.conns.Load(); n != 0 {
		t.Fatalf("the unlisted realm received %d connections (credentials %q)", n, stolen.authHeaders())
	}
}

// TestListedTokenRealmOnPrivateAddress: a realm on the allow-list gets the
// credentials, even on a private IP literal (which go-containerregistry
// refuses outright), and the pull works.
func TestListedTokenRealmOnPrivateAddress(t *testing.T) {
	w := newSignedInProcess(t)
	must(t, w.repo.Publish())
	tokens := newCapture(t, func(rw http.ResponseWriter, r *http.Request) {
		if u, pw, ok := r.BasicAuth(); !ok || u != "mirror" || pw != "s3cret" {
			rw.WriteHeader(http.StatusUnauthorized)
			return
		}
		fmt.Fprint(rw, `{"token":"good","expires_in":300}`)
	})
	bearerUpstream(w, tokens.URL+"/token")
	p := start(t, w.config(t, time.Minute, "username: mirror, password: s3cret, token_realms: ["+tokens.URL+"], ", ""))
	if got := p.mustPull(t, "library/app:v1"); got != w.signed {
		t.Fatalf("served %s", got)
	}
}

// TestRedirectToLoopbackRefused (attack 7): a blob redirect to a host that
// resolves to a non-public address is not followed; the client is told
// why, never what that address answered. Listed in redirect_hosts, the
// redirect is followed without credentials.
func TestRedirectToLoopbackRefused(t *testing.T) {
	w := newSignedInProcess(t)
	img := testenv.Image(t, "redirected", 1, 64<<10)
	w.signImage(t, "r", img)
	layer := firstLayer(t, img)
	// "localhost:<registry port>" is the registry under another name: the
	// internal service an attacker would aim at.
	_, regPort, _ := net.SplitHostPort(w.reg.Host())
	var leaked atomic.Int64
	w.reg.SetFault(func(rw http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.Host, "localhost:") {
			if r.Header.Get("Authorization") != "" {
				leaked.Add(1)
			}
			return false
		}
		if u, pw, ok := r.BasicAuth(); !ok || u != "mirror" || pw != "s3cret" {
			rw.Header().Set("WWW-Authenticate", `Basic realm="registry"`)
			rw.WriteHeader(http.StatusUnauthorized)
			return true
		}
		if strings.HasSuffix(r.URL.Path, "/blobs/"+layer.String()) {
			http.Redirect(rw, r, "http://localhost:"+regPort+r.URL.Path, http.StatusTemporaryRedirect)
			return true
		}
		return false
	})
	before := w.reg.Requests(http.MethodGet, "/blobs/"+layer.String())

	p := start(t, w.config(t, time.Minute, "username: mirror, password: s3cret, ", ""))
	if status, _, _ := p.get(t, http.MethodGet, "/v2/library/app/manifests/r"); status != 200 {
		t.Fatalf("manifest: %d", status)
	}
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/blobs/"+layer.String())
	wantError(t, status, body, http.StatusServiceUnavailable, "UNAVAILABLE", "redirect_hosts")
	if n := w.reg.Requests(http.MethodGet, "/blobs/"+layer.String()) - before; n != 1 {
		t.Fatalf("%d blob GETs reached the registry, want 1 (the redirect not followed)", n)
	}

	p2 := start(t, w.config(t, time.Minute, "username: mirror, password: s3cret, redirect_hosts: [localhost:"+regPort+"], ", ""))
	if got := p2.mustPull(t, "library/app:r"); got.String() == "" {
		t.Fatal("no digest")
	}
	if n := leaked.Load(); n != 0 {
		t.Fatalf("credentials followed the redirect to another host %d times", n)
	}
}

// TestRateLimitedUpstreamNotHammered (attack 7): a 429 with Retry-After is
// respected: clients are told to retry, the upstream is not asked again
// within the window, and verified content in storage is served meanwhile.
func TestRateLimitedUpstreamNotHammered(t *testing.T) {
	w := newSignedInProcess(t)
	cold := testenv.Image(t, "cold", 1, 1024)
	coldDigest := w.signImage(t, "cold", cold)
	p := start(t, w.config(t, time.Minute, "", ""))
	p.mustPull(t, "library/app:v1") // warm

	var limited atomic.Int64
	w.reg.SetFault(func(rw http.ResponseWriter, r *http.Request) bool {
		limited.Add(1)
		rw.Header().Set("Retry-After", "30")
		rw.WriteHeader(http.StatusTooManyRequests)
		return true
	})
	for range 10 {
		status, h, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/cold")
		wantError(t, status, body, http.StatusTooManyRequests, "TOOMANYREQUESTS", "429")
		if ra, err := strconv.Atoi(h.Get("Retry-After")); err != nil || ra < 25 || ra > 30 {
			t.Fatalf("Retry-After %q, want about 30", h.Get("Retry-After"))
		}
	}
	if n := limited.Load(); n != 1 {
		t.Fatalf("the rate-limited upstream was asked %d times, want 1", n)
	}
	if got := p.mustPull(t, "library/app:v1"); got != w.signed {
		t.Fatalf("warm image served as %s while rate limited", got)
	}
	if n := w.reg.ManifestGets(coldDigest); n != 1 {
		t.Fatalf("the cold manifest was asked for %d times, want once (answered 429)", n)
	}
}

// TestTricklingUpstreamBounded (attack 7): an upstream that sends a byte
// just inside the idle timeout cannot hold a fill open: the fill has an
// overall deadline from its size.
func TestTricklingUpstreamBounded(t *testing.T) {
	w := newSignedInProcess(t)
	img := testenv.Image(t, "trickle", 1, 64<<10)
	w.signImage(t, "t", img)
	layer := firstLayer(t, img)
	layers, _ := img.Layers()
	size := mustSize(t, layers[0])
	w.reg.SetFault(func(rw http.ResponseWriter, r *http.Request) bool {
		if !strings.HasSuffix(r.URL.Path, "/blobs/"+layer.String()) {
			return false
		}
		rw.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		rw.WriteHeader(http.StatusOK)
		for stop := time.Now().Add(20 * time.Second); r.Context().Err() == nil && time.Now().Before(stop); {
			if _, err := rw.Write([]byte{0}); err != nil {
				return true
			}
			rw.(http.Flusher).Flush()
			time.Sleep(300 * time.Millisecond)
		}
		return true
	})
	p := start(t, w.config(t, time.Minute, "", `limits:
  upstream_timeout: 1s
  blob_idle_timeout: 1s
  min_transfer_rate: 1048576
`))
	if status, _, _ := p.get(t, http.MethodGet, "/v2/library/app/manifests/t"); status != 200 {
		t.Fatalf("manifest: %d", status)
	}
	done := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(done)
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, p.srv.URL+"/v2/library/app/blobs/"+layer.String(), nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("the trickled fill was still open after 15s (deadline about 1.1s)")
	}
	t.Logf("fill ended after %v", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(p.logs.String(), "deadline") {
		t.Errorf("the log does not say the fill hit its deadline:\n%s", p.logs)
	}
}

// TestClientsThatNeverReadAreDisconnected (attack 7): clients that request
// a large blob and never read do not hold connections and goroutines.
func TestClientsThatNeverReadAreDisconnected(t *testing.T) {
	w := newSignedInProcess(t)
	img := testenv.Image(t, "large", 1, 32<<20)
	w.signImage(t, "large", img)
	layer := firstLayer(t, img)
	p := start(t, w.config(t, time.Minute, "", "limits:\n  client_write_timeout: 1s\n"))
	p.mustPull(t, "library/app:large") // in storage now
	time.Sleep(100 * time.Millisecond)
	base := runtime.NumGoroutine()

	const clients = 50
	conns := make([]*net.TCPConn, 0, clients)
	for range clients {
		c, err := net.Dial("tcp", p.host)
		if err != nil {
			t.Fatal(err)
		}
		tc := c.(*net.TCPConn)
		_ = tc.SetReadBuffer(4096)
		t.Cleanup(func() { tc.Close() })
		fmt.Fprintf(tc, "GET /v2/library/app/blobs/%s HTTP/1.1\r\nHost: %s\r\n\r\n", layer, p.host)
		conns = append(conns, tc)
	}
	time.Sleep(500 * time.Millisecond)
	t.Logf("goroutines %d with %d stalled clients (base %d)", runtime.NumGoroutine(), clients, base)
	deadline := time.Now().Add(15 * time.Second)
	for runtime.NumGoroutine() > base+5 {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines 15s after %d clients stopped reading (base %d): their handlers are stuck", runtime.NumGoroutine(), clients, base)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The connections are closed (their serving goroutines are gone); what
	// the kernel buffered for them drains or is reset on its own.
	for _, c := range conns {
		c.Close()
	}
}

// TestUnknownDigestsDoNotMultiplyUpstreamFetches (attack 6): a repository
// has 30 signed tags whose manifests the upstream lacks. Requests for made
// up blob digests cost at most one upstream fetch per signed target, not
// one per target per request.
func TestUnknownDigestsDoNotMultiplyUpstreamFetches(t *testing.T) {
	w := newSignedInProcess(t)
	for i := range 30 {
		sum := sha256.Sum256([]byte(fmt.Sprint("never pushed ", i)))
		d := digest.NewDigestFromBytes(digest.SHA256, sum[:])
		if err := w.repo.AddTarget(testenv.Releases, fmt.Sprint("gone-", i), d, 500); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.repo.Publish(); err != nil {
		t.Fatal(err)
	}
	p := start(t, w.config(t, time.Minute, "", ""))
	before := w.reg.Requests(http.MethodGet, "")
	for i := range 10 {
		sum := sha256.Sum256([]byte(fmt.Sprint("made up ", i)))
		status, _, body := p.get(t, http.MethodGet, "/v2/library/app/blobs/"+digest.NewDigestFromBytes(digest.SHA256, sum[:]).String())
		wantRefused(t, status, body, http.StatusNotFound, "BLOB_UNKNOWN", proxy.ReasonNotReferenced)
	}
	n := w.reg.Requests(http.MethodGet, "") - before
	t.Logf("10 requests for unknown digests made %d upstream GETs (30 signed targets missing upstream)", n)
	if n > 31 {
		t.Fatalf("10 requests for unknown digests made %d upstream GETs, want at most 31 (one per signed target)", n)
	}
}

// TestBlobsStayInTheirRepository: a layer verified in one repository is not
// served through another signed repository, nor through one without trust
// data, even once it is in storage.
func TestBlobsStayInTheirRepository(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	w.initRepo(t, "docker.io/library/other", w.alice)
	appImg := testenv.Image(t, "app", 1, 4096)
	w.Registry.Push(t, "library/app", "v1", appImg)
	w.Notary.SignImage(t, gun, "v1", appImg, testenv.Releases)
	w.pushSigned(t, "library/other", "v1", "other")
	w.Registry.Push(t, "library/plain", "v1", appImg) // the same layer, in a repository without trust data
	p := w.start(t, "")
	p.mustPull(t, "library/app:v1")
	p.mustPull(t, "library/other:v1")
	layer := firstLayer(t, appImg)

	status, _, body := p.get(t, http.MethodGet, "/v2/library/other/blobs/"+layer.String())
	wantRefused(t, status, body, http.StatusNotFound, "BLOB_UNKNOWN", proxy.ReasonNotReferenced)
	status, _, body = p.get(t, http.MethodGet, "/v2/library/plain/blobs/"+layer.String())
	wantDenied(t, status, body, proxy.Reason(trust.NoTrustData))
	if status, _, _ := p.get(t, http.MethodGet, "/v2/library/app/blobs/"+layer.String()); status != 200 {
		t.Fatalf("the layer in its own repository: %d", status)
	}
}

// TestManyColdPullsBoundedMemory: 20 clients pulling one cold 32 MiB blob
// at once are fed from one upstream fetch through a spool file: the heap
// grows by less than the blob, so neither it nor the clients are buffered.
func TestManyColdPullsBoundedMemory(t *testing.T) {
	w := newSignedInProcess(t)
	img := testenv.Image(t, "heavy", 1, 32<<20)
	w.signImage(t, "heavy", img)
	layer := firstLayer(t, img)
	p := start(t, w.config(t, time.Minute, "", ""))
	if status, _, _ := p.get(t, http.MethodGet, "/v2/library/app/manifests/heavy"); status != 200 {
		t.Fatalf("manifest: %d", status)
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
		}
	}()
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			resp, err := http.Get(p.srv.URL + "/v2/library/app/blobs/" + layer.String())
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			h := sha256.New()
			if _, err := io.Copy(h, resp.Body); err != nil || "sha256:"+fmt.Sprintf("%x", h.Sum(nil)) != layer.String() {
				t.Errorf("blob: %v", err)
			}
		})
	}
	wg.Wait()
	close(stop)
	<-sampled
	if n := w.reg.BlobGets(layer); n != 1 {
		t.Errorf("upstream GETs of the blob: %d, want 1", n)
	}
	grew := int64(peak.Load()) - int64(base)
	t.Logf("heap in use grew by %d MiB at most while 20 clients pulled a cold 32 MiB blob", grew>>20)
	if grew > 24<<20 {
		t.Fatalf("heap grew by %d MiB: the blob or the clients are buffered in memory", grew>>20)
	}
}

// TestUnreachableUpstreamSaysRetry: while the manifests that could refer to
// a blob cannot be fetched (the upstream failing), the client is told to
// retry, not that the blob is unreferenced.
func TestUnreachableUpstreamSaysRetry(t *testing.T) {
	w := newSignedInProcess(t)
	must(t, w.repo.Publish())
	img := testenv.Image(t, "v1", 1, 1024) // the image newSignedInProcess signed as v1
	layer := firstLayer(t, img)
	p := start(t, w.config(t, time.Minute, "", ""))
	w.reg.SetFault(func(rw http.ResponseWriter, r *http.Request) bool {
		rw.WriteHeader(http.StatusServiceUnavailable)
		return true
	})
	for range 3 {
		status, _, body := p.get(t, http.MethodGet, "/v2/library/app/blobs/"+layer.String())
		wantError(t, status, body, http.StatusServiceUnavailable, "UNAVAILABLE", "retry")
	}
	if n := w.reg.Requests(http.MethodGet, "/manifests/"+w.signed.String()); n != 1 {
		t.Fatalf("the failing upstream was asked for the manifest %d times, want 1", n)
	}
}

// TestManyMissingTargetsFetchedOncePerPass: a repository with more signed
// targets missing upstream than any per-target memory holds (old tags whose
// manifests were garbage-collected) costs one upstream fetch per target per
// pass, not per request.
func TestManyMissingTargetsFetchedOncePerPass(t *testing.T) {
	const missing = 4200
	w := newSignedInProcess(t)
	for i := range missing {
		d := digest.FromString(fmt.Sprint("never pushed ", i))
		must(t, w.repo.AddTarget(testenv.Releases, fmt.Sprintf("gone-%05d", i), d, 500))
	}
	must(t, w.repo.Publish())
	p := start(t, w.config(t, time.Minute, "", ""))
	before := w.reg.Requests(http.MethodGet, "")
	for i := range 3 {
		status, _, body := p.get(t, http.MethodGet, "/v2/library/app/blobs/"+digest.FromString(fmt.Sprint("made up ", i)).String())
		wantRefused(t, status, body, http.StatusNotFound, "BLOB_UNKNOWN", proxy.ReasonNotReferenced)
	}
	if n := w.reg.Requests(http.MethodGet, "") - before; n > missing+1 {
		t.Fatalf("3 anonymous requests made %d upstream GETs, want at most %d (one per signed target per pass)", n, missing+1)
	}
}

// TestAuditHeadStartsNoDownload: under an audit rule a blob's length is not
// known from a verified manifest. A HEAD for it asks the upstream's HEAD; it
// does not start a download the upstream could make as long as it likes.
func TestAuditHeadStartsNoDownload(t *testing.T) {
	w := newSignedInProcess(t)
	must(t, w.repo.Publish())
	var gets, heads atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/blobs/") {
			_, _ = rw.Write([]byte("{}"))
			return
		}
		if r.Method == http.MethodHead {
			heads.Add(1)
			rw.Header().Set("Content-Length", "12345")
			return
		}
		gets.Add(1)
		chunk := make([]byte, 1<<20)
		for range 200 { // chunked, no Content-Length
			if _, err := rw.Write(chunk); err != nil {
				return
			}
		}
	}))
	t.Cleanup(up.Close)
	cfg := fmt.Sprintf(`data_dir: %s
upstreams: [{name: docker.io, url: %s, notary: {url: %s}}]
trust:
  refresh_ttl: 1m
  pinning: {certs: {%s: [%s]}}
  signers: [{name: alice, public_key: %s}]
  rules: [{repositories: "docker.io/**", signers: [alice], mode: audit}]
`, t.TempDir(), up.URL, w.notary.URL, gun, w.repo.RootCertID(), w.key)
	p := start(t, cfg)
	status, h, _ := p.get(t, http.MethodHead, "/v2/library/nodata/blobs/"+digest.FromString("anything").String())
	if status != http.StatusOK || h.Get("Content-Length") != "12345" {
		t.Fatalf("HEAD under audit: %d, Content-Length %q", status, h.Get("Content-Length"))
	}
	if gets.Load() != 0 || heads.Load() != 1 {
		t.Fatalf("a HEAD sent %d GETs and %d HEADs upstream, want 0 and 1", gets.Load(), heads.Load())
	}
}

// TestUpstreamTokenFetchedDuringTrustFetch: the upstream's token for a
// repository whose trust data must be fetched is asked for while it is
// fetched, so the manifest request after it goes out with the token and is
// not answered 401 first (against Docker Hub, two round trips saved).
func TestUpstreamTokenFetchedDuringTrustFetch(t *testing.T) {
	w := newSignedInProcess(t)
	must(t, w.repo.Publish())
	img := testenv.Image(t, "v2", 1, 1024)
	signed := w.reg.Push(t, "library/app", "v2", img) // signed later
	tokens := newCapture(t, func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprint(rw, `{"token":"good","expires_in":1}`) // expires, with the trust data, within the test
	})
	var mu sync.Mutex
	var unauthorized []string
	w.reg.SetFault(func(rw http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get("Authorization") == "Bearer good" {
			return false
		}
		mu.Lock()
		unauthorized = append(unauthorized, r.URL.Path)
		mu.Unlock()
		rw.Header().Set("WWW-Authenticate", `Bearer realm="`+tokens.URL+`/token",service="registry.test"`)
		rw.WriteHeader(http.StatusUnauthorized)
		return true
	})
	p := start(t, w.config(t, time.Second, "token_realms: ["+tokens.URL+"], ", ""))
	p.mustPull(t, "library/app:v1") // trustproxy learns that the upstream wants tokens

	raw, _ := img.RawManifest()
	must(t, w.repo.AddTarget(testenv.Releases, "v2", digest.Digest(signed.String()), int64(len(raw))))
	must(t, w.repo.Publish())
	time.Sleep(1100 * time.Millisecond) // the trust data and the token are both stale now
	mu.Lock()
	unauthorized = nil
	mu.Unlock()
	if got := p.mustPull(t, "library/app:v2"); got != signed {
		t.Fatalf("served %s", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if slices.Contains(unauthorized, "/v2/library/app/manifests/"+signed.String()) {
		t.Errorf("the manifest request after the trust fetch was answered 401 first; requests without a token: %v", unauthorized)
	}
}

// TestMadeUpRepositoriesGetNoTokenRequests: the upstream token is asked for
// ahead only once the Notary server has shown trust data for the
// repository: anonymous requests for made-up names, all refused, send the
// upstream's token realm nothing.
func TestMadeUpRepositoriesGetNoTokenRequests(t *testing.T) {
	w := newSignedInProcess(t)
	must(t, w.repo.Publish())
	var mu sync.Mutex
	var scopes []string
	tokens := newCapture(t, func(rw http.ResponseWriter, r *http.Request) {
		mu.Lock()
		scopes = append(scopes, r.URL.Query().Get("scope"))
		mu.Unlock()
		fmt.Fprint(rw, `{"token":"good","expires_in":300}`)
	})
	bearerUpstream(w, tokens.URL+"/token")
	p := start(t, w.config(t, time.Second, "token_realms: ["+tokens.URL+"], ", ""))
	p.mustPull(t, "library/app:v1")
	mu.Lock()
	scopes = nil
	mu.Unlock()
	for i := range 50 {
		code, _, _ := p.get(t, http.MethodGet, fmt.Sprintf("/v2/library/nosuch%d/manifests/latest", i))
		if code == http.StatusOK {
			t.Fatalf("made-up repository served")
		}
	}
	time.Sleep(200 * time.Millisecond) // time for any token request to arrive
	mu.Lock()
	defer mu.Unlock()
	n := 0
	for _, s := range scopes {
		if strings.Contains(s, "nosuch") {
			n++
		}
	}
	if n > 0 {
		t.Errorf("50 anonymous requests for made-up repositories (all refused: no trust data) made %d token requests to the upstream's realm", n)
	}
}
