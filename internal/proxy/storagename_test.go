package proxy_test

import (
	"strings"
	"testing"

	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// TestUpstreamNameWithPort: an upstream named with a port, as a private
// registry often is (registry.example.com:5443), is stored and served like
// docker.io. Its GUN holds a colon, which distribution's storage drivers
// refuse in a path: the repository is stored under gun.Name.StorageName.
func TestUpstreamNameWithPort(t *testing.T) {
	w := newWorld(t)
	host := w.Registry.Host() // 127.0.0.1:PORT
	repo := host + "/team/app"
	w.initRepo(t, repo, w.alice)
	img := testenv.Image(t, "port v1", 2, 16<<10)
	signed := w.Registry.Push(t, "team/app", "v1", img)
	w.Notary.SignImage(t, repo, "v1", img, testenv.Releases)
	w.Registry.Push(t, "team/app", "v2", testenv.Image(t, "port v2", 1, 1024))

	cfg := w.config(t, t.TempDir(), "")
	cfg = strings.Replace(cfg, "name: docker.io", "name: "+host, 1)
	cfg = strings.Replace(cfg, `"docker.io/**"`, `"`+host+`/**"`, 1)
	p := start(t, cfg)

	for range 2 { // the second pull is served from storage
		if got := p.mustPull(t, "team/app:v1"); got != signed {
			t.Fatalf("team/app:v1 pulled as %s, want %s", got, signed)
		}
		p.wantDecision(t, repo, "v1", "served", "verified")
	}
	if n := w.Registry.Requests("GET", "/manifests/"+signed.String()); n != 1 {
		t.Errorf("the upstream was asked for the signed manifest %d times, want once: it was not stored", n)
	}
	if _, err := p.pull(t, "team/app:v2"); err == nil {
		t.Fatal("the unsigned team/app:v2 was served")
	}
	p.wantDecision(t, repo, "v2", "denied", proxy.Reason(trust.NotSigned))
	if strings.Contains(p.logs.String(), "storage failed") {
		t.Errorf("storage failed:\n%s", p.logs)
	}
}
