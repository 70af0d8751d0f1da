package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/testenv"
)

// TestObservability: `serve` with a metrics listener, Redis, a scanner,
// retention and log: warn. After a signed pull (scanned first), the same pull
// again (from storage), an unsigned one, a retention run and two reloads of
// the configuration (one valid, one refused), every metric the traffic moved
// is on the metrics listener, and /metrics is not on the registry port (404). Each answer carries a request ID, which the
// refusal's decision line names; the refusal is logged under log: warn,
// the served pull is not. /readyz on both listeners names storage, Redis
// and the Notary server.
func TestObservability(t *testing.T) {
	env := testenv.New(t)
	alice := testenv.NewKey(t, "alice")
	scanner := testenv.StartScanner(t)
	redis := testenv.StartRedis(t, "")
	const gun = "docker.io/library/app"
	root := env.Notary.Init(t, gun)
	env.Notary.AddDelegation(t, gun, testenv.Releases, alice)
	img := testenv.Image(t, "observe v1", 2, 4096)
	env.Registry.Push(t, "library/app", "v1", img)
	env.Notary.SignImage(t, gun, "v1", img, testenv.Releases)
	env.Registry.Push(t, "library/app", "v2", testenv.Image(t, "observe v2", 1, 1024))

	addr, metricsAddr := testenv.FreeAddr(t), testenv.FreeAddr(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "trustproxy.yaml")
	must(t, os.WriteFile(cfg, []byte(fmt.Sprintf(`listen: %s
metrics: {listen: %s}
log: {level: warn}
data_dir: %s
upstreams: [{name: docker.io, url: %q, notary: {url: %q, ca_file: %q}}]
trust:
  pinning: {certs: {%s: [%s]}}
  signers: [{name: alice, public_key: %q}]
  rules: [{repositories: "docker.io/**", signers: [alice], scan: {missing: wait}}]
scan:
  registry_url: http://%s
  scanners: [{name: test-adapter, url: %s}]
retention: {max_age: 1h, interval: 1s}
%s`, addr, metricsAddr, filepath.Join(dir, "data"), env.Registry.URL(), env.Notary.URL(), env.Notary.CAFile(),
		gun, root, alice.CertFile, addr, scanner.URL(), testenv.NewDeployment(t, redis).YAML())), 0o600))
	logs := &testenv.LogBuffer{}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"serve", "--config", cfg}, io.Discard, logs) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("trustproxy log:\n%s", logs)
		}
	})
	get := func(url string) (*http.Response, string) {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get("http://" + metricsAddr + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not start:\n%s", logs)
		}
	}

	ref, err := name.ParseReference(addr+"/library/app:v1", name.Insecure)
	must(t, err)
	for range 2 { // the second pull is served from storage
		pulled, err := remote.Image(ref)
		must(t, err)
		layers, err := pulled.Layers()
		must(t, err)
		for _, l := range layers {
			rc, err := l.Compressed()
			must(t, err)
			_, err = io.Copy(io.Discard, rc)
			must(t, err)
			rc.Close()
		}
	}
	resp, body := get("http://" + addr + "/v2/library/app/manifests/v2")
	id := resp.Header.Get(proxy.RequestIDHeader)
	if resp.StatusCode != http.StatusNotFound || len(id) != 24 {
		t.Fatalf("unsigned v2: %d %s, request ID %q", resp.StatusCode, body, id)
	}

	var refusal map[string]any
	for _, line := range logs.Lines() {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "decision" {
			if m["verdict"] == "served" {
				t.Errorf("a served decision logged under log: warn: %s", line)
			}
			if m["ref"] == "v2" {
				refusal = m
			}
		}
	}
	if refusal == nil || refusal["level"] != "WARN" || refusal["request_id"] != id || refusal["reason"] != "not_signed" {
		t.Fatalf("the refusal's decision line: %v, want WARN with request_id %s", refusal, id)
	}

	// Reloads: the same file with one more blank line (valid: applied), then
	// a file naming an unknown signer (refused).
	original, err := os.ReadFile(cfg)
	must(t, err)
	scrape := func(want string) string {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			_, metrics := get("http://" + metricsAddr + "/metrics")
			if strings.Contains(metrics, want) || time.Now().After(deadline) {
				return metrics
			}
		}
	}
	must(t, os.WriteFile(cfg, append(original, '\n'), 0o600))
	scrape(`trustproxy_config_reload_total{result="ok"} 1`)
	must(t, os.WriteFile(cfg, []byte(strings.Replace(string(original), "signers: [alice]", "signers: [carol]", 1)), 0o600))
	scrape(`trustproxy_config_reload_total{result="error"} 1`)
	metrics := scrape(`trustproxy_retention_runs_total{result="collected"}`)
	for _, want := range []string{
		`trustproxy_decisions_total{reason="verified",rule="0",upstream="docker.io",verdict="served"}`,
		`trustproxy_decisions_total{reason="not_signed",rule="0",upstream="docker.io",verdict="denied"} 1`,
		`trustproxy_upstream_requests_total{kind="manifests",status="200",upstream="docker.io"}`,
		`trustproxy_upstream_requests_total{kind="blobs",status="200",upstream="docker.io"}`,
		`trustproxy_upstream_bytes_total{kind="blobs",upstream="docker.io"}`,
		`trustproxy_served_total{kind="blob",source="upstream"}`,
		`trustproxy_trust_refresh_seconds_bucket{`,
		`trustproxy_trust_refresh_total{result="ok"}`,
		`trustproxy_scans_total{result="ok",scanner="test-adapter"} 1`,
		`trustproxy_redis_degraded 0`,
		`trustproxy_served_total{kind="blob",source="cache"}`,
		`trustproxy_served_total{kind="manifest",source="cache"}`,
		`trustproxy_scan_queue_length 0`,
		`trustproxy_scans_running 0`,
		`trustproxy_config_reload_total{result="ok"} 1`,
		`trustproxy_config_reload_total{result="error"} 1`,
		`trustproxy_config_info{fingerprint="sha256:`,
		`trustproxy_retention_runs_total{result="collected"}`,
		`trustproxy_retention_stored_bytes `,
		`trustproxy_retention_last_run_timestamp_seconds `,
		`trustproxy_retention_freed_bytes_total 0`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics on the metrics listener lacks %s", want)
		}
	}
	if resp, _ := get("http://" + addr + "/metrics"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("/metrics on the registry port: %d, want 404", resp.StatusCode)
	}
	for _, a := range []string{addr, metricsAddr} {
		resp, ready := get("http://" + a + "/readyz")
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(ready, "ok\n") ||
			!strings.Contains(ready, "storage: writable") || !strings.Contains(ready, "redis: ok") || !strings.Contains(ready, "notary docker.io: reachable") {
			t.Errorf("/readyz on %s: %d %q", a, resp.StatusCode, ready)
		}
	}
}

// TestEveryMetricIsCheckedAndListed: every metric trustproxy defines is
// named by a test, which checks it after the traffic that moves it, and by
// README's metrics table.
func TestEveryMetricIsCheckedAndListed(t *testing.T) {
	root, err := filepath.Abs("../..")
	must(t, err)
	metric := regexp.MustCompile(`"(trustproxy_[a-z_]+)"`)
	defined := map[string]string{}
	var tests strings.Builder
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if strings.HasSuffix(path, "_test.go") {
			tests.Write(b)
			return nil
		}
		for _, m := range metric.FindAllStringSubmatch(string(b), -1) {
			defined[m[1]] = path
		}
		return nil
	})
	must(t, err)
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	must(t, err)
	if len(defined) < 10 {
		t.Fatalf("found only %d metrics: %v", len(defined), defined)
	}
	for name, file := range defined {
		if !strings.Contains(tests.String(), name) {
			t.Errorf("%s (defined in %s) is checked by no test", name, file)
		}
		if !strings.Contains(string(readme), "`"+name) {
			t.Errorf("%s (defined in %s) is not in README's metrics table", name, file)
		}
	}
}
