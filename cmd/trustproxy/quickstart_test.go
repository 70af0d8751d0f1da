package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

const quickstartDoc = "docs/quickstart.md"

// TestQuickstart runs docs/quickstart.md as a reader would: every command of
// it, read from the document, with its example host names, ports and
// folders replaced by the test's own. The docker CLI (v28) signs with
// `docker trust` against Debian's notary-server; the trustproxy that the
// document's build command built serves; a private dockerd whose mirror is
// the document's daemon.json pulls the signed tag and is refused the
// unsigned one.
func TestQuickstart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds trustproxy and starts a Docker daemon")
	}
	env := testenv.New(t)
	work, home := t.TempDir(), t.TempDir()
	bin, etc, data := t.TempDir(), t.TempDir(), filepath.Join(t.TempDir(), "data")
	addr := testenv.FreeAddr(t)
	notaryHost := strings.TrimPrefix(env.Notary.URL(), "https://")
	registryHost := env.Registry.Host()

	// The test ends by checking that it ran every snippet of the document.
	snippet := func(name string, replace ...string) string {
		t.Helper()
		return testenv.Snippet(t, quickstartDoc, name, replace...)
	}

	var mirror struct {
		Mirrors []string `json:"registry-mirrors"`
	}
	if err := json.Unmarshal([]byte(snippet("daemon-json", "127.0.0.1:5000", addr)), &mirror); err != nil || len(mirror.Mirrors) != 1 {
		t.Fatalf("daemon.json of %s: %v %v", quickstartDoc, mirror, err)
	}
	d := testenv.StartDockerd(t, mirror.Mirrors[0])
	ctx := t.Context()

	// What the reader has before step 1: the Notary server's CA, and an image
	// built as app:build.
	ca, err := os.ReadFile(env.Notary.CAFile())
	must(t, err)
	must(t, os.WriteFile(filepath.Join(work, "notary-ca.crt"), ca, 0o644))
	tag, err := name.NewTag("app:build")
	must(t, err)
	imageTar := filepath.Join(t.TempDir(), "app.tar")
	must(t, tarball.WriteToFile(imageTar, tag, testenv.Image(t, "quickstart v1", 2, 32<<10)))
	if out, err := d.Docker(ctx, "load", "-i", imageTar); err != nil {
		t.Fatalf("docker load: %v\n%s", err, out)
	}
	unsigned := env.Registry.Push(t, "team/app", "unsigned", testenv.Image(t, "quickstart unsigned", 1, 1024))

	// The reader's shell: HOME with the docker CLI's config, PATH with the
	// installed trustproxy and the v28 docker CLI, the daemon's socket.
	shellEnv := []string{
		"HOME=" + home,
		"PATH=" + bin + ":" + filepath.Dir(d.CLI) + ":" + os.Getenv("PATH"),
		"DOCKER_HOST=" + d.Host(),
		"DOCKER_CONTENT_TRUST_SERVER=" + env.Notary.URL(),
		"DOCKER_CONTENT_TRUST_ROOT_PASSPHRASE=quickstart root passphrase",
		"DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE=quickstart repository passphrase",
	}
	if gopath := os.Getenv("GOPATH"); gopath == "" {
		// go needs its caches where the reader's HOME would have them.
		for _, v := range []string{"GOPATH", "GOCACHE", "GOMODCACHE"} {
			out, err := exec.Command("go", "env", v).Output()
			must(t, err)
			shellEnv = append(shellEnv, v+"="+strings.TrimSpace(string(out)))
		}
	}
	sh := func(dir, script string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "sh", "-ec", script)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), shellEnv...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", script, err, out)
		}
		return string(out)
	}
	root, err := filepath.Abs("../..")
	must(t, err)

	// 1. Build.
	out := sh(root, snippet("build", "/usr/local/bin/trustproxy", filepath.Join(bin, "trustproxy")))
	if !strings.HasPrefix(out, "trustproxy ") {
		t.Fatalf("trustproxy version printed:\n%s", out)
	}

	// 2. Sign.
	sh(work, snippet("notary-ca", "notary.example.com:4443", notaryHost))
	sh(work, snippet("sign", "notary.example.com:4443", notaryHost, "registry.example.com", registryHost))
	signed, err := d.RepoDigests(ctx, registryHost+"/team/app:v1")
	if err != nil || len(signed) != 1 {
		t.Fatalf("the signed image's digests: %v %v", signed, err)
	}
	digest := signed[0][strings.Index(signed[0], "@")+1:]

	// 3. The root key ID, as the reader reads it off docker trust inspect.
	out = sh(work, snippet("inspect", "registry.example.com", registryHost))
	m := regexp.MustCompile(`(?m)^\s*Root Key:\s+([0-9a-f]{64})\s*$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("docker trust inspect --pretty shows no Root Key line:\n%s", out)
	}
	rootKeyID := m[1]
	out = sh(work, snippet("signers-add", "/etc/trustproxy", etc))
	if !strings.Contains(out, "name: alice") || !strings.Contains(out, filepath.Join(etc, "alice.pub")) {
		t.Fatalf("trustproxy signers add printed:\n%s", out)
	}

	// 4. Configure, check, serve.
	config := snippet("config",
		"127.0.0.1:5000", addr, "/var/lib/trustproxy", data,
		"https://registry.example.com", env.Registry.URL(), "registry.example.com", registryHost,
		"notary.example.com:4443", notaryHost, "ROOT_KEY_ID", rootKeyID)
	must(t, os.WriteFile(filepath.Join(etc, "trustproxy.yaml"), []byte(config), 0o644))
	out = sh(work, snippet("check", "/etc/trustproxy", etc, "registry.example.com", registryHost))
	if !strings.Contains(out, "served") || !strings.Contains(out, digest) {
		t.Fatalf("trustproxy check printed, want served %s:\n%s", digest, out)
	}

	serveArgs := strings.Fields(snippet("serve", "/etc/trustproxy", etc))
	logs := &testenv.LogBuffer{}
	serve := exec.Command(filepath.Join(bin, serveArgs[0]), serveArgs[1:]...)
	serve.Stdout, serve.Stderr = logs, logs
	must(t, serve.Start())
	t.Cleanup(func() {
		_ = serve.Process.Signal(os.Interrupt)
		_ = serve.Wait()
		if t.Failed() {
			t.Logf("trustproxy's log:\n%s", logs)
		}
	})
	if got := waitServing(t, logs); got != addr {
		t.Fatalf("trustproxy serves on %s, want %s", got, addr)
	}

	// 5. The Docker host. The image pushed from this daemon goes first, so
	// that the pull fetches it through trustproxy.
	if out, err := d.Docker(ctx, "rmi", "app:build", registryHost+"/team/app:v1"); err != nil {
		t.Fatalf("docker rmi: %v\n%s", err, out)
	}
	sh(work, snippet("pull"))
	if got, err := d.RepoDigests(ctx, "team/app:v1"); err != nil || !slices.Contains(got, "team/app@"+digest) {
		t.Fatalf("team/app:v1 pulled as %v (%v), want team/app@%s", got, err, digest)
	}
	wantLogged(t, logs, map[string]string{"verdict": "served", "ref": "v1", "digest": digest})

	refused := snippet("pull-refused", "127.0.0.1:5000", addr)
	cmd := exec.CommandContext(ctx, "sh", "-ec", refused)
	cmd.Env = append(os.Environ(), shellEnv...)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "not_signed") {
		t.Fatalf("%s: err %v, want a refusal naming not_signed:\n%s", refused, err, out)
	}
	wantLogged(t, logs, map[string]string{"verdict": "denied", "ref": "unsigned", "reason": "not_signed"})
	if n := env.Registry.Requests("GET", "/manifests/"+unsigned.String()); n != 0 {
		t.Errorf("the unsigned manifest was fetched by digest %d times", n)
	}

	// Every snippet of the document was run above.
	var names []string
	for _, b := range testenv.DocBlocks(t, quickstartDoc) {
		names = append(names, b.Name)
	}
	want := []string{"build", "notary-ca", "sign", "inspect", "signers-add", "config", "check", "serve", "daemon-json", "pull", "pull-refused"}
	if !slices.Equal(names, want) {
		t.Errorf("%s has the snippets %v; this test runs %v", quickstartDoc, names, want)
	}
}

// wantLogged fails t unless a decision line of logs has every field of want.
func wantLogged(t *testing.T, logs *testenv.LogBuffer, want map[string]string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
	lines:
		for _, line := range logs.Lines() {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) != nil || m["msg"] != "decision" {
				continue
			}
			for k, v := range want {
				if s, _ := m[k].(string); s != v {
					continue lines
				}
			}
			return
		}
	}
	t.Fatalf("no decision line with %v in the log:\n%s", want, logs)
}
