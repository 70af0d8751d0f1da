package proxy_test

import (
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// TestDockerContentTrustFromTrustproxy: the docker CLI with
// DOCKER_CONTENT_TRUST=1 and DOCKER_CONTENT_TRUST_SERVER naming trustproxy
// (HTTPS, its CA under $DOCKER_CONFIG/tls/<host>/: docs/clients.md's
// docker-content-trust lines, run as written) resolves tags with the
// trust data trustproxy verified and serves, and its daemon pulls the digest
// through trustproxy as its mirror. A signed tag and a signed multi-arch
// index pull; an unsigned tag is refused by the client itself; a tag signed
// only by an untrusted signer passes the client (any valid delegation
// does), and trustproxy refuses the digest pull that follows. With the
// Notary server down, the trust data trustproxy verified still serves the
// client within max_staleness, and is refused past it.
func TestDockerContentTrustFromTrustproxy(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Docker daemon")
	}
	w := newWorld(t)
	index, _, _ := w.pushSignedIndex(t) // library/app:multi, signed by alice
	signed := w.pushSigned(t, "library/app", "v1", "dct v1")
	w.Registry.Push(t, "library/app", "v2", testenv.Image(t, "dct v2", 1, 4096))
	w.initRepo(t, "docker.io/library/rogue", w.mallory)
	rogue := w.pushSigned(t, "library/rogue", "v1", "dct rogue")
	const staleness = 4 * time.Second
	cfg := strings.Replace(w.config(t, t.TempDir(), ""), "refresh_ttl: 1h", "refresh_ttl: 500ms", 1)
	cfg = strings.Replace(cfg, "      signers: [alice]\n", "      signers: [alice]\n      max_staleness: "+staleness.String()+"\n", 1)
	p := start(t, cfg)
	d := testenv.StartDockerd(t, p.srv.URL)
	ctx := t.Context()

	trustSrv := httptest.NewUnstartedServer(p.proxy.Handler(http.NotFoundHandler()))
	trustSrv.StartTLS()
	t.Cleanup(trustSrv.Close)
	u, _ := url.Parse(trustSrv.URL)
	ca := filepath.Join(t.TempDir(), "ca.crt")
	must(t, os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: trustSrv.Certificate().Raw}), 0o644))
	// docs/clients.md's lines, run with a HOME of the test's; the client then
	// pulls with the variables they exported and the config folder they
	// filled.
	home := t.TempDir()
	exported, err := shExports(ctx, clientSnippet(t, "docker-content-trust", docHost, u.Host, docCA, ca), "HOME="+home)
	if err != nil {
		t.Fatalf("docker-content-trust: %v", err)
	}
	if !slices.Contains(exported, "DOCKER_CONTENT_TRUST_SERVER="+trustSrv.URL) {
		t.Fatalf("docker-content-trust exported %q, want DOCKER_CONTENT_TRUST_SERVER=%s", exported, trustSrv.URL)
	}
	env := append(exported, "HOME="+home, "DOCKER_CONFIG="+filepath.Join(home, ".docker"))
	pull := func(ref string) (string, error) { return d.DockerEnv(ctx, env, "pull", ref) }

	if out, err := pull("app:v1"); err != nil {
		t.Fatalf("DCT pull app:v1 from trustproxy's trust data: %v\n%s", err, out)
	}
	p.wantDecision(t, gun, signed.String(), "served", "verified")
	p.wantDecision(t, gun, "timestamp.json", "served", "verified") // then snapshot, targets and targets/releases by hash
	if out, err := pull("app:multi"); err != nil {
		t.Fatalf("DCT pull app:multi: %v\n%s", err, out)
	}
	p.wantDecision(t, gun, index.String(), "served", "verified")

	out, err := pull("app:v2")
	if err == nil || !strings.Contains(out, "v2") {
		t.Fatalf("DCT pull of the unsigned app:v2 succeeded or said nothing of it: %v\n%s", err, out)
	}
	t.Logf("the client on an unsigned tag: %s", out)

	if out, err := pull("rogue:v1"); err == nil {
		t.Fatalf("DCT pull of rogue:v1 (signed by an untrusted signer) succeeded:\n%s", out)
	}
	p.wantDecision(t, "docker.io/library/rogue", rogue.String(), "denied", proxy.Reason(trust.NotSigned))

	// The trust data verified now (past refresh_ttl, so fetched afresh),
	// then the Notary server goes down.
	if status, _, body := p.get(t, http.MethodGet, trustDataPath(gun, "timestamp.json")); status != http.StatusOK {
		t.Fatalf("timestamp.json: %d %s", status, body)
	}
	fresh := time.Now()
	w.Notary.SetDown(true)
	t.Cleanup(func() { w.Notary.SetDown(false) })
	must(t, func() error { _, err := d.Docker(ctx, "rmi", "app:v1"); return err }())
	if out, err := pull("app:v1"); err != nil {
		t.Fatalf("DCT pull app:v1 with the Notary server down, within max_staleness: %v\n%s", err, out)
	}
	if time.Since(fresh) > staleness {
		t.Fatalf("the pull with the server down took %s, past max_staleness: raise it", time.Since(fresh))
	}
	must(t, func() error { _, err := d.Docker(ctx, "rmi", "app:v1"); return err }())
	time.Sleep(time.Until(fresh.Add(staleness + 500*time.Millisecond)))
	if out, err := pull("app:v1"); err == nil {
		t.Fatalf("DCT pull app:v1 with the Notary server down past max_staleness succeeded:\n%s", out)
	}
	p.wantDecision(t, gun, "timestamp.json", "denied", proxy.Reason(trust.TrustUnavailable))
}
