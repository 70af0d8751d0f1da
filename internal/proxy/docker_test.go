package proxy_test

import (
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// TestDockerPullThroughMirror runs a real Docker daemon with trustproxy as
// its registry mirror. A refused pull falls back to Docker Hub (unreachable
// here) and dockerd prints that error, so refusals are asserted on
// trustproxy's side, and once more through a pull that names trustproxy.
func TestDockerPullThroughMirror(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Docker daemon")
	}
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	signed := w.pushSigned(t, "library/app", "v1", "docker-v1")
	v3 := w.pushSigned(t, "library/app", "v3", "docker-v3")
	w.Registry.Push(t, "library/app", "v2", testenv.Image(t, "docker-v2", 1, 4096))
	p := w.start(t, "")
	d := testenv.StartDockerd(t, p.srv.URL)
	ctx := t.Context()

	if out, err := d.Pull(ctx, "app:v1"); err != nil {
		t.Fatalf("docker pull app:v1 through the mirror: %v\n%s", err, out)
	}
	digests, err := d.RepoDigests(ctx, "app:v1")
	if err != nil || !slices.Contains(digests, "app@"+signed.String()) {
		t.Fatalf("RepoDigests %v (%v), want app@%s", digests, err, signed)
	}
	p.wantDecision(t, gun, "v1", "served", "verified")

	if out, err := d.Pull(ctx, "app:v2"); err == nil {
		t.Fatalf("docker pull app:v2 (unsigned) succeeded:\n%s", out)
	}
	p.wantDecision(t, gun, "v2", "denied", proxy.Reason(trust.NotSigned))

	// Named by trustproxy's own address, the daemon shows trustproxy's reason.
	out, err := d.Pull(ctx, p.host+"/library/app:v2")
	if err == nil || !strings.Contains(out, "("+string(trust.NotSigned)+")") {
		t.Fatalf("docker pull %s/library/app:v2: err %v, output:\n%s", p.host, err, out)
	}

	// DOCKER_CONTENT_TRUST=1: the CLI resolves the tag with the Notary server
	// itself, and the daemon pulls that digest through trustproxy.
	u, _ := url.Parse(w.Notary.URL())
	caDir := filepath.Join(d.ConfigDir(), "tls", u.Host)
	if err := os.MkdirAll(caDir, 0o700); err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(w.Notary.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(caDir, "ca.crt"), ca, 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"DOCKER_CONTENT_TRUST=1", "DOCKER_CONTENT_TRUST_SERVER=" + w.Notary.URL()}
	if out, err := d.DockerEnv(ctx, env, "pull", "app:v3"); err != nil {
		t.Fatalf("DOCKER_CONTENT_TRUST=1 docker pull app:v3: %v\n%s", err, out)
	}
	p.wantDecision(t, gun, v3.String(), "served", "verified")
}

// TestContainerdPullThroughHostsToml pulls with containerd's ctr through a
// hosts.toml mirror, which adds ?ns=docker.io to every request.
func TestContainerdPullThroughHostsToml(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Docker daemon for its containerd")
	}
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	signed := w.pushSigned(t, "library/app", "v1", "ctr-v1")
	w.Registry.Push(t, "library/app", "v2", testenv.Image(t, "ctr-v2", 1, 4096))
	p := w.start(t, "")
	d := testenv.StartDockerd(t, "")

	hosts := t.TempDir()
	if err := os.MkdirAll(filepath.Join(hosts, "docker.io"), 0o700); err != nil {
		t.Fatal(err)
	}
	toml := "server = \"https://registry-1.docker.io\"\n\n[host.\"" + p.srv.URL + "\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
	if err := os.WriteFile(filepath.Join(hosts, "docker.io", "hosts.toml"), []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	ctr := func(ref string) (string, error) {
		cmd := exec.CommandContext(t.Context(), "ctr", "-a", d.ContainerdAddress(), "-n", "trustproxy-test",
			"images", "pull", "--hosts-dir", hosts, ref)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := ctr("docker.io/library/app:v1"); err != nil {
		t.Fatalf("ctr pull app:v1: %v\n%s", err, out)
	}
	if d := p.decision(t, gun, "v1"); d["verdict"] != "served" || d["digest"] != signed.String() {
		t.Fatalf("decision for ctr's pull: %v, want served %s", d, signed)
	}
	if _, err := ctr("docker.io/library/app:v2"); err == nil {
		t.Fatal("ctr pull of the unsigned app:v2 succeeded")
	}
	p.wantDecision(t, gun, "v2", "denied", proxy.Reason(trust.NotSigned))
}

// TestSkopeoCopy copies through trustproxy with skopeo, a client that
// reports the registry's own error.
func TestSkopeoCopy(t *testing.T) {
	if _, err := exec.LookPath("skopeo"); err != nil {
		t.Fatal("skopeo not found: apt-get install skopeo")
	}
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "skopeo-v1")
	w.Registry.Push(t, "library/app", "v2", testenv.Image(t, "skopeo-v2", 1, 4096))
	p := w.start(t, "")
	skopeo := func(tag string) (string, error) {
		dst := "oci:" + filepath.Join(t.TempDir(), "layout") + ":" + tag
		out, err := exec.CommandContext(t.Context(), "skopeo", "copy", "--src-tls-verify=false",
			"docker://"+p.host+"/library/app:"+tag, dst).CombinedOutput()
		return string(out), err
	}
	if out, err := skopeo("v1"); err != nil {
		t.Fatalf("skopeo copy v1: %v\n%s", err, out)
	}
	out, err := skopeo("v2")
	if err == nil || !strings.Contains(out, "("+string(trust.NotSigned)+")") {
		t.Fatalf("skopeo copy of the unsigned v2: err %v, output:\n%s", err, out)
	}
}

// TestClientsShowRefusalReasons pulls by trustproxy's own address with
// dockerd, containerd's ctr and skopeo, for each kind of refusal: a tag or
// digest that the repository's verified trust view does not hold (404
// MANIFEST_UNKNOWN), and a tag or repository that fails policy (403
// DENIED). Every pull fails. dockerd and skopeo print trustproxy's message,
// reason included; ctr 1.6 prints only the status ("not found", "403
// Forbidden"): it resolves with HEAD and never reads an error body, so its
// users find the reason in trustproxy's decision log. What each client
// printed is logged; docs/ARCHITECTURE.md ("Refusals") quotes it.
func TestClientsShowRefusalReasons(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Docker daemon")
	}
	if _, err := exec.LookPath("skopeo"); err != nil {
		t.Fatal("skopeo not found: apt-get install skopeo")
	}
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "clients-v1")
	unsigned := w.Registry.Push(t, "library/app", "v2", testenv.Image(t, "clients-v2", 1, 4096))
	w.initRepo(t, "docker.io/library/rogue", w.mallory)
	w.pushSigned(t, "library/rogue", "v1", "clients-rogue")
	w.Registry.Push(t, "library/plain", "v1", testenv.Image(t, "clients-plain", 1, 4096))
	p := w.start(t, "")
	d := testenv.StartDockerd(t, "")
	ctx := t.Context()

	type refusal struct {
		name, repo, ref string
		status          int
		reason          proxy.Reason
	}
	refusals := []refusal{
		{"unsigned tag", "library/app", "v2", http.StatusNotFound, proxy.Reason(trust.NotSigned)},
		{"unsigned digest", "library/app", unsigned.String(), http.StatusNotFound, proxy.Reason(trust.NotSigned)},
		{"untrusted signer", "library/rogue", "v1", http.StatusForbidden, proxy.Reason(trust.UntrustedSigner)},
		{"no trust data", "library/plain", "v1", http.StatusForbidden, proxy.Reason(trust.NoTrustData)},
	}
	reason := func(r refusal) string { return "(" + string(r.reason) + ")" }
	clients := []struct {
		name string
		pull func(ref string) (string, error)
		want func(refusal) string // what its output must contain
	}{
		{"dockerd", func(ref string) (string, error) { return d.Pull(ctx, p.host+"/"+ref) }, reason},
		{"ctr", func(ref string) (string, error) {
			out, err := exec.CommandContext(ctx, "ctr", "-a", d.ContainerdAddress(), "-n", "trustproxy-test",
				"images", "pull", "--plain-http", p.host+"/"+ref).CombinedOutput()
			return string(out), err
		}, func(r refusal) string {
			if r.status == http.StatusNotFound {
				return ": not found"
			}
			return "403 Forbidden"
		}},
		{"skopeo", func(ref string) (string, error) {
			out, err := exec.CommandContext(ctx, "skopeo", "copy", "--src-tls-verify=false",
				"docker://"+p.host+"/"+ref, "oci:"+filepath.Join(t.TempDir(), "layout")).CombinedOutput()
			return string(out), err
		}, reason},
	}
	for _, c := range clients {
		if out, err := c.pull("library/app:v1"); err != nil {
			t.Fatalf("%s pull library/app:v1: %v\n%s", c.name, err, out)
		}
		for _, r := range refusals {
			ref := r.repo + ":" + r.ref
			if strings.HasPrefix(r.ref, "sha256:") {
				ref = r.repo + "@" + r.ref
			}
			out, err := c.pull(ref)
			t.Logf("%s, %s (%d): %v\n%s", c.name, r.name, r.status, err, out)
			if err == nil {
				t.Errorf("%s pull %s (%s) succeeded", c.name, ref, r.name)
			} else if want := c.want(r); !strings.Contains(out, want) {
				t.Errorf("%s pull %s (%s): the output does not say %q", c.name, ref, r.name, want)
			}
			logged := r.reason
			if c.name == "ctr" && strings.HasPrefix(r.ref, "sha256:") {
				// containerd's resolver asks for blobs/<digest> once manifests/<digest> fails.
				logged = proxy.ReasonNotReferenced
			}
			p.wantDecision(t, "docker.io/"+r.repo, r.ref, "denied", logged)
		}
	}
}
