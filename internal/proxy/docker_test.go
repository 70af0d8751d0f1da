package proxy_test

import (
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

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
	p.wantDecision(t, gun, "v2", "denied", trust.NotSigned)

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
	p.wantDecision(t, gun, "v2", "denied", trust.NotSigned)
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
