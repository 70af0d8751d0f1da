package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

// TestContainerImage builds trustproxy's image as CI does (Dockerfile.ci:
// the release image's final layout on scratch, the static binary, CA
// certificates, a passwd entry for nonroot) with the real Docker daemon,
// runs it (--network host, the configuration and the keys it names mounted
// read-only, the data on a volume), and pulls through it: a signed image is
// served, an unsigned one refused. The container runs as nonroot.
func TestContainerImage(t *testing.T) {
	env := testenv.New(t)
	alice := testenv.NewKey(t, "alice")
	const gun = "docker.io/library/app"
	root := env.Notary.Init(t, gun)
	env.Notary.AddDelegation(t, gun, testenv.Releases, alice)
	img := testenv.Image(t, "image v1", 2, 64<<10)
	signed := env.Registry.Push(t, "library/app", "v1", img)
	env.Notary.SignImage(t, gun, "v1", img, testenv.Releases)
	env.Registry.Push(t, "library/app", "v2", testenv.Image(t, "image v2", 1, 1024))

	ctxDir := t.TempDir()
	build := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(ctxDir, "trustproxy"), "github.com/trustproxy/trustproxy/cmd/trustproxy")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ca, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	if err != nil {
		t.Fatalf("CA certificates: %v (apt-get install -y ca-certificates)", err)
	}
	for file, content := range map[string]string{
		"ca-certificates.crt": string(ca),
		"passwd":              "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
		"group":               "root:x:0:\nnonroot:x:65532:\n",
	} {
		must(t, os.WriteFile(filepath.Join(ctxDir, file), []byte(content), 0o644))
	}
	must(t, os.Mkdir(filepath.Join(ctxDir, "empty"), 0o755))
	dockerfile, err := filepath.Abs("../../Dockerfile.ci")
	must(t, err)

	d := testenv.StartDockerd(t, "")
	ctx := t.Context()
	if out, err := d.DockerEnv(ctx, []string{"DOCKER_BUILDKIT=0"}, "build", "-q", "-f", dockerfile, "-t", "trustproxy:ci", ctxDir); err != nil {
		t.Fatalf("docker build: %v\n%s", err, out)
	}
	if user, err := d.Docker(ctx, "image", "inspect", "-f", "{{.Config.User}}", "trustproxy:ci"); err != nil || strings.TrimSpace(user) != "nonroot:nonroot" {
		t.Fatalf("the image's user: %q %v", user, err)
	}

	// The configuration and the files it names, as an operator mounts them.
	conf := t.TempDir()
	for src, dst := range map[string]string{env.Notary.CAFile(): "notary-ca.pem", alice.CertFile: "alice.crt"} {
		b, err := os.ReadFile(src)
		must(t, err)
		must(t, os.WriteFile(filepath.Join(conf, dst), b, 0o644))
	}
	addr := testenv.FreeAddr(t)
	must(t, os.WriteFile(filepath.Join(conf, "trustproxy.yaml"), []byte(fmt.Sprintf(`listen: %s
data_dir: /var/lib/trustproxy
upstreams: [{name: docker.io, url: %q, notary: {url: %q, ca_file: notary-ca.pem}}]
trust:
  pinning: {certs: {%s: [%s]}}
  signers: [{name: alice, public_key: alice.crt}]
  rules: [{repositories: "docker.io/**", signers: [alice]}]
`, addr, env.Registry.URL(), env.Notary.URL(), gun, root)), 0o644))
	must(t, os.Chmod(conf, 0o755))
	if out, err := d.Docker(ctx, "run", "-d", "--name", "trustproxy", "--network", "host",
		"-v", conf+":/etc/trustproxy:ro", "-v", "trustproxy-data:/var/lib/trustproxy", "trustproxy:ci"); err != nil {
		t.Fatalf("docker run: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := d.Docker(ctx, "logs", "trustproxy")
			t.Logf("container log:\n%s", logs)
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if resp, err := http.Get("http://" + addr + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			logs, _ := d.Docker(ctx, "logs", "trustproxy")
			t.Fatalf("the container does not serve:\n%s", logs)
		}
	}
	if top, err := d.Docker(ctx, "exec", "trustproxy", "/trustproxy", "version"); err != nil || !strings.HasPrefix(top, "trustproxy ") {
		t.Fatalf("exec in the container: %q %v", top, err)
	}
	if uid, err := d.Docker(ctx, "inspect", "-f", "{{.State.Pid}}", "trustproxy"); err == nil {
		if status, err := os.Open("/proc/" + strings.TrimSpace(uid) + "/status"); err == nil {
			sc := bufio.NewScanner(status)
			for sc.Scan() {
				if f := strings.Fields(sc.Text()); len(f) > 1 && f[0] == "Uid:" && f[1] != "65532" {
					t.Errorf("the container's process runs as uid %s, want 65532", f[1])
				}
			}
			status.Close()
		}
	}

	ref, err := name.ParseReference(addr+"/library/app:v1", name.Insecure)
	must(t, err)
	pulled, err := remote.Image(ref)
	must(t, err)
	if got, err := pulled.Digest(); err != nil || got != signed {
		t.Fatalf("signed v1 through the container: %v %v, want %s", got, err, signed)
	}
	layers, err := pulled.Layers()
	must(t, err)
	for _, l := range layers {
		rc, err := l.Compressed()
		must(t, err)
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		must(t, err)
	}
	resp, err := http.Get("http://" + addr + "/v2/library/app/manifests/v2")
	must(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), "(not_signed)") {
		t.Fatalf("unsigned v2 through the container: %d %s", resp.StatusCode, body)
	}
}

// TestCIImageHasTheReleaseLayout: Dockerfile.ci's image and the release
// Dockerfile's final stage agree on user, working directory, volume,
// port, entrypoint and command.
func TestCIImageHasTheReleaseLayout(t *testing.T) {
	final := func(path string) []string {
		t.Helper()
		b, err := os.ReadFile(path)
		must(t, err)
		var out []string
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "FROM ") {
				out = nil // a new stage: only the last one counts
			}
			for _, kw := range []string{"USER ", "WORKDIR ", "VOLUME ", "EXPOSE ", "ENTRYPOINT ", "CMD "} {
				if strings.HasPrefix(line, kw) {
					out = append(out, line)
				}
			}
		}
		return out
	}
	release, ci := final("../../Dockerfile"), final("../../Dockerfile.ci")
	if len(release) != 6 || !slices.Equal(release, ci) {
		t.Fatalf("final stages differ:\nDockerfile:    %q\nDockerfile.ci: %q", release, ci)
	}
}
