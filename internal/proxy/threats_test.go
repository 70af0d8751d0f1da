package proxy_test

// The rows of THREATS.md that no other test plays through trustproxy, and
// what they share: a Notary read API serving metadata that notary's
// testutils swizzler makes (states notary-server never serves), in front of
// a real upstream registry. docs/threat-model.md maps every row to its test.

import (
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/theupdateframework/notary/tuf/data"
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
// a Notary read API from whatever the test made of it (testenv.TUFRepo):
// swizzled metadata, endless or trickled bodies. It counts requests by role.
type tufWorld struct {
	*testenv.TUFRepo
	reg    *testenv.Registry
	alice  string // alice's certificate, PEM file
	img    v1.Image
	signed v1.Hash // library/app:v1, signed
}

func newTUFWorld(t *testing.T) *tufWorld {
	t.Helper()
	w := &tufWorld{TUFRepo: testenv.NewTUFRepo(t, gun), reg: testenv.NewRegistry(t)}
	w.alice = filepath.Join(t.TempDir(), "alice.pem")
	must(t, os.WriteFile(w.alice, utils.CertToPEM(w.Delegate(t, testenv.Releases)), 0o600))
	w.img = testenv.Image(t, "tuf v1", 1, 1024)
	w.signed = w.signImage(t, testenv.Releases, "v1", w.img)
	w.Publish(t)
	return w
}

// signImage pushes img as library/app:tag and adds it to role; Publish
// makes it served.
func (w *tufWorld) signImage(t *testing.T, role, tag string, img v1.Image) v1.Hash {
	t.Helper()
	d := w.reg.Push(t, "library/app", tag, img)
	raw, err := img.RawManifest()
	must(t, err)
	w.addDigest(t, role, tag, d, int64(len(raw)))
	return d
}

// addDigest adds tag → (d, size) to role; Publish makes it served.
func (w *tufWorld) addDigest(t *testing.T, role, tag string, d v1.Hash, size int64) {
	t.Helper()
	w.AddTarget(t, role, tag, data.FileMeta{Length: size, Hashes: data.Hashes{"sha256": mustHex(t, d.Hex)}})
}

// config is the YAML of a trustproxy in front of w with data directory
// dataDir: alice the trusted signer, the root pinned (pins, or w's root when
// none), refresh_ttl 1ns (every request asks the Notary server), rule the
// further fields of the rule (", max_staleness: 2s"), extra further
// top-level YAML.
func (w *tufWorld) config(t *testing.T, dataDir, rule, extra string, pins ...string) string {
	t.Helper()
	if len(pins) == 0 {
		pins = []string{w.RootID()}
	}
	return fmt.Sprintf(`data_dir: %s
upstreams: [{name: docker.io, url: %s, notary: {url: %s}}]
trust:
  refresh_ttl: 1ns
  pinning: {certs: {%s: [%s]}}
  signers: [{name: alice, public_key: %s}]
  rules: [{repositories: "docker.io/**", signers: [alice]%s}]
%s`, dataDir, w.reg.URL(), w.Server.URL, gun, strings.Join(pins, ", "), w.alice, rule, extra)
}

// start runs trustproxy in front of w with a fresh data directory.
func (w *tufWorld) start(t *testing.T, rule, extra string) *instance {
	t.Helper()
	return start(t, w.config(t, t.TempDir(), rule, extra))
}

// replicas returns a func that starts a replica in front of w with its own
// data directory, all of one deployment (also returned): one storage
// directory and one Redis. Trust data is reused for refreshTTL.
func (w *tufWorld) replicas(t *testing.T, refreshTTL time.Duration) (func() *instance, *testenv.Deployment) {
	t.Helper()
	d := testenv.NewDeployment(t, testenv.StartRedis(t, ""))
	return func() *instance {
		cfg := w.config(t, t.TempDir(), "", d.YAML())
		return start(t, strings.Replace(cfg, "refresh_ttl: 1ns", "refresh_ttl: "+refreshTTL.String(), 1))
	}, d
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
