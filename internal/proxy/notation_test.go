package proxy_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// notationRule is a rule for docker.io/** judged by Notation alone, the
// signer acme trusted.
const notationRule = `    - repositories: "docker.io/**"
      sources: [notation]
      signers: [acme]
`

// notationConfig is w's configuration with the signer acme (ca, with
// identities) and rule in place of the default rule.
func (w *world) notationConfig(t *testing.T, dataDir string, ca *testenv.NotationCA, identities []string, rule, extra string) string {
	t.Helper()
	ids, _ := json.Marshal(identities)
	cfg := w.config(t, dataDir, extra)
	cfg = strings.Replace(cfg, "  rules:\n", "    - name: acme\n      notation_ca: "+ca.PEMFile+"\n      notation_identities: "+string(ids)+"\n  rules:\n", 1)
	return strings.Replace(cfg, "    - repositories: \"docker.io/**\"\n      signers: [alice]\n", rule, 1)
}

// pushNotationSigned pushes a fresh image as library/app:tag and signs its
// digest with k (nil: unsigned).
func (w *world) pushNotationSigned(t *testing.T, tag, seed string, k *testenv.NotationKey) v1.Hash {
	t.Helper()
	h := w.Registry.Push(t, "library/app", tag, testenv.Image(t, seed, 2, 8<<10))
	if k != nil {
		w.Registry.NotationSign(t, "library/app", digest.Digest(h.String()), k)
	}
	return h
}

// TestNotation: under a notation-only rule, an image signed under the
// pinned CA by a trusted identity is served (tag and digest, through
// go-containerregistry's client); one signed under another CA, one by an
// identity the signer does not list, an unsigned one and a blob of an
// unverified manifest are refused with their reasons; tags/list leaves the
// referrers tags out.
func TestNotation(t *testing.T) {
	w := newWorld(t)
	acme, evil := testenv.NewNotationCA(t, "acme"), testenv.NewNotationCA(t, "evil")
	release := acme.Key(t, "release", 0)
	signed := w.pushNotationSigned(t, "v1", "notation-v1", release)
	untrusted := w.pushNotationSigned(t, "evil", "notation-evil", evil.Key(t, "release", 0))
	w.pushNotationSigned(t, "intern", "notation-intern", acme.Key(t, "intern", 0))
	w.pushNotationSigned(t, "unsigned", "notation-unsigned", nil)
	p := start(t, w.notationConfig(t, t.TempDir(), acme, []string{release.Identity()}, notationRule, ""))

	if got := p.mustPull(t, "library/app:v1"); got != signed {
		t.Fatalf("served %s, want %s", got, signed)
	}
	d := p.decision(t, gun, "v1")
	if d["verdict"] != "served" || d["source"] != "notation" || d["role"] != "notation" || !slices.Equal(toStrings(d["signers"]), []string{"acme"}) {
		t.Fatalf("decision %v, want served by notation, signer acme", d)
	}
	if got := p.mustPull(t, "library/app@"+signed.String()); got != signed {
		t.Fatalf("by digest: served %s", got)
	}

	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/evil")
	wantDenied(t, status, body, proxy.Reason(trust.UntrustedSigner))
	p.wantDecision(t, gun, "evil", "denied", proxy.Reason(trust.UntrustedSigner))
	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/manifests/intern")
	wantDenied(t, status, body, proxy.ReasonIdentityMismatch)
	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/manifests/unsigned")
	wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned))
	if !strings.Contains(string(body), "notation") {
		t.Errorf("refusal %s does not say notation refused", body)
	}
	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/blobs/"+w.layerOf(t, untrusted).String())
	wantRefused(t, status, body, http.StatusNotFound, "BLOB_UNKNOWN", proxy.ReasonNotReferenced)

	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/tags/list")
	var tags struct{ Tags []string }
	if err := json.Unmarshal(body, &tags); status != http.StatusOK || err != nil {
		t.Fatalf("tags/list: %d %s", status, body)
	}
	if slices.ContainsFunc(tags.Tags, func(s string) bool { return strings.HasPrefix(s, "sha256-") }) || !slices.Contains(tags.Tags, "v1") {
		t.Errorf("tags/list %v: want v1, and no referrers tags", tags.Tags)
	}
}

// TestNotationRevocation: with trust.notation.revocation on, the CRL
// distribution point a signer's certificate names is reached only on a
// public address or a host trust.notation.revocation_hosts lists: a
// certificate naming a loopback CRL (an address inside the cluster, for a
// hostile CA's or a careless signer's certificate) is refused
// revocation_unknown and nothing connects there. Listed, a leaf the CRL
// revokes is refused revoked and the others are served.
func TestNotationRevocation(t *testing.T) {
	w := newWorld(t)
	acme := testenv.NewNotationCA(t, "acme")
	var fetched atomic.Int64
	var crl atomic.Pointer[[]byte]
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		fetched.Add(1)
		_, _ = rw.Write(*crl.Load())
	}))
	t.Cleanup(srv.Close)
	release, leaked := acme.RevocableKey(t, "release", srv.URL+"/acme.crl"), acme.RevocableKey(t, "leaked", srv.URL+"/acme.crl")
	list := acme.CRL(t, leaked)
	crl.Store(&list)
	signed := w.pushNotationSigned(t, "v1", "notation-revocation-v1", release)
	w.pushNotationSigned(t, "leaked", "notation-revocation-leaked", leaked)
	config := func(hosts string) string {
		cfg := w.notationConfig(t, t.TempDir(), acme, []string{"*"}, notationRule, "")
		return strings.Replace(cfg, "trust:\n", "trust:\n  notation:\n    revocation: \"on\"\n    revocation_hosts: ["+hosts+"]\n", 1)
	}

	p := start(t, config(""))
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, proxy.ReasonRevocationUnknown)
	if !strings.Contains(string(body), "revocation_hosts") {
		t.Errorf("refusal %s does not say where to allow the host", body)
	}
	if n := fetched.Load(); n != 0 {
		t.Fatalf("the unlisted loopback CRL server was fetched %d times", n)
	}

	p = start(t, config(srv.Listener.Addr().String()))
	if got := p.mustPull(t, "library/app:v1"); got != signed {
		t.Fatalf("served %s, want %s", got, signed)
	}
	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/manifests/leaked")
	wantDenied(t, status, body, proxy.ReasonRevoked)
	p.wantDecision(t, gun, "leaked", "denied", proxy.ReasonRevoked)
	if fetched.Load() == 0 {
		t.Fatal("the listed CRL server was never fetched")
	}
}

// TestNotationRequireAll: a rule requiring all of notary and notation
// refuses an image only one of them signed, naming what is missing, and
// serves one both signed.
func TestNotationRequireAll(t *testing.T) {
	w := newWorld(t)
	acme := testenv.NewNotationCA(t, "acme")
	k := acme.Key(t, "release", 0)
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "notary-only", "nall-notary-only")
	w.pushNotationSigned(t, "notation-only", "nall-notation-only", k)
	both := w.pushSigned(t, "library/app", "both", "nall-both")
	w.Registry.NotationSign(t, "library/app", digest.Digest(both.String()), k)
	rule := `    - repositories: "docker.io/**"
      sources: [notary, notation]
      require: all
      signers: [alice, acme]
`
	p := start(t, w.notationConfig(t, t.TempDir(), acme, []string{"*"}, rule, ""))

	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/notary-only")
	wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned))
	if !strings.Contains(string(body), "notation did not verify") {
		t.Errorf("refusal %s does not name notation as missing", body)
	}
	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/manifests/notation-only")
	wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned))
	if !strings.Contains(string(body), "notary did not verify") {
		t.Errorf("refusal %s does not name notary as missing", body)
	}
	if got := p.mustPull(t, "library/app:both"); got != both {
		t.Fatalf("served %s, want %s", got, both)
	}
	d := p.decision(t, gun, "both")
	if d["source"] != "notary+notation" || !slices.Equal(toStrings(d["signers"]), []string{"alice", "acme"}) {
		t.Fatalf("decision %v, want source notary+notation, signers alice and acme", d)
	}
}

// TestNotationAudit: under an audit rule an image signed under another CA
// is served and the decision says it would have been denied, and why.
func TestNotationAudit(t *testing.T) {
	w := newWorld(t)
	acme, evil := testenv.NewNotationCA(t, "acme"), testenv.NewNotationCA(t, "evil")
	h := w.pushNotationSigned(t, "v1", "naudit-v1", evil.Key(t, "release", 0))
	p := start(t, w.notationConfig(t, t.TempDir(), acme, []string{"*"}, notationRule+"      mode: audit\n", ""))
	if got := p.mustPull(t, "library/app:v1"); got != h {
		t.Fatalf("served %s, want %s", got, h)
	}
	d := p.decision(t, gun, "v1")
	if d["verdict"] != "audit" || d["would_deny"] != true || d["reason"] != string(trust.UntrustedSigner) {
		t.Fatalf("decision %v, want audit, would_deny, untrusted_signer", d)
	}
}

// TestNotationDockerPullThroughMirror: the real dockerd, with trustproxy as
// its registry mirror, pulls an image signed under the pinned CA, and
// fails to pull one signed under another CA and an unsigned one, which
// trustproxy denies with their reasons.
func TestNotationDockerPullThroughMirror(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Docker daemon")
	}
	w := newWorld(t)
	acme, evil := testenv.NewNotationCA(t, "acme"), testenv.NewNotationCA(t, "evil")
	signed := w.pushNotationSigned(t, "v1", "docker-notation-v1", acme.Key(t, "release", 0))
	w.pushNotationSigned(t, "evil", "docker-notation-evil", evil.Key(t, "release", 0))
	w.pushNotationSigned(t, "v2", "docker-notation-v2", nil)
	p := start(t, w.notationConfig(t, t.TempDir(), acme, []string{"*"}, notationRule, ""))
	d := testenv.StartDockerd(t, p.srv.URL)
	ctx := t.Context()
	if out, err := d.Pull(ctx, "app:v1"); err != nil {
		t.Fatalf("docker pull app:v1 through the mirror: %v\n%s", err, out)
	}
	digests, err := d.RepoDigests(ctx, "app:v1")
	if err != nil || !slices.Contains(digests, "app@"+signed.String()) {
		t.Fatalf("RepoDigests %v (%v), want app@%s", digests, err, signed)
	}
	if out, err := d.Pull(ctx, "app:evil"); err == nil {
		t.Fatalf("docker pull app:evil (another CA) succeeded:\n%s", out)
	}
	p.wantDecision(t, gun, "evil", "denied", proxy.Reason(trust.UntrustedSigner))
	if out, err := d.Pull(ctx, "app:v2"); err == nil {
		t.Fatalf("docker pull app:v2 (unsigned) succeeded:\n%s", out)
	}
	p.wantDecision(t, gun, "v2", "denied", proxy.Reason(trust.NotSigned))
}
