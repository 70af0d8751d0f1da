package proxy_test

// The rows of THREATS.md that no other test plays through trustproxy, and
// what they share: a Notary read API serving metadata that notary's
// testutils swizzler makes (states notary-server never serves), in front of
// a real upstream registry. docs/threat-model.md maps every row to its test.

import (
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/theupdateframework/notary/cryptoservice"
	"github.com/theupdateframework/notary/storage"
	"github.com/theupdateframework/notary/tuf"
	"github.com/theupdateframework/notary/tuf/data"
	"github.com/theupdateframework/notary/tuf/signed"
	"github.com/theupdateframework/notary/tuf/testutils"
	"github.com/theupdateframework/notary/tuf/utils"

	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// wantRefusal asserts the registry error of a refusal for reason: 404
// MANIFEST_UNKNOWN for not_signed, 404 BLOB_UNKNOWN for not_referenced
// (what the trust view does not hold is not there), else 403 DENIED.
func wantRefusal(t *testing.T, status int, body []byte, reason proxy.Reason) {
	t.Helper()
	switch reason {
	case proxy.Reason(trust.NotSigned):
		wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", reason)
	case proxy.ReasonNotReferenced:
		wantRefused(t, status, body, http.StatusNotFound, "BLOB_UNKNOWN", reason)
	default:
		wantDenied(t, status, body, reason)
	}
}

// refused says whether status is a refusal's: 403, or 404 for a reference
// that is no signed target.
func refused(status int) bool {
	return status == http.StatusForbidden || status == http.StatusNotFound
}

// tufWorld is library/app on a real upstream registry, with trust data made
// by notary's testutils and signed by alice in targets/releases, served by
// a Notary read API from whatever the test made of it: swizzled metadata,
// endless or trickled bodies. It counts requests by role.
type tufWorld struct {
	reg    *testenv.Registry
	repo   *tuf.Repo
	cs     signed.CryptoService
	meta   map[data.RoleName][]byte // as last published
	srv    *httptest.Server
	alice  string // alice's certificate, PEM file
	img    v1.Image
	signed v1.Hash // library/app:v1, signed

	mu       sync.Mutex
	store    storage.MetadataStore
	hits     map[string]int
	override func(w http.ResponseWriter, r *http.Request, role string) bool
}

func newTUFWorld(t *testing.T) *tufWorld {
	t.Helper()
	repo, cs, err := testutils.EmptyRepo(gun)
	if err != nil {
		t.Fatal(err)
	}
	w := &tufWorld{reg: testenv.NewRegistry(t), repo: repo, cs: cs, hits: map[string]int{}}
	w.alice = filepath.Join(t.TempDir(), "alice.pem")
	must(t, os.WriteFile(w.alice, utils.CertToPEM(w.delegate(t, testenv.Releases)), 0o600))
	w.srv = httptest.NewServer(http.HandlerFunc(w.serve))
	t.Cleanup(w.srv.Close)
	w.img = testenv.Image(t, "tuf v1", 1, 1024)
	w.signed = w.signImage(t, testenv.Releases, "v1", w.img)
	w.publish(t)
	return w
}

// delegate adds role, all paths, with a new key certified for it, and
// returns the certificate.
func (w *tufWorld) delegate(t *testing.T, role string) *x509.Certificate {
	t.Helper()
	pub, err := w.cs.Create(data.RoleName(role), gun, data.ECDSAKey)
	must(t, err)
	priv, _, err := w.cs.GetPrivateKey(pub.ID())
	must(t, err)
	start := time.Now().Add(-time.Hour)
	cert, err := cryptoservice.GenerateCertificate(priv, gun, start, start.AddDate(1, 0, 0))
	must(t, err)
	key := data.NewECDSAx509PublicKey(utils.CertToPEM(cert))
	must(t, w.repo.UpdateDelegationKeys(data.RoleName(role), data.KeyList{key}, nil, 1))
	must(t, w.repo.UpdateDelegationPaths(data.RoleName(role), []string{""}, nil, false))
	return cert
}

// signImage pushes img as library/app:tag and adds it to role; publish
// makes it served.
func (w *tufWorld) signImage(t *testing.T, role, tag string, img v1.Image) v1.Hash {
	t.Helper()
	d := w.reg.Push(t, "library/app", tag, img)
	raw, err := img.RawManifest()
	must(t, err)
	w.addTarget(t, role, tag, d, int64(len(raw)))
	return d
}

// addTarget adds tag → (d, size) to role; publish makes it served.
func (w *tufWorld) addTarget(t *testing.T, role, tag string, d v1.Hash, size int64) {
	t.Helper()
	meta := data.FileMeta{Length: size, Hashes: data.Hashes{"sha256": mustHex(t, d.Hex)}}
	_, err := w.repo.AddTargets(data.RoleName(role), data.Files{tag: meta})
	must(t, err)
}

// publish signs every role and serves the result.
func (w *tufWorld) publish(t *testing.T) {
	t.Helper()
	meta, err := testutils.SignAndSerialize(w.repo)
	must(t, err)
	w.meta = meta
	w.serveFrom(storage.NewMemoryStore(testutils.CopyRepoMetadata(meta)))
}

// swizzle returns a swizzler over the published metadata; the server
// serves what it makes of it.
func (w *tufWorld) swizzle() *testutils.MetadataSwizzler {
	s := testutils.NewMetadataSwizzler(gun, testutils.CopyRepoMetadata(w.meta), w.cs)
	w.serveFrom(s.MetadataCache)
	return s
}

func (w *tufWorld) serveFrom(st storage.MetadataStore) {
	w.mu.Lock()
	w.store = st
	w.mu.Unlock()
}

// setOverride makes f answer first; it returns true when it did. role is
// the metadata's role ("timestamp", "3.root", "targets/releases").
func (w *tufWorld) setOverride(f func(rw http.ResponseWriter, r *http.Request, role string) bool) {
	w.mu.Lock()
	w.override = f
	w.mu.Unlock()
}

// count is how many requests for role the server has seen.
func (w *tufWorld) count(role string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.hits[role]
}

var checksummed = regexp.MustCompile(`^(.+)\.[0-9a-f]{64}$`)

func (w *tufWorld) serve(rw http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v2/" {
		_, _ = rw.Write([]byte("{}"))
		return
	}
	name, ok := strings.CutPrefix(r.URL.Path, "/v2/"+gun+"/_trust/tuf/")
	if !ok || r.Method != http.MethodGet || !strings.HasSuffix(name, ".json") {
		http.NotFound(rw, r)
		return
	}
	name = strings.TrimSuffix(name, ".json")
	role := name
	if m := checksummed.FindStringSubmatch(name); m != nil {
		role = m[1]
	}
	w.mu.Lock()
	w.hits[role]++
	st, override := w.store, w.override
	w.mu.Unlock()
	if override != nil && override(rw, r, role) {
		return
	}
	b, err := st.GetSized(name, 1<<30)
	if errors.As(err, new(storage.ErrMetaNotFound)) {
		http.NotFound(rw, r)
		return
	}
	if err != nil {
		http.Error(rw, err.Error(), http.StatusInternalServerError)
		return
	}
	_, _ = rw.Write(b)
}

// rootID is the root certificate's key ID: what trust.pinning.certs pins.
func (w *tufWorld) rootID() string {
	return w.repo.Root.Signed.Roles[data.CanonicalRootRole].KeyIDs[0]
}

// config is the YAML of a trustproxy in front of w with data directory
// dataDir: alice the trusted signer, the root pinned (pins, or w's root when
// none), refresh_ttl 1ns (every request asks the Notary server), rule the
// further fields of the rule (", max_staleness: 2s"), extra further
// top-level YAML.
func (w *tufWorld) config(t *testing.T, dataDir, rule, extra string, pins ...string) string {
	t.Helper()
	if len(pins) == 0 {
		pins = []string{w.rootID()}
	}
	return fmt.Sprintf(`data_dir: %s
upstreams: [{name: docker.io, url: %s, notary: {url: %s}}]
trust:
  refresh_ttl: 1ns
  pinning: {certs: {%s: [%s]}}
  signers: [{name: alice, public_key: %s}]
  rules: [{repositories: "docker.io/**", signers: [alice]%s}]
%s`, dataDir, w.reg.URL(), w.srv.URL, gun, strings.Join(pins, ", "), w.alice, rule, extra)
}

// start runs trustproxy in front of w with a fresh data directory.
func (w *tufWorld) start(t *testing.T, rule, extra string) *instance {
	t.Helper()
	return start(t, w.config(t, t.TempDir(), rule, extra))
}

// manifestV1 asks p for library/app:v1's manifest.
func (p *instance) manifestV1(t *testing.T) (int, []byte) {
	t.Helper()
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	return status, body
}

// refusals reads trustproxy_decisions_total{verdict="denied",reason}.
func (p *instance) refusals(t *testing.T, reason proxy.Reason) float64 {
	t.Helper()
	return p.decisions(t, "denied", string(reason))
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	must(t, err)
	return b
}
