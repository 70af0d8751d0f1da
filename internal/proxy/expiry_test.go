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

	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trust"
	"github.com/trustproxy/trustproxy/internal/trustserver"
)

// TestExpiredTimestampRefused needs metadata notary-server never serves: a
// timestamp signed already expired. The in-process trust server signs it with
// the notary library.
func TestExpiredTimestampRefused(t *testing.T) {
	reg := testenv.NewRegistry(t)
	img := testenv.Image(t, "v1", 1, 1024)
	signed := reg.Push(t, "library/app", "v1", img)
	raw, _ := img.RawManifest()

	ts := trustserver.New()
	notary := httptest.NewServer(ts)
	t.Cleanup(notary.Close)
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
	if err := repo.AddTarget(testenv.Releases, "v1", digest.Digest(signed.String()), int64(len(raw))); err != nil {
		t.Fatal(err)
	}
	if err := repo.Publish(trustserver.Expires("timestamp", time.Now().Add(-time.Hour))); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	key := filepath.Join(dir, "alice.pem")
	if err := os.WriteFile(key, alice.PublicKeyPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	p := start(t, fmt.Sprintf(`data_dir: %s
upstreams:
  - name: docker.io
    url: %s
    notary: {url: %s}
trust:
  pinning: {certs: {%s: [%s]}}
  signers: [{name: alice, public_key: %s}]
  rules: [{repositories: "docker.io/**", signers: [alice]}]
`, dir, reg.URL(), notary.URL, gun, repo.RootCertID(), key))

	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, trust.Expired)
	p.wantDecision(t, gun, "v1", "denied", trust.Expired)
	if n := reg.ManifestGets(signed); n != 0 {
		t.Fatalf("manifest fetched %d times under expired trust data", n)
	}

	// Re-signed with a fresh timestamp, the same tag is served.
	if err := repo.Publish(); err != nil {
		t.Fatal(err)
	}
	p2 := start(t, fmt.Sprintf(`data_dir: %s
upstreams: [{name: docker.io, url: %s, notary: {url: %s}}]
trust:
  pinning: {certs: {%s: [%s]}}
  signers: [{name: alice, public_key: %s}]
  rules: [{repositories: "docker.io/**", signers: [alice]}]
`, t.TempDir(), reg.URL(), notary.URL, gun, repo.RootCertID(), key))
	if got := p2.mustPull(t, "library/app:v1"); got != signed {
		t.Fatalf("served %s", got)
	}
}

// TestNotaryDownServesCacheUntilExpiry: with the trust server gone, cached
// trust metadata keeps a warm image served until its timestamp expires; then
// pulls are refused.
func TestNotaryDownServesCacheUntilExpiry(t *testing.T) {
	reg := testenv.NewRegistry(t)
	img := testenv.Image(t, "v1", 1, 1024)
	signed := reg.Push(t, "library/app", "v1", img)
	raw, _ := img.RawManifest()

	ts := trustserver.New()
	notary := httptest.NewServer(ts)
	t.Cleanup(notary.Close)
	repo, err := ts.NewRepo(gun)
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.AddTarget("targets", "v1", digest.Digest(signed.String()), int64(len(raw))); err != nil {
		t.Fatal(err)
	}
	expires := time.Now().Add(5 * time.Second) // room for two pulls on a loaded machine
	if err := repo.Publish(trustserver.Expires("timestamp", expires)); err != nil {
		t.Fatal(err)
	}
	p := start(t, fmt.Sprintf(`data_dir: %s
upstreams: [{name: docker.io, url: %s, notary: {url: %s}}]
trust:
  refresh_ttl: 100ms
  pinning: {certs: {%s: [%s]}}
  rules: [{repositories: "docker.io/**"}]
`, t.TempDir(), reg.URL(), notary.URL, gun, repo.RootCertID()))
	p.mustPull(t, "library/app:v1")

	notary.Close()
	time.Sleep(200 * time.Millisecond) // past refresh_ttl: the next pull asks the (gone) server
	if got := p.mustPull(t, "library/app:v1"); got != signed {
		t.Fatalf("served %s", got)
	}
	if !strings.Contains(p.logs.String(), "notary unreachable, using cached metadata") {
		t.Error("no warning that cached trust metadata was used")
	}
	// The cached timestamp has expired and the server is still gone: refused,
	// though the manifest and its blobs are in storage.
	time.Sleep(time.Until(expires) + 100*time.Millisecond)
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, trust.TrustUnavailable)
}
