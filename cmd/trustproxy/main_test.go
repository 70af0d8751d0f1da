package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trustserver"
)

// TestMain stops the SeaweedFS server that the S3 tests share (each has a
// bucket of its own on it, testenv.StartS3) once every test has run.
func TestMain(m *testing.M) {
	code := m.Run()
	testenv.StopS3()
	os.Exit(code)
}

func TestDemoServesSignedRefusesUnsigned(t *testing.T) {
	var out bytes.Buffer
	err := run(t.Context(), []string{"demo", "--exit", "--listen", "127.0.0.1:0", "--dir", t.TempDir()}, &out, io.Discard)
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"pull library/hello:1  SERVED",
		"pull library/hello:2  REFUSED  docker.io/library/hello:2 refused (not_signed)",
		"pull library/nosig:1  REFUSED  docker.io/library/nosig:1 refused (no_trust_data)",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
}

// startServe runs `trustproxy serve` on the embedded default, on a free
// port in a fresh working directory, and returns its address.
func startServe(t *testing.T) (addr string, logs *testenv.LogBuffer, cancel context.CancelFunc, done chan error) {
	t.Chdir(t.TempDir())
	t.Setenv("TRUSTPROXY_LISTEN", "127.0.0.1:0")
	ctx, cancel := context.WithCancel(t.Context())
	logs = &testenv.LogBuffer{}
	done = make(chan error, 1)
	go func() { done <- run(ctx, []string{"serve"}, io.Discard, logs) }()
	for deadline := time.Now().Add(10 * time.Second); addr == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, line := range strings.Split(logs.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "trustproxy serving" {
				addr, _ = m["addr"].(string)
			}
		}
	}
	if addr == "" {
		cancel()
		t.Fatalf("serve did not start:\n%s", logs.String())
	}
	return addr, logs, cancel, done
}

func TestServeEmbeddedDefaultRefusesWithHowTo(t *testing.T) {
	addr, logs, cancel, done := startServe(t)
	resp, err := http.Get("http://" + addr + "/v2/library/alpine/manifests/3")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "notary.url") {
		t.Fatalf("default config: %d %s, want 403 saying how to configure a notary server", resp.StatusCode, body)
	}
	if !strings.Contains(logs.String(), "no metrics listener: set metrics.listen") {
		t.Errorf("no start-up line saying /metrics is off:\n%s", logs.String())
	}
	resp, err = http.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	ready, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(ready), "ok\nstorage: writable\n") {
		t.Errorf("/readyz: %d %q", resp.StatusCode, ready)
	}
	if !strings.Contains(logs.String(), "upstream has no notary server") {
		t.Errorf("no start-up warning about the missing notary server:\n%s", logs.String())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve: %v", err)
	}
}

func TestCheckRefusedExitsOne(t *testing.T) {
	t.Chdir(t.TempDir())
	var out bytes.Buffer
	err := run(t.Context(), []string{"check", "--json", "alpine:3"}, &out, io.Discard)
	if err != exitError(1) {
		t.Fatalf("check: %v, want exit status 1\n%s", err, out.String())
	}
	var v map[string]any
	if err := json.Unmarshal(out.Bytes(), &v); err != nil || v["verdict"] != "denied" || v["reason"] != "no_trust_server" || v["repository"] != "docker.io/library/alpine" {
		t.Fatalf("check output: %s", out.String())
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{nil, {"nope"}, {"check"}, {"serve", "--bogus"}} {
		if err := run(t.Context(), args, io.Discard, io.Discard); err != exitError(2) {
			t.Errorf("run %q: %v, want exit status 2", args, err)
		}
	}
	t.Chdir(t.TempDir())
	if err := run(t.Context(), []string{"serve", "--config", "missing.yaml"}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("serve with a missing config file: %v", err)
	}
}

// TestCheckShowsUnreachableTrustServer: when the Notary server stops giving
// a fresh timestamp, check says so, and refuses after max_staleness.
func TestCheckShowsUnreachableTrustServer(t *testing.T) {
	ts := trustserver.New()
	repo, err := ts.NewRepo("docker.io/library/app")
	if err != nil {
		t.Fatal(err)
	}
	alice, err := trustserver.NewSigner("alice")
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.AddDelegation("targets/releases", alice); err != nil {
		t.Fatal(err)
	}
	if err := repo.AddTarget("targets/releases", "v1", digest.FromString("manifest"), 8); err != nil {
		t.Fatal(err)
	}
	if err := repo.Publish(); err != nil {
		t.Fatal(err)
	}
	var frozen atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if frozen.Load() && strings.HasSuffix(r.URL.Path, "/timestamp.json") {
			http.NotFound(w, r)
			return
		}
		ts.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "alice.pem"), alice.PublicKeyPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	config := func(staleness string) string {
		p := filepath.Join(dir, "trustproxy-"+staleness+".yaml")
		yaml := fmt.Sprintf(`data_dir: data
upstreams: [{name: docker.io, url: "http://127.0.0.1:9", notary: {url: %q}}]
trust:
  refresh_ttl: 1ns
  max_staleness: %s
  pinning: {certs: {docker.io/library/app: [%s]}}
  signers: [{name: alice, public_key: alice.pem}]
  rules: [{repositories: "docker.io/**", signers: [alice]}]
`, srv.URL, staleness, repo.RootCertID())
		if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	check := func(cfg string) (map[string]any, error) {
		var out bytes.Buffer
		err := run(t.Context(), []string{"check", "--json", "--config", cfg, "docker.io/library/app:v1"}, &out, io.Discard)
		var v map[string]any
		if jerr := json.Unmarshal(out.Bytes(), &v); jerr != nil {
			t.Fatalf("check output %q: %v", out.String(), jerr)
		}
		return v, err
	}
	v, err := check(config("1h"))
	if err != nil || v["verdict"] != "served" || v["trust_data"].(map[string]any)["trust_server"] != "ok" {
		t.Fatalf("check with the server answering: %v %v", v, err)
	}
	frozen.Store(true)
	v, err = check(config("1h"))
	if err != nil || v["verdict"] != "served" || !strings.HasPrefix(fmt.Sprint(v["trust_data"].(map[string]any)["trust_server"]), "unreachable: ") {
		t.Fatalf("check with the server frozen, within max_staleness: %v %v", v, err)
	}
	time.Sleep(10 * time.Millisecond)
	v, err = check(config("5ms"))
	if err != exitError(1) || v["verdict"] != "denied" || v["reason"] != "trust_unavailable" || !strings.Contains(fmt.Sprint(v["message"]), "max_staleness") {
		t.Fatalf("check with the server frozen past max_staleness: %v %v", v, err)
	}
}

// TestSlowHeadersClosed: clients that send their request headers a byte at a
// time (slowloris) are disconnected at the header timeout, not kept.
func TestSlowHeadersClosed(t *testing.T) {
	addr, _, cancel, _ := startServe(t)
	defer cancel()
	const clients = 50
	start := time.Now()
	var wg sync.WaitGroup
	for range clients {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			defer c.Close()
			_, _ = io.WriteString(c, "GET /v2/ HTTP/1.1\r\nHost: x\r\n")
			for range 30 { // one header byte a second, never the blank line
				if _, err := c.Write([]byte("X")); err != nil {
					return // closed by the server
				}
				_ = c.SetReadDeadline(time.Now().Add(time.Second))
				if _, err := c.Read(make([]byte, 512)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
					return // the server answered 408 or closed
				}
			}
			t.Errorf("a connection sending headers slowly was still open after %v", time.Since(start))
		})
	}
	wg.Wait()
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("slow connections closed after %v, want about the 10s header timeout", d)
	}
}

// TestServeKeepsRegistryPathsAsSent: paths with empty, "." or ".."
// segments reach the registry API as sent and are refused there (400),
// not cleaned and redirected by a request multiplexer.
func TestServeKeepsRegistryPathsAsSent(t *testing.T) {
	addr, _, cancel, done := startServe(t)
	for _, path := range []string{"/v2/library//alpine/manifests/3", "/v2/library/x/../alpine/manifests/3"} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("GET %s: %d, want 400", path, resp.StatusCode)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve: %v", err)
	}
}

// TestVersionNamesModules: `trustproxy version` names the build and the
// version of each module in it, the trust library among them.
func TestVersionNamesModules(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), []string{"version"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "trustproxy ") || !strings.Contains(out.String(), "\n  github.com/theupdateframework/notary v0.7.0\n") {
		t.Fatalf("version output:\n%s", out.String())
	}
}
