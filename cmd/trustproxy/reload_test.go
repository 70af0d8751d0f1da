package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

// reloadWorld is a running `serve` whose configuration file a test
// rewrites: library/app is signed by alice, library/other by bob.
type reloadWorld struct {
	env        *testenv.Env
	alice, bob *testenv.Key
	roots      map[string]string
	addr, file string
	dataDir    string
	logs       *testenv.LogBuffer
	app, other v1.Image
}

func newReloadWorld(t *testing.T) *reloadWorld {
	old := reloadInterval
	reloadInterval = 100 * time.Millisecond
	t.Cleanup(func() { reloadInterval = old })
	w := &reloadWorld{env: testenv.New(t), alice: testenv.NewKey(t, "alice"), bob: testenv.NewKey(t, "bob"), roots: map[string]string{},
		addr: testenv.FreeAddr(t), file: filepath.Join(t.TempDir(), "trustproxy.yaml"), dataDir: t.TempDir(), logs: &testenv.LogBuffer{}}
	for repo, key := range map[string]*testenv.Key{"library/app": w.alice, "library/other": w.bob} {
		gun := "docker.io/" + repo
		w.roots[gun] = w.env.Notary.Init(t, gun)
		w.env.Notary.AddDelegation(t, gun, testenv.Releases, key)
		img := testenv.Image(t, "reload "+repo, 3, 256<<10)
		w.env.Registry.Push(t, repo, "v1", img)
		w.env.Notary.SignImage(t, gun, "v1", img, testenv.Releases)
	}
	w.write(t, "alice")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"serve", "--config", w.file}, io.Discard, w.logs) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("trustproxy log:\n%s", w.logs)
		}
	})
	waitServing(t, w.logs)
	return w
}

// write writes the configuration: the rule trusts the signers named.
func (w *reloadWorld) write(t *testing.T, signers ...string) {
	t.Helper()
	w.writeRaw(t, fmt.Sprintf(`listen: %s
data_dir: %s
upstreams: [{name: docker.io, url: %q, notary: {url: %q, ca_file: %q}}]
trust:
  refresh_ttl: 1h
  pinning: {certs: {docker.io/library/app: [%s], docker.io/library/other: [%s]}}
  signers: [{name: alice, public_key: %q}, {name: bob, public_key: %q}]
  rules: [{repositories: "docker.io/**", signers: [%s]}]
`, w.addr, w.dataDir, w.env.Registry.URL(), w.env.Notary.URL(), w.env.Notary.CAFile(),
		w.roots["docker.io/library/app"], w.roots["docker.io/library/other"], w.alice.CertFile, w.bob.CertFile, strings.Join(signers, ", ")))
}

func (w *reloadWorld) writeRaw(t *testing.T, yaml string) {
	t.Helper()
	tmp := w.file + ".tmp"
	must(t, os.WriteFile(tmp, []byte(yaml), 0o600))
	must(t, os.Rename(tmp, w.file)) // as editors and ConfigMaps do: the file is never half-written
}

// pull pulls repo:v1 whole (manifest, config, layers) through trustproxy.
func (w *reloadWorld) pull(repo string) error {
	ref, err := name.ParseReference(w.addr+"/"+repo+":v1", name.Insecure)
	if err != nil {
		return err
	}
	img, err := remote.Image(ref)
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	if _, err := img.RawConfigFile(); err != nil {
		return err
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// fingerprint is the config line of /readyz.
func (w *reloadWorld) fingerprint(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://" + w.addr + "/readyz")
	must(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if fp, ok := strings.CutPrefix(line, "config: "); ok {
			return fp
		}
	}
	t.Fatalf("/readyz has no config line: %s", b)
	return ""
}

// waitFor waits until the log holds a line containing s, after the first
// skip lines.
func (w *reloadWorld) waitFor(t *testing.T, skip int, s string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		lines := w.logs.Lines()
		for _, l := range lines[min(skip, len(lines)):] {
			if strings.Contains(l, s) {
				return
			}
		}
	}
	t.Fatalf("no log line %q", s)
}

// TestReloadSigners: a signer added to the rule makes its tags servable
// without a restart, and removed it stops them at once (the trust views
// judged under the old rule are not reused), on a file change and on
// SIGHUP; the fingerprint on /readyz follows.
func TestReloadSigners(t *testing.T) {
	w := newReloadWorld(t)
	if err := w.pull("library/app"); err != nil {
		t.Fatalf("alice's image: %v", err)
	}
	if err := w.pull("library/other"); err == nil || !strings.Contains(err.Error(), "untrusted_signer") {
		t.Fatalf("bob's image before bob is trusted: %v", err)
	}
	before := w.fingerprint(t)

	n := len(w.logs.Lines())
	w.write(t, "alice", "bob")
	w.waitFor(t, n, "configuration reloaded")
	if err := w.pull("library/other"); err != nil {
		t.Fatalf("bob's image once bob is trusted: %v", err)
	}
	if fp := w.fingerprint(t); fp == before {
		t.Fatal("the fingerprint on /readyz did not change")
	}

	n = len(w.logs.Lines())
	w.write(t, "bob")
	must(t, syscall.Kill(os.Getpid(), syscall.SIGHUP)) // at once, before the watcher sees the change
	w.waitFor(t, n, "configuration reloaded")
	if err := w.pull("library/app"); err == nil || !strings.Contains(err.Error(), "untrusted_signer") {
		t.Fatalf("alice's image once alice is removed: %v", err)
	}
	if err := w.pull("library/other"); err != nil {
		t.Fatalf("bob's image: %v", err)
	}
}

// TestReloadInvalidRefused: a configuration that does not validate is
// refused with the field named, the running one stays (its fingerprint
// too), and pulls running meanwhile all succeed; then a valid file applies.
// A change that needs a restart is logged, and the rest applies.
func TestReloadInvalidRefused(t *testing.T) {
	w := newReloadWorld(t)
	before := w.fingerprint(t)
	stop := make(chan struct{})
	var failed []error
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := w.pull("library/app"); err != nil {
				mu.Lock()
				failed = append(failed, err)
				mu.Unlock()
			}
		}
	}()
	n := len(w.logs.Lines())
	w.write(t, "alice", "carol") // carol is no signer
	w.waitFor(t, n, "configuration refused")
	w.waitFor(t, n, "trust.rules[0].signers")
	if fp := w.fingerprint(t); fp != before {
		t.Errorf("the fingerprint changed to %s though the file was refused", fp)
	}
	n = len(w.logs.Lines())
	w.write(t, "alice", "bob")
	cfg, err := os.ReadFile(w.file)
	must(t, err)
	w.writeRaw(t, strings.Replace(string(cfg), "listen: "+w.addr, "listen: 127.0.0.1:1", 1))
	w.waitFor(t, n, "configuration reloaded")
	w.waitFor(t, n, `"restart_needed":["listen"]`)
	close(stop)
	wg.Wait()
	if len(failed) > 0 {
		t.Fatalf("%d pulls failed during the reloads, the first: %v", len(failed), failed[0])
	}
	if err := w.pull("library/other"); err != nil {
		t.Fatalf("bob's image after the valid reload: %v", err)
	}
}

// TestReloadDuringPulls: 20 pulls run, cold, while the configuration is
// reloaded (a signer added); none fails.
func TestReloadDuringPulls(t *testing.T) {
	w := newReloadWorld(t)
	errs := make(chan error, 20)
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- w.pull("library/app")
		}()
	}
	n := len(w.logs.Lines())
	w.write(t, "alice", "bob")
	must(t, syscall.Kill(os.Getpid(), syscall.SIGHUP))
	wg.Wait()
	close(errs)
	w.waitFor(t, n, "configuration reloaded")
	for err := range errs {
		if err != nil {
			t.Errorf("a pull during the reload: %v", err)
		}
	}
}
