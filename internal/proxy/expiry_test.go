package proxy_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trust"
	"github.com/trustproxy/trustproxy/internal/trustserver"
)

// signedInProcess is an upstream holding library/app:v1 and the in-process
// trust server, whose repository signs v1 with alice in targets/releases.
// Its metadata is published by the test, which can choose expiries that
// notary-server never serves.
type signedInProcess struct {
	reg    *testenv.Registry
	notary *httptest.Server
	repo   *trustserver.Repo
	signed v1.Hash
	key    string // alice's public key file
}

func newSignedInProcess(t *testing.T) *signedInProcess {
	t.Helper()
	w := &signedInProcess{reg: testenv.NewRegistry(t)}
	img := testenv.Image(t, "v1", 1, 1024)
	w.signed = w.reg.Push(t, "library/app", "v1", img)
	raw, _ := img.RawManifest()
	ts := trustserver.New()
	w.notary = httptest.NewServer(ts)
	t.Cleanup(w.notary.Close)
	repo, err := ts.NewRepo(gun)
	if err != nil {
		t.Fatal(err)
	}
	alice, err := trustserver.NewSigner("alice")
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.AddDelegation(testenv.Releases, alice); err != nil {
		t.Fatal(err)
	}
	if err := repo.AddTarget(testenv.Releases, "v1", digest.Digest(w.signed.String()), int64(len(raw))); err != nil {
		t.Fatal(err)
	}
	w.repo = repo
	w.key = filepath.Join(t.TempDir(), "alice.pem")
	if err := os.WriteFile(w.key, alice.PublicKeyPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return w
}

// start runs trustproxy in front of w with a fresh data directory.
func (w *signedInProcess) start(t *testing.T, refreshTTL time.Duration) *instance {
	t.Helper()
	return start(t, w.config(t, refreshTTL, "", ""))
}

// config is the YAML of a trustproxy in front of w: upstream holds further
// keys of the upstream (flow style, e.g. "username: u, "), extra further
// top-level sections.
func (w *signedInProcess) config(t *testing.T, refreshTTL time.Duration, upstream, extra string) string {
	t.Helper()
	return fmt.Sprintf(`data_dir: %s
upstreams: [{name: docker.io, url: %s, %snotary: {url: %s}}]
trust:
  refresh_ttl: %s
  pinning: {certs: {%s: [%s]}}
  signers: [{name: alice, public_key: %s}]
  rules: [{repositories: "docker.io/**", signers: [alice]}]
%s`, t.TempDir(), w.reg.URL(), upstream, w.notary.URL, refreshTTL, gun, w.repo.RootCertID(), w.key, extra)
}

func TestExpiredTimestampRefused(t *testing.T) {
	w := newSignedInProcess(t)
	if err := w.repo.Publish(trustserver.Expires("timestamp", time.Now().Add(-time.Hour))); err != nil {
		t.Fatal(err)
	}
	p := w.start(t, time.Minute)
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, proxy.Reason(trust.Expired))
	p.wantDecision(t, gun, "v1", "denied", proxy.Reason(trust.Expired))
	if n := w.reg.ManifestGets(w.signed); n != 0 {
		t.Fatalf("manifest fetched %d times under expired trust data", n)
	}

	// Re-signed with a fresh timestamp, the same tag is served.
	if err := w.repo.Publish(); err != nil {
		t.Fatal(err)
	}
	if got := w.start(t, time.Minute).mustPull(t, "library/app:v1"); got != w.signed {
		t.Fatalf("served %s", got)
	}
}

// TestNotaryDownServesCacheUntilExpiry: with the trust server gone, cached
// trust metadata keeps a warm image served until its timestamp expires; then
// pulls are refused.
func TestNotaryDownServesCacheUntilExpiry(t *testing.T) {
	w := newSignedInProcess(t)
	expires := time.Now().Add(5 * time.Second) // room for two pulls on a loaded machine
	if err := w.repo.Publish(trustserver.Expires("timestamp", expires)); err != nil {
		t.Fatal(err)
	}
	p := w.start(t, 100*time.Millisecond)
	p.mustPull(t, "library/app:v1")

	w.notary.Close()
	time.Sleep(200 * time.Millisecond) // past refresh_ttl: the next pull asks the (gone) server
	if got := p.mustPull(t, "library/app:v1"); got != w.signed {
		t.Fatalf("served %s", got)
	}
	if !strings.Contains(p.logs.String(), "notary unreachable, using cached metadata") {
		t.Error("no warning that cached trust metadata was used")
	}
	// The cached timestamp has expired and the server is still gone: refused,
	// though the manifest and its blobs are in storage.
	time.Sleep(time.Until(expires) + 100*time.Millisecond)
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, proxy.Reason(trust.Expired))
}
