package proxy_test

import (
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// The identity keyless signatures of the signer release are certified for.
const (
	releaseIssuer  = "https://token.actions.example.test"
	releaseSubject = "https://git.example.test/app/.github/workflows/release.yml@refs/heads/main"
)

// keylessRule is a cosign-only rule trusting the key ci and the identity
// release, a transparency-log entry required of both.
const keylessRule = `    - repositories: "docker.io/**"
      sources: [cosign]
      signers: [ci, release]
`

// keylessConfig is cosignConfig with the signer release (a keyless
// identity, its subject matched by subjectRegexp) and trust.cosign.trusted_root.
func (w *world) keylessConfig(t *testing.T, dataDir string, key *testenv.CosignKey, rootFile, subjectRegexp, rule, extra string) string {
	t.Helper()
	cfg := w.cosignConfig(t, dataDir, key, rule, extra)
	cfg = strings.Replace(cfg, "  rules:\n", "    - name: release\n      cosign_identity:\n        issuer: "+releaseIssuer+
		"\n        subject_regexp: '"+subjectRegexp+"'\n  rules:\n", 1)
	return strings.Replace(cfg, "trust:\n", "trust:\n  cosign:\n    trusted_root: "+rootFile+"\n", 1)
}

// anchoredRelease is releaseSubject as a regexp an operator might write.
const anchoredRelease = `https://git\.example\.test/app/\.github/workflows/release\.yml@refs/heads/main`

// pushKeyless pushes a fresh image as library/app:tag and signs it
// keylessly with ss for subject and issuer.
func (w *world) pushKeyless(t *testing.T, tag string, ss *testenv.TestSigstore, subject, issuer string, o testenv.Keyless) v1.Hash {
	t.Helper()
	h := w.pushCosigned(t, tag, "keyless-"+tag, nil)
	w.Registry.KeylessSign(t, "library/app", digest.Digest(h.String()), ss, subject, issuer, o)
	return h
}

// TestCosignKeyless: under a cosign rule trusting an identity, with the
// test Sigstore's trusted root, a keyless signature of that identity is
// served through go-containerregistry's client, naming the signer; another
// subject, another issuer, a certificate of another CA and a bundle
// without its inclusion proof are refused, each with its reason, in the
// response and the decision log. The same rule requires a log entry of
// keyed signatures: the key's logged signature is served, its unlogged
// one refused (no_tlog).
func TestCosignKeyless(t *testing.T) {
	w := newWorld(t)
	ss, stranger := testenv.NewTestSigstore(t), testenv.NewTestSigstore(t)
	ci := testenv.NewCosignKey(t, "ci")
	signed := w.pushKeyless(t, "v1", ss, releaseSubject, releaseIssuer, testenv.Keyless{})
	w.pushKeyless(t, "fork", ss, strings.Replace(releaseSubject, "/app/", "/fork/", 1), releaseIssuer, testenv.Keyless{})
	w.pushKeyless(t, "longer", ss, releaseSubject+".evil.test", releaseIssuer, testenv.Keyless{})
	w.pushKeyless(t, "issuer", ss, releaseSubject, "https://accounts.evil.test", testenv.Keyless{})
	w.pushKeyless(t, "stranger", stranger, releaseSubject, releaseIssuer, testenv.Keyless{})
	w.pushKeyless(t, "noproof", ss, releaseSubject, releaseIssuer, testenv.Keyless{NoInclusionProof: true})
	logged := w.pushCosigned(t, "logged", "keyless-logged", nil)
	w.Registry.CosignAttach(t, "library/app", digest.Digest(logged.String()),
		ss.Logged(t, ci.Bundle(t, w.Registry.Host()+"/library/app", digest.Digest(logged.String())), ci))
	w.pushCosigned(t, "bare", "keyless-bare", ci)
	p := start(t, w.keylessConfig(t, t.TempDir(), ci, ss.RootFile, anchoredRelease, keylessRule, ""))

	if got := p.mustPull(t, "library/app:v1"); got != signed {
		t.Fatalf("served %s, want %s", got, signed)
	}
	if d := p.decision(t, gun, "v1"); d["verdict"] != "served" || !slices.Equal(toStrings(d["signers"]), []string{"release"}) {
		t.Fatalf("decision %v, want served, signer release", d)
	}
	if got := p.mustPull(t, "library/app:logged"); got != logged {
		t.Fatalf("logged keyed signature: served %s, want %s", got, logged)
	}
	if d := p.decision(t, gun, "logged"); !slices.Equal(toStrings(d["signers"]), []string{"ci"}) {
		t.Fatalf("decision %v, want signer ci", d)
	}
	for _, tt := range []struct {
		tag    string
		reason proxy.Reason
		says   string
	}{
		{"fork", proxy.ReasonIdentityMismatch, "subject mismatch"},
		{"longer", proxy.ReasonIdentityMismatch, "subject mismatch"},
		{"issuer", proxy.ReasonIdentityMismatch, "issuer mismatch"},
		{"stranger", proxy.Reason(trust.UntrustedSigner), "not issued by a certificate authority of the trusted root"},
		{"noproof", proxy.ReasonNoTlog, "no inclusion proof"},
		{"bare", proxy.ReasonNoTlog, "without a transparency-log entry"},
	} {
		status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/"+tt.tag)
		wantDenied(t, status, body, tt.reason)
		if !strings.Contains(string(body), tt.says) {
			t.Errorf("%s: refusal %s does not say %q", tt.tag, body, tt.says)
		}
		p.wantDecision(t, gun, tt.tag, "denied", tt.reason)
	}
}

// TestCosignKeylessSharedVerdictStamp: a verdict another replica shared on
// Redis is not reused once the trusted root's content (at the same path)
// or the signer's identity changed: the digest is verified again and
// refused.
func TestCosignKeylessSharedVerdictStamp(t *testing.T) {
	w := newWorld(t)
	ss, stranger := testenv.NewTestSigstore(t), testenv.NewTestSigstore(t)
	ci := testenv.NewCosignKey(t, "ci")
	signed := w.pushKeyless(t, "v1", ss, releaseSubject, releaseIssuer, testenv.Keyless{})
	rs := testenv.StartRedis(t, "")
	d := testenv.NewDeployment(t, rs)
	rootFile := filepath.Join(t.TempDir(), "trusted_root.json")
	copyFile(t, ss.RootFile, rootFile)
	a := start(t, w.keylessConfig(t, t.TempDir(), ci, rootFile, anchoredRelease, keylessRule, d.YAML()))
	a.mustPull(t, "library/app@"+signed.String())

	// Another identity, same root: refused, not served from Redis.
	b := start(t, w.keylessConfig(t, t.TempDir(), ci, rootFile, `https://git\.example\.test/other/.*`, keylessRule, d.YAML()))
	status, _, body := b.get(t, http.MethodGet, "/v2/library/app/manifests/"+signed.String())
	wantDenied(t, status, body, proxy.ReasonIdentityMismatch)

	// Another root at the same path, same identity: refused.
	copyFile(t, stranger.RootFile, rootFile)
	c := start(t, w.keylessConfig(t, t.TempDir(), ci, rootFile, anchoredRelease, keylessRule, d.YAML()))
	status, _, body = c.get(t, http.MethodGet, "/v2/library/app/manifests/"+signed.String())
	wantDenied(t, status, body, proxy.Reason(trust.UntrustedSigner))
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
