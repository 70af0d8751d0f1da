package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/sample"
	"github.com/trustproxy/trustproxy/internal/testenv"
)

// TestServeFailsWhenTLSDoesNotLoad: the certificate is replaced after the
// configuration was checked (a botched renewal), so it no longer matches the
// key. serve returns that error at once, naming the files, instead of
// running on without a listener.
func TestServeFailsWhenTLSDoesNotLoad(t *testing.T) {
	t.Chdir(t.TempDir())
	k := testenv.NewKey(t, "localhost")
	cfg, err := config.Load(strings.NewReader(fmt.Sprintf("listen: 127.0.0.1:0\ntls: {cert_file: %s, key_file: %s}\n", k.CertFile, k.KeyFile)), nil)
	if err != nil {
		t.Fatal(err)
	}
	other, err := os.ReadFile(testenv.NewKey(t, "other").CertFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(k.CertFile, other, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- serve(t.Context(), cfg, "", nil, slog.New(slog.DiscardHandler)) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "private key does not match public key") || !strings.Contains(err.Error(), k.CertFile) {
			t.Fatalf("serve: %v, want the TLS error naming tls.cert_file", err)
		}
		t.Logf("serve: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("serve was still running 10s after its listener failed")
	}
}

// TestSIGTERMDuringColdPull sends SIGTERM to a `trustproxy serve` process
// while a client pulls a signed image whose layer the upstream (a real
// registry behind a throttling relay) sends slowly.
func TestSIGTERMDuringColdPull(t *testing.T) {
	bin := buildTrustproxy(t)
	env := testenv.New(t)
	const gun, repo = "docker.io/library/app", "library/app"
	alice := testenv.NewKey(t, "alice")
	root := env.Notary.Init(t, gun)
	env.Notary.AddDelegation(t, gun, testenv.Releases, alice)
	img := testenv.Image(t, "sigterm", 1, 3<<20)
	signed := env.Registry.Push(t, repo, "v1", img)
	env.Notary.SignImage(t, gun, "v1", img, testenv.Releases)
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	layer, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	slow := testenv.Throttle(t, env.Registry.Host(), 512<<10) // the layer takes about 6s

	// run starts trustproxy with shutdown_timeout bound, starts the pull,
	// sends SIGTERM once the layer's fill is under way and returns the
	// pull's result, how long the process took to exit after the signal,
	// its exit error, its log and its data directory.
	run := func(t *testing.T, bound time.Duration) (pullErr error, pulled string, stopped time.Duration, exit error, logs *testenv.LogBuffer, dataDir string) {
		dataDir = t.TempDir()
		cfgFile := filepath.Join(t.TempDir(), "trustproxy.yaml")
		yaml := fmt.Sprintf(`listen: 127.0.0.1:0
data_dir: %s
upstreams:
  - name: docker.io
    url: %s
    notary: {url: %s, ca_file: %s}
trust:
  pinning: {certs: {%s: [%s]}}
  signers: [{name: alice, public_key: %s}]
  rules: [{repositories: "docker.io/**", signers: [alice]}]
limits:
  shutdown_timeout: %s
`, dataDir, slow.URL(), env.Notary.URL(), env.Notary.CAFile(), gun, root, alice.CertFile, bound)
		if err := os.WriteFile(cfgFile, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		logs = &testenv.LogBuffer{}
		cmd := exec.Command(bin, "serve", "--config", cfgFile)
		cmd.Stderr = logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited, gone := make(chan error, 1), make(chan struct{})
		go func() {
			exited <- cmd.Wait()
			close(gone)
		}()
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			<-gone
			if t.Failed() {
				t.Logf("trustproxy log:\n%s", logs)
			}
		})
		addr := waitServing(t, logs)

		pull := make(chan error, 1)
		go func() {
			d, err := sample.Pull(t.Context(), addr+"/"+repo+":v1")
			pulled = d.String()
			pull <- err
		}()
		waitSpooled(t, dataDir, 256<<10)
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		signalled := time.Now()
		select {
		case exit = <-exited:
			stopped = time.Since(signalled)
		case <-time.After(bound + 60*time.Second):
			t.Fatalf("trustproxy still running %v after SIGTERM (shutdown_timeout %v)", time.Since(signalled), bound)
		}
		select {
		case pullErr = <-pull:
		case <-time.After(60 * time.Second):
			t.Fatal("the pull was still running 60s after trustproxy exited")
		}
		return pullErr, pulled, stopped, exit, logs, dataDir
	}

	t.Run("pull finishes within shutdown_timeout", func(t *testing.T) {
		pullErr, pulled, stopped, exit, logs, dataDir := run(t, 2*time.Minute)
		if pullErr != nil || pulled != signed.String() {
			t.Fatalf("pull during the graceful stop: %s, %v; want %s", pulled, pullErr, signed)
		}
		if exit != nil {
			t.Errorf("trustproxy exited with %v, want status 0", exit)
		}
		if stopped > time.Minute {
			t.Errorf("trustproxy took %v to stop after the pull ended", stopped)
		}
		if !slices.Contains(storedBlobs(t, dataDir), layer.String()) {
			t.Error("the layer pulled during the stop was not stored")
		}
		wantNoLeftovers(t, dataDir, gun)
		if !strings.Contains(logs.String(), `"msg":"trustproxy stopping"`) {
			t.Error("no log line says trustproxy is stopping")
		}
	})

	t.Run("fill cancelled at shutdown_timeout", func(t *testing.T) {
		const bound = time.Second
		pullErr, _, stopped, exit, logs, dataDir := run(t, bound)
		if pullErr == nil {
			t.Fatal("the pull succeeded though trustproxy stopped before the layer arrived")
		}
		t.Logf("pull: %v; trustproxy exited %v after SIGTERM", pullErr, stopped.Round(time.Millisecond))
		if exit != nil {
			t.Errorf("trustproxy exited with %v, want status 0", exit)
		}
		if stopped > bound+20*time.Second {
			t.Errorf("trustproxy took %v to stop, with shutdown_timeout %v", stopped, bound)
		}
		if slices.Contains(storedBlobs(t, dataDir), layer.String()) {
			t.Error("the cancelled fill committed its layer")
		}
		wantNoLeftovers(t, dataDir, gun)
		for _, want := range []string{"requests still running at limits.shutdown_timeout", "trustproxy is shutting down"} {
			if !strings.Contains(logs.String(), want) {
				t.Errorf("the log does not say %q", want)
			}
		}
	})
}

// buildTrustproxy builds this command into a temporary folder.
func buildTrustproxy(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "trustproxy")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/trustproxy/trustproxy/cmd/trustproxy").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// waitServing returns the address a trustproxy logging to logs serves on.
func waitServing(t *testing.T, logs *testenv.LogBuffer) string {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, line := range logs.Lines() {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "trustproxy serving" {
				if addr, ok := m["addr"].(string); ok {
					return addr
				}
			}
		}
	}
	t.Fatalf("trustproxy did not start:\n%s", logs)
	return ""
}

// waitSpooled waits until a spool file under dataDir holds at least n bytes:
// a fill is under way.
func waitSpooled(t *testing.T, dataDir string, n int64) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		files, _ := filepath.Glob(filepath.Join(dataDir, "spool", "blob-*"))
		for _, f := range files {
			if info, err := os.Stat(f); err == nil && info.Size() >= n {
				return
			}
		}
	}
	t.Fatalf("no fill spooled %d bytes within 60s", n)
}

// storedBlobs lists the blob digests in trustproxy's filesystem storage.
func storedBlobs(t *testing.T, dataDir string) []string {
	t.Helper()
	var out []string
	root := filepath.Join(dataDir, "storage", "docker", "registry", "v2", "blobs", "sha256")
	_ = filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
		if err == nil && info.Name() == "data" {
			out = append(out, "sha256:"+filepath.Base(filepath.Dir(path)))
		}
		return nil
	})
	return out
}

// wantNoLeftovers asserts that no spool file and no upload of gun remain.
func wantNoLeftovers(t *testing.T, dataDir, gun string) {
	t.Helper()
	for _, dir := range []string{
		filepath.Join(dataDir, "spool"),
		filepath.Join(dataDir, "storage", "docker", "registry", "v2", "repositories", gun, "_uploads"),
	} {
		es, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		for _, e := range es {
			t.Errorf("left behind: %s", filepath.Join(dir, e.Name()))
		}
	}
}
