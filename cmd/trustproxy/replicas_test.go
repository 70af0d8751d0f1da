package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

// TestSIGKILLedFillHolder: two trustproxy processes share Redis and a
// storage directory. Replica A is filling a cold layer, which replica B
// streams from it for its own client, when A is killed with SIGKILL. Neither
// client gets a complete body; a retry on B gets the right layer (B fetches
// it itself: the dead holder does not answer); nothing partial is stored.
func TestSIGKILLedFillHolder(t *testing.T) {
	bin := buildTrustproxy(t)
	env := testenv.New(t)
	redis := testenv.StartRedis(t, "")
	const gun, repo = "docker.io/library/app", "library/app"
	alice := testenv.NewKey(t, "alice")
	root := env.Notary.Init(t, gun)
	env.Notary.AddDelegation(t, gun, testenv.Releases, alice)
	img := testenv.Image(t, "sigkill", 1, 3<<20)
	env.Registry.Push(t, repo, "v1", img)
	env.Notary.SignImage(t, gun, "v1", img, testenv.Releases)
	layers, _ := img.Layers()
	layer, _ := layers[0].Digest()
	size, _ := layers[0].Size()
	slow := testenv.Throttle(t, env.Registry.Host(), 512<<10) // about 6s for the layer
	storage := t.TempDir()

	type replica struct {
		url, dataDir string
		cmd          *exec.Cmd
	}
	startReplica := func() *replica {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		r := &replica{url: "http://" + addr, dataDir: t.TempDir()}
		cfgFile := filepath.Join(t.TempDir(), "trustproxy.yaml")
		yaml := fmt.Sprintf(`listen: %s
data_dir: %s
storage: {filesystem: {rootdirectory: %s}}
redis: {addrs: [%s], replica_url: %s}
upstreams:
  - name: docker.io
    url: %s
    notary: {url: %s, ca_file: %s}
trust:
  pinning: {certs: {%s: [%s]}}
  signers: [{name: alice, public_key: %s}]
  rules: [{repositories: "docker.io/**", signers: [alice]}]
`, addr, r.dataDir, storage, redis.Addr(), r.url, slow.URL(), env.Notary.URL(), env.Notary.CAFile(), gun, root, alice.CertFile)
		if err := os.WriteFile(cfgFile, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		logs := &testenv.LogBuffer{}
		r.cmd = exec.Command(bin, "serve", "--config", cfgFile)
		r.cmd.Stderr = logs
		if err := r.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { _ = r.cmd.Wait(); close(done) }()
		t.Cleanup(func() {
			_ = r.cmd.Process.Kill()
			<-done
			if t.Failed() {
				t.Logf("log of %s:\n%s", r.url, logs)
			}
		})
		waitServing(t, logs)
		return r
	}
	a, b := startReplica(), startReplica()
	for _, r := range []*replica{a, b} {
		resp, err := http.Get(r.url + "/v2/" + repo + "/manifests/v1")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("manifest from %s: %v %v", r.url, resp, err)
		}
		resp.Body.Close()
	}

	// get fetches the layer from r; complete says whether a whole body that
	// hashes to the layer arrived.
	get := func(r *replica) (complete bool, n int64, err error) {
		resp, err := http.Get(r.url + "/v2/" + repo + "/blobs/" + layer.String())
		if err != nil {
			return false, 0, err
		}
		defer resp.Body.Close()
		h := sha256.New()
		n, err = io.Copy(h, resp.Body)
		sum := "sha256:" + hex.EncodeToString(h.Sum(nil))
		if err == nil && resp.StatusCode == 200 && n == size && sum == layer.String() {
			return true, n, nil
		}
		if err == nil && n == size {
			t.Errorf("a complete body of %d bytes that hashes to %s, not %s (status %d)", n, sum, layer, resp.StatusCode)
		}
		return false, n, err
	}
	type outcome struct {
		complete bool
		n        int64
		err      error
	}
	first, second := make(chan outcome, 1), make(chan outcome, 1)
	go func() { c, n, err := get(a); first <- outcome{c, n, err} }()
	waitSpooled(t, a.dataDir, 256<<10)
	go func() { c, n, err := get(b); second <- outcome{c, n, err} }() // streamed from a's fill
	time.Sleep(500 * time.Millisecond)
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for name, ch := range map[string]chan outcome{"the client of the killed replica": first, "the client streaming through b": second} {
		select {
		case o := <-ch:
			if o.complete {
				t.Fatalf("%s got the whole layer though its fill was killed", name)
			}
			t.Logf("%s: %d of %d bytes, then %v", name, o.n, size, o.err)
		case <-time.After(60 * time.Second):
			t.Fatalf("%s still waiting 60s after the kill", name)
		}
	}
	if complete, n, err := get(b); !complete {
		t.Fatalf("retry on b: %d bytes, %v", n, err)
	}
	// What is stored is whole and verified.
	data := filepath.Join(storage, "docker", "registry", "v2", "blobs", "sha256", layer.Hex[:2], layer.Hex, "data")
	stored, err := os.ReadFile(data)
	if err != nil {
		t.Fatalf("the layer was not stored after the retry: %v", err)
	}
	if sum := sha256.Sum256(stored); "sha256:"+hex.EncodeToString(sum[:]) != layer.String() {
		t.Fatal("a partial or wrong layer was stored")
	}
}
