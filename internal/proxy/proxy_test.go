package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trust"
)

const gun = "docker.io/library/app"

func TestSignedTagServedAndCached(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	signed := w.pushSigned(t, "library/app", "v1", "app-v1")
	p := w.start(t, "")

	if got := p.mustPull(t, "library/app:v1"); got != signed {
		t.Fatalf("served %s, want signed %s", got, signed)
	}
	d := p.decision(t, gun, "v1")
	if d["verdict"] != "served" || d["digest"] != signed.String() || d["role"] != testenv.Releases ||
		fmt.Sprint(d["signers"]) != "[alice]" {
		t.Fatalf("decision %v", d)
	}
	manifests, blobs := w.Registry.ManifestGets(signed), w.Registry.Requests(http.MethodGet, "")
	if manifests != 1 {
		t.Fatalf("upstream manifest GETs = %d, want 1", manifests)
	}
	// Pulled again: everything comes from trustproxy's storage.
	if got := p.mustPull(t, "library/app:v1"); got != signed {
		t.Fatalf("second pull served %s", got)
	}
	if n := w.Registry.Requests(http.MethodGet, ""); n != blobs {
		t.Fatalf("second pull reached the upstream: %d GETs, want %d", n, blobs)
	}
	if len(p.storedBlobs(t)) < 4 { // manifest, config, two layers
		t.Fatalf("stored blobs: %v", p.storedBlobs(t))
	}
	// A client asks the docker way: by short name, through the ns parameter, by digest.
	for _, path := range []string{"/v2/app/manifests/v1", "/v2/library/app/manifests/v1?ns=docker.io",
		"/v2/docker.io/library/app/manifests/v1", "/v2/library/app/manifests/" + signed.String()} {
		if status, h, _ := p.get(t, http.MethodGet, path); status != 200 || h.Get("Docker-Content-Digest") != signed.String() {
			t.Errorf("GET %s: %d %s", path, status, h.Get("Docker-Content-Digest"))
		}
	}
}

func TestUnsignedRepositoryRefused(t *testing.T) {
	w := newWorld(t)
	w.Registry.Push(t, "library/plain", "1", testenv.Image(t, "plain", 1, 1024))
	p := w.start(t, "")

	status, _, body := p.get(t, http.MethodGet, "/v2/library/plain/manifests/1")
	wantDenied(t, status, body, proxy.Reason(trust.NoTrustData))
	p.wantDecision(t, "docker.io/library/plain", "1", "denied", proxy.Reason(trust.NoTrustData))
	if n := w.Registry.Requests(http.MethodGet, "/manifests/1"); n != 0 {
		t.Fatalf("the upstream was asked for the manifest %d times before trust said no", n)
	}
	if got := p.decisions(t, "denied", string(trust.NoTrustData)); got != 1 {
		t.Fatalf("trustproxy_decisions_total{denied,no_trust_data} = %v", got)
	}
}

func TestUntrustedSignerRefused(t *testing.T) {
	w := newWorld(t)
	// rogue's releases are signed by mallory only.
	w.initRepo(t, "docker.io/library/rogue", w.mallory)
	w.pushSigned(t, "library/rogue", "1", "rogue")
	// app is alice's, but mallory also holds a delegation of her own there.
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "good", "good")
	w.Notary.AddDelegation(t, gun, "targets/mallory", w.mallory)
	evil := testenv.Image(t, "evil", 1, 1024)
	w.Registry.Push(t, "library/app", "evil", evil)
	w.Notary.SignImage(t, gun, "evil", evil, "targets/mallory")
	p := w.start(t, "")

	status, _, body := p.get(t, http.MethodGet, "/v2/library/rogue/manifests/1")
	wantDenied(t, status, body, proxy.Reason(trust.UntrustedSigner))
	if !strings.Contains(string(body), "alice") {
		t.Errorf("refusal does not name the signer the rule wants: %s", body)
	}
	p.wantDecision(t, "docker.io/library/rogue", "1", "denied", proxy.Reason(trust.UntrustedSigner))

	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/manifests/evil")
	wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned))
	p.mustPull(t, "library/app:good")
}

func TestTagMovedUpstreamServesSignedDigest(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	signed := w.pushSigned(t, "library/app", "v1", "v1")
	moved := w.Registry.Push(t, "library/app", "v1", testenv.Image(t, "v1-moved", 1, 1024))
	p := w.start(t, "")

	if got := p.mustPull(t, "library/app:v1"); got != signed {
		t.Fatalf("served %s, want signed %s (upstream tag points at %s)", got, signed, moved)
	}
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/"+moved.String())
	wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned))
	if n := w.Registry.ManifestGets(moved); n != 0 {
		t.Fatalf("the moved manifest was fetched %d times", n)
	}
}

func TestMultiArchIndexAndChildrenServed(t *testing.T) {
	w := newWorld(t)
	signed, amd, arm := w.pushSignedIndex(t)
	p := w.start(t, "")

	r, err := name.ParseReference(p.host+"/library/app:multi", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	got, err := remote.Index(r, remote.WithContext(t.Context()))
	if err != nil {
		t.Fatalf("pull index: %v", err)
	}
	if d, _ := got.Digest(); d != signed {
		t.Fatalf("index digest %s, want %s", d, signed)
	}
	for _, child := range []string{mustDigest(t, amd), mustDigest(t, arm)} {
		// The path a DCT client and a daemon take: the child manifest by digest, then its layers.
		if d := p.mustPull(t, "library/app@"+child); d.String() != child {
			t.Fatalf("child %s served as %s", child, d)
		}
	}
}

func TestUnsignedDigestAndUnreferencedBlobRefused(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "v1")
	other := testenv.Image(t, "unsigned", 1, 2048)
	otherDigest := w.Registry.Push(t, "library/app", "unsigned", other)
	p := w.start(t, "")

	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/"+otherDigest.String())
	wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned))
	p.wantDecision(t, gun, otherDigest.String(), "denied", proxy.Reason(trust.NotSigned))

	layers, _ := other.Layers()
	ld, _ := layers[0].Digest()
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		status, _, body = p.get(t, method, "/v2/library/app/blobs/"+ld.String())
		if method == http.MethodHead {
			if status != http.StatusNotFound {
				t.Fatalf("HEAD unreferenced blob: %d", status)
			}
			continue
		}
		wantRefused(t, status, body, http.StatusNotFound, "BLOB_UNKNOWN", proxy.ReasonNotReferenced)
	}
	if n := w.Registry.BlobGets(ld); n != 0 {
		t.Fatalf("unreferenced blob fetched upstream %d times", n)
	}
}

func TestUpstreamBytesMismatchRefusedAndNotCached(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	signed := w.pushSigned(t, "library/app", "v1", "v1")
	p := w.start(t, "")

	w.Registry.SetFault(w.Registry.CorruptBody(testenv.GetPath("/manifests/" + signed.String())))
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, proxy.ReasonDigestMismatch)
	if blobs := p.storedBlobs(t); len(blobs) != 0 {
		t.Fatalf("a mismatching manifest was stored: %v", blobs)
	}

	// The manifest is fine now, but a layer comes back corrupted: the client's
	// connection is cut short and nothing is stored.
	w.Registry.SetFault(nil)
	w2 := w.start(t, "") // a cold trustproxy
	signedImg := testenv.Image(t, "v1", 2, 32<<10)
	layers, _ := signedImg.Layers()
	ld, _ := layers[0].Digest()
	w.Registry.SetFault(w.Registry.CorruptBody(testenv.GetPath("/blobs/" + ld.String())))
	if _, err := w2.pull(t, "library/app:v1"); err == nil {
		t.Fatal("pull with a corrupted layer succeeded")
	}
	if slices.Contains(w2.storedBlobs(t), ld.String()) {
		t.Fatal("the corrupted layer was stored")
	}
	w2.wantDecision(t, gun, ld.String(), "denied", proxy.ReasonDigestMismatch)
	w2.wantDecision(t, gun, "v1", "served", "verified") // the manifest itself was fine
	for _, line := range w2.logs.Lines() {
		if strings.Contains(line, `"msg":"decision"`) && strings.Contains(line, `"ref":"`+ld.String()+`"`) && strings.Contains(line, `"verdict":"served"`) {
			t.Fatalf("the refused layer was also logged as served: %s", line)
		}
	}
	w.Registry.SetFault(nil)
	if _, err := w2.pull(t, "library/app:v1"); err != nil {
		t.Fatalf("pull after the upstream recovered: %v", err)
	}
	if !slices.Contains(w2.storedBlobs(t), ld.String()) {
		t.Fatal("the good layer was not stored")
	}
}

func TestConcurrentColdPullsFetchBlobOnce(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	ld, size := w.pushSignedLayer(t, "big", "big", 32<<20)
	p := w.start(t, "")
	// Verify the manifest first; the layer stays cold.
	if status, _, _ := p.get(t, http.MethodGet, "/v2/library/app/manifests/big"); status != 200 {
		t.Fatalf("manifest: %d", status)
	}

	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, _, body := p.get(t, http.MethodGet, "/v2/library/app/blobs/"+ld.String())
			if status != 200 || int64(len(body)) != size {
				errs <- fmt.Errorf("status %d, %d bytes", status, len(body))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := w.Registry.BlobGets(ld); n != 1 {
		t.Fatalf("upstream served the blob %d times to 20 concurrent clients, want 1", n)
	}
}

func TestWarmContentServedWhenUpstreamStopped(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	signed := w.pushSigned(t, "library/app", "v1", "v1")
	p := w.start(t, "")
	p.mustPull(t, "library/app:v1")
	w.Registry.Stop()
	if got := p.mustPull(t, "library/app:v1"); got != signed {
		t.Fatalf("served %s", got)
	}
}

func TestRequestSpellingsAllChecked(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	signed := w.pushSigned(t, "library/app", "v1", "v1")
	unsigned := w.Registry.Push(t, "library/app", "v2", testenv.Image(t, "v2", 1, 1024))
	p := w.start(t, "")

	tests := []struct {
		name, method, path string
		header             []string
		want               int
	}{
		{"HEAD unsigned tag", "HEAD", "/v2/library/app/manifests/v2", nil, 404},
		{"ns unsigned tag", "GET", "/v2/library/app/manifests/v2?ns=docker.io", nil, 404},
		{"ns unknown upstream", "GET", "/v2/library/app/manifests/v1?ns=127.0.0.1:6379", nil, 404},
		{"If-None-Match unsigned", "GET", "/v2/library/app/manifests/" + unsigned.String(), []string{"If-None-Match", `"` + unsigned.String() + `"`}, 404},
		{"If-None-Match signed", "GET", "/v2/library/app/manifests/v1", []string{"If-None-Match", `"` + signed.String() + `"`}, 304},
		{"encoded slash", "GET", "/v2/library%2Fapp/manifests/v2", nil, 400},
		{"encoded letter", "GET", "/v2/library/%61pp/manifests/v2", nil, 400},
		{"doubled slash", "GET", "/v2/library//app/manifests/v2", nil, 400},
		{"dot dot", "GET", "/v2/library/x/../app/manifests/v2", nil, 400},
		{"uppercase", "GET", "/v2/library/App/manifests/v1", nil, 400},
		{"bad digest", "GET", "/v2/library/app/blobs/sha256:../../x", nil, 400},
		{"PUT manifest", "PUT", "/v2/library/app/manifests/v1", nil, 403},
		{"POST upload", "POST", "/v2/library/app/blobs/uploads/", nil, 403},
		{"DELETE", "DELETE", "/v2/library/app/manifests/" + signed.String(), nil, 403},
		{"PATCH", "PATCH", "/v2/library/app/blobs/uploads/x", nil, 403},
		{"catalog", "GET", "/v2/_catalog?n=100000000", nil, 405},
		{"ping", "GET", "/v2/", nil, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, _, body := p.get(t, tt.method, tt.path, tt.header...)
			if status != tt.want {
				t.Fatalf("%s %s: %d %s, want %d", tt.method, tt.path, status, body, tt.want)
			}
			if status >= 400 && tt.method != "HEAD" && !strings.Contains(string(body), `"message"`) {
				t.Fatalf("error without a message: %s", body)
			}
		})
	}
	if n := w.Registry.ManifestGets(unsigned); n != 0 {
		t.Fatalf("unsigned manifest fetched upstream %d times", n)
	}
}

func TestTagsListOnlyVerified(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "v1")
	w.pushSigned(t, "library/app", "v3", "v3")
	w.Registry.Push(t, "library/app", "v2", testenv.Image(t, "v2", 1, 1024))
	p := w.start(t, "")
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/tags/list")
	if status != 200 || strings.TrimSpace(string(body)) != `{"name":"library/app","tags":["v1","v3"]}` {
		t.Fatalf("tags/list: %d %s", status, body)
	}
	status, h, body := p.get(t, http.MethodGet, "/v2/library/app/tags/list?n=1&ns=docker.io")
	if link := h.Get("Link"); status != 200 || !strings.Contains(string(body), `["v1"]`) ||
		!strings.Contains(link, "last=v1") || !strings.Contains(link, "ns=docker.io") {
		t.Fatalf("tags/list?n=1: %d %s %s", status, body, link)
	}
	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/tags/list?n=0")
	if status != 200 || strings.TrimSpace(string(body)) != `{"name":"library/app","tags":[]}` {
		t.Fatalf("tags/list?n=0: %d %s", status, body)
	}
}

func TestRollbackRefused(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "v1")
	old := w.Notary.Record(t, gun)
	w.pushSigned(t, "library/app", "v2", "v2")
	p := w.start(t, "")
	p.mustPull(t, "library/app:v2") // trustproxy has seen the newer metadata

	// The Notary server now replays the older, still unexpired, metadata.
	w.Notary.Replay(gun, old)
	p2 := start(t, strings.Replace(w.config(t, p.dataDir, ""), "refresh_ttl: 1h", "refresh_ttl: 1ns", 1))
	status, _, body := p2.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, proxy.Reason(trust.Rollback))
	p2.wantDecision(t, gun, "v1", "denied", proxy.Reason(trust.Rollback))
}

func TestNotaryDownUsesCachedMetadata(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	signed := w.pushSigned(t, "library/app", "v1", "v1")
	cfg := w.config(t, t.TempDir(), "")
	p := start(t, strings.Replace(cfg, "refresh_ttl: 1h", "refresh_ttl: 1ns", 1))
	p.mustPull(t, "library/app:v1")
	w.Notary.SetDown(true)
	if got := p.mustPull(t, "library/app:v1"); got != signed {
		t.Fatalf("served %s", got)
	}
	// A repository never seen before has nothing cached: refused.
	status, _, body := p.get(t, http.MethodGet, "/v2/library/other/manifests/1")
	if status != http.StatusForbidden {
		t.Fatalf("unseen repository with the trust server down: %d %s", status, body)
	}
}

func mustDigest(t *testing.T, m interface{ Digest() (v1.Hash, error) }) string {
	t.Helper()
	d, err := m.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func mustSize(t *testing.T, l interface{ Size() (int64, error) }) int64 {
	t.Helper()
	n, err := l.Size()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestPartialBlobNeverStoredAndFillOutlivesClient(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	ld, size := w.pushSignedLayer(t, "big", "big", 8<<20)
	p := w.start(t, "")
	if status, _, _ := p.get(t, http.MethodGet, "/v2/library/app/manifests/big"); status != 200 {
		t.Fatalf("manifest: %d", status)
	}

	// The upstream drops the connection halfway: the client's body is short,
	// and nothing is stored.
	w.Registry.SetFault(w.Registry.Truncate(testenv.GetPath("/blobs/" + ld.String())))
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/blobs/"+ld.String())
	if status == 200 && int64(len(body)) == size {
		t.Fatal("a truncated upstream blob reached the client whole")
	}
	if slices.Contains(p.storedBlobs(t), ld.String()) {
		t.Fatal("a partial blob was stored")
	}

	// The client that starts a fill goes away after the headers; the fill
	// completes anyway and the next client is served from storage.
	w.Registry.SetFault(testenv.Delay(500*time.Millisecond, testenv.GetPath("/blobs/"+ld.String())))
	gets := w.Registry.BlobGets(ld)
	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.srv.URL+"/v2/library/app/blobs/"+ld.String(), nil)
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	}
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Contains(p.storedBlobs(t), ld.String()) {
		if time.Now().After(deadline) {
			t.Fatal("the fill did not complete after its client left")
		}
		time.Sleep(50 * time.Millisecond)
	}
	w.Registry.SetFault(nil)
	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/blobs/"+ld.String())
	if status != 200 || int64(len(body)) != size {
		t.Fatalf("after the fill: %d, %d bytes", status, len(body))
	}
	if n := w.Registry.BlobGets(ld) - gets; n != 1 {
		t.Fatalf("upstream blob GETs since the client left: %d, want 1", n)
	}
}

func TestAuditModeServesAndLogsWhatItWouldRefuse(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	signed := w.pushSigned(t, "library/app", "v1", "v1")
	unsigned := w.Registry.Push(t, "library/app", "v2", testenv.Image(t, "v2", 1, 1024))
	plain := w.Registry.Push(t, "library/plain", "1", testenv.Image(t, "plain", 1, 1024))
	p := start(t, strings.Replace(w.config(t, t.TempDir(), ""), "      signers: [alice]\n", "      signers: [alice]\n      mode: audit\n", 1))

	if got := p.mustPull(t, "library/app:v1"); got != signed {
		t.Fatalf("signed tag served as %s", got)
	}
	p.wantDecision(t, gun, "v1", "served", "verified")
	if got := p.mustPull(t, "library/app:v2"); got != unsigned {
		t.Fatalf("audit mode served %s for the unsigned tag, want the upstream's %s", got, unsigned)
	}
	p.wantDecision(t, gun, "v2", "audit", proxy.Reason(trust.NotSigned))
	if got := p.mustPull(t, "library/plain:1"); got != plain {
		t.Fatalf("audit mode served %s for a repository without trust data", got)
	}
	p.wantDecision(t, "docker.io/library/plain", "1", "audit", proxy.Reason(trust.NoTrustData))
	// tags/list shows what audit mode serves: the upstream's tags.
	if status, _, body := p.get(t, http.MethodGet, "/v2/library/app/tags/list"); status != 200 ||
		strings.TrimSpace(string(body)) != `{"name":"library/app","tags":["v1","v2"]}` {
		t.Fatalf("tags/list in audit mode: %d %s", status, body)
	}
}

// Storage may be a bucket that others can write: a stored manifest whose
// bytes were altered is never served. It is fetched again from the
// upstream and checked against the signed digest; with the upstream gone,
// the pull fails.
func TestAlteredStoredManifestNotServed(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	signed := w.pushSigned(t, "library/app", "v1", "v1")
	p := w.start(t, "")
	p.mustPull(t, "library/app:v1")

	// Same length, still a valid manifest: one hex digit of its config digest changed.
	file := filepath.Join(p.dataDir, "storage", "docker", "registry", "v2", "blobs", "sha256", signed.Hex[:2], signed.Hex, "data")
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte(`"sha256:`)) + len(`"sha256:`)
	altered := bytes.Clone(b)
	altered[i] = "01"[b[i]&1^1]
	if err := os.WriteFile(file, altered, 0o644); err != nil {
		t.Fatal(err)
	}

	path := "/v2/library/app/manifests/v1"
	status, h, body := p.get(t, http.MethodGet, path)
	if status != 200 || h.Get("Docker-Content-Digest") != signed.String() || !bytes.Equal(body, b) {
		t.Fatalf("GET %s after the stored manifest was altered: %d %s, body altered %t", path, status, h.Get("Docker-Content-Digest"), bytes.Equal(body, altered))
	}
	if !strings.Contains(p.logs.String(), "stored manifest unusable") {
		t.Fatalf("no log line about the altered manifest")
	}
	if got := p.counter(t, "trustproxy_storage_unusable_total", "kind", "manifest"); got != 1 {
		t.Errorf("trustproxy_storage_unusable_total{kind=manifest} = %v, want 1", got)
	}
	w.Registry.Stop()
	status, _, body = p.get(t, http.MethodGet, path)
	if status == 200 {
		t.Fatalf("served an altered stored manifest with the upstream gone: %s", body)
	}
}

// TestIndexRebuiltFromStorageAfterRestart: what verified manifests refer
// to is recorded from storage by a new process, without asking the
// upstream: a layer of a signed index's platform image is served by
// digest, a made-up digest refused, and the upstream registry sees nothing.
func TestIndexRebuiltFromStorageAfterRestart(t *testing.T) {
	w := newWorld(t)
	_, amd, arm := w.pushSignedIndex(t)
	dataDir := t.TempDir()
	first := start(t, w.config(t, dataDir, ""))
	for _, child := range []string{mustDigest(t, amd), mustDigest(t, arm)} {
		first.mustPull(t, "library/app@"+child)
	}

	before := w.Registry.Requests("", "")
	second := start(t, w.config(t, dataDir, ""))
	layer := firstLayer(t, arm)
	if status, h, _ := second.get(t, http.MethodGet, "/v2/library/app/blobs/"+layer.String()); status != 200 || h.Get("Docker-Content-Digest") != layer.String() {
		t.Fatalf("GET the arm64 layer after a restart: %d", status)
	}
	madeUp := digest.FromString("made up")
	status, _, body := second.get(t, http.MethodGet, "/v2/library/app/blobs/"+madeUp.String())
	wantRefused(t, status, body, http.StatusNotFound, "BLOB_UNKNOWN", proxy.ReasonNotReferenced)
	if n := w.Registry.Requests("", "") - before; n != 0 {
		t.Fatalf("the restarted proxy sent %d requests to the upstream registry, want 0", n)
	}
}

// A write is refused with a message that names the repository, whatever
// spelling of it the path uses, and is logged as a decision.
func TestWritesRefusedNamingTheRepository(t *testing.T) {
	w := newWorld(t)
	p := w.start(t, "")
	for _, c := range []struct{ method, path, repo string }{
		{http.MethodPut, "/v2/app/manifests/v1", gun},
		{http.MethodPost, "/v2/library/app/blobs/uploads/", gun},
		{http.MethodDelete, "/v2/docker.io/library/app/manifests/sha256:" + strings.Repeat("a", 64), gun},
		{http.MethodPatch, "/v2/library/other/blobs/uploads/1234?ns=docker.io", "docker.io/library/other"},
		{http.MethodPost, "/v2/", ""},
	} {
		status, _, body := p.get(t, c.method, c.path)
		wantDenied(t, status, body, proxy.ReasonReadOnly)
		want := c.repo + " refused (read_only)"
		if c.repo == "" {
			want = "\"refused (read_only)"
		}
		if !strings.Contains(string(body), want) || strings.Contains(string(body), "/v2/") {
			t.Errorf("%s %s: %s, want a message naming %q", c.method, c.path, body, c.repo)
		}
	}
	if n := p.decisions(t, "denied", string(proxy.ReasonReadOnly)); n != 5 {
		t.Fatalf("%v read_only decisions counted, want 5", n)
	}
}

// TestCorruptSpooledLayerRefusedAndNotCached: a layer too large to be held
// in memory is spooled, its clients sent every byte but the last at once,
// and only the storage commit's hash decides. A corrupted one of the same
// length never reaches a client whole, is not stored, and is refused as a
// digest mismatch; the next fill after the upstream recovers stores it.
func TestCorruptSpooledLayerRefusedAndNotCached(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	ld, size := w.pushSignedLayer(t, "v1", "spooled", 4<<20)
	p := w.start(t, "")
	if status, _, _ := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1"); status != 200 {
		t.Fatalf("manifest: %d", status)
	}
	// The upstream holds its last byte until the client has read what it
	// was sent: how far a client is when the hash fails depends otherwise
	// on how fast its writes go (a client behind the fill is cut where it
	// is, which on a loaded machine is short of all but the last).
	release := make(chan struct{})
	free := sync.OnceFunc(func() { close(release) })
	t.Cleanup(free)
	corrupt := w.Registry.CorruptBody(testenv.GetPath("/blobs/" + ld.String()))
	w.Registry.SetFault(func(rw http.ResponseWriter, r *http.Request) bool {
		return corrupt(&lastByteHeld{ResponseWriter: rw, release: release, done: r.Context().Done()}, r)
	})
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, p.srv.URL+"/v2/library/app/blobs/"+ld.String(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, size-1)
	if n, err := io.ReadFull(resp.Body, body); err != nil {
		t.Errorf("the client got %d bytes before the refusal, want all but the last (%d): %v", n, size-1, err)
	}
	free()
	rest, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	if rerr == nil && len(rest) == 1 {
		t.Fatal("a corrupted layer reached the client whole")
	}
	if slices.Contains(p.storedBlobs(t), ld.String()) {
		t.Fatal("the corrupted layer was stored")
	}
	p.wantDecision(t, gun, ld.String(), "denied", proxy.ReasonDigestMismatch)

	w.Registry.SetFault(nil)
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/blobs/"+ld.String())
	if status != 200 || int64(len(body)) != size {
		t.Fatalf("after the upstream recovered: %d, %d bytes", status, len(body))
	}
	if !slices.Contains(p.storedBlobs(t), ld.String()) {
		t.Fatal("the good layer was not stored")
	}
}

// lastByteHeld is a ResponseWriter that sends all but the last byte of a
// write at once, then the last when release is closed (or the request
// ends).
type lastByteHeld struct {
	http.ResponseWriter
	release, done <-chan struct{}
}

func (w *lastByteHeld) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, err := w.ResponseWriter.Write(p[:len(p)-1])
	if err != nil {
		return n, err
	}
	http.NewResponseController(w.ResponseWriter).Flush()
	select {
	case <-w.release:
	case <-w.done:
		return n, http.ErrAbortHandler
	}
	k, err := w.ResponseWriter.Write(p[len(p)-1:])
	return n + k, err
}

// TestStoredBlobRangeHeadAndETag: a stored blob is served from the storage
// driver's file as distribution serves it: Range, HEAD, ETag and
// If-None-Match, with its digest and length.
func TestStoredBlobRangeHeadAndETag(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	ld, _ := w.pushSignedLayer(t, "v1", "stored", 2<<20)
	p := w.start(t, "")
	p.mustPull(t, "library/app:v1")
	_, _, whole := p.get(t, http.MethodGet, "/v2/library/app/blobs/"+ld.String())
	w.Registry.Stop() // from storage only, from here on
	path := "/v2/library/app/blobs/" + ld.String()

	status, h, body := p.get(t, http.MethodGet, path, "Range", "bytes=100-199")
	if status != http.StatusPartialContent || !bytes.Equal(body, whole[100:200]) {
		t.Errorf("Range: %d, %d bytes, equal: %v", status, len(body), bytes.Equal(body, whole[100:200]))
	}
	if got := h.Get("Content-Range"); got != fmt.Sprintf("bytes 100-199/%d", len(whole)) {
		t.Errorf("Content-Range %q", got)
	}
	status, h, body = p.get(t, http.MethodHead, path)
	if status != 200 || len(body) != 0 || h.Get("Content-Length") != strconv.Itoa(len(whole)) ||
		h.Get("Docker-Content-Digest") != ld.String() || h.Get("ETag") != `"`+ld.String()+`"` {
		t.Errorf("HEAD: %d, headers %v", status, h)
	}
	if status, _, _ := p.get(t, http.MethodGet, path, "If-None-Match", `"`+ld.String()+`"`); status != http.StatusNotModified {
		t.Errorf("If-None-Match: %d, want 304", status)
	}
}
