package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/testenv"
)

// TestObservability: `serve` with a metrics listener, Redis, a scanner and
// log: warn. After a signed pull (scanned first) and an unsigned one, every
// metric the traffic moved is on the metrics listener, and /metrics is not
// on the registry port (404). Each answer carries a request ID, which the
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

	_, metrics := get("http://" + metricsAddr + "/metrics")
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
