package proxy_test

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

// A manifest that verified but could not be stored (disk full, a bucket
// error) is no refusal: the client is told to retry with 503 UNAVAILABLE
// naming storage (and not where it is), not refused as an invalid manifest,
// nor a blob of it as not referenced, and the same pull succeeds once
// storage works again. An audited pull of an unsigned tag
// meets the same failure the same way. Storage is made to fail for real: a
// file stands where distribution's filesystem driver must create the blob
// directory, which no user, root included, can write through.
func TestStorageFailureIsRetryable(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	layer, _ := w.pushSignedLayer(t, "v1", "storage v1", 4096)
	w.Registry.Push(t, "library/app", "unsigned", testenv.Image(t, "storage unsigned", 1, 1024))
	for _, mode := range []string{"enforce", "audit"} {
		t.Run(mode, func(t *testing.T) {
			dataDir := t.TempDir()
			blocker := filepath.Join(dataDir, "storage", "docker", "registry", "v2", "blobs")
			must(t, os.MkdirAll(filepath.Dir(blocker), 0o755))
			must(t, os.WriteFile(blocker, []byte("not a directory"), 0o644))
			cfg := strings.Replace(w.config(t, dataDir, ""),
				"  rules:\n    - repositories: \"docker.io/**\"\n      signers: [alice]\n",
				"  rules:\n    - repositories: \"docker.io/**\"\n      signers: [alice]\n      mode: "+mode+"\n", 1)
			p := start(t, cfg)
			refs := []string{"v1"}
			if mode == "audit" {
				refs = append(refs, "unsigned") // served unverified, and stored
			}
			// A layer of v1 first: placing it under v1 needs v1's manifest,
			// which cannot be stored either.
			paths := []string{"/v2/library/app/blobs/" + layer.String()}
			for _, ref := range refs {
				paths = append(paths, "/v2/library/app/manifests/"+ref)
			}
			for _, path := range paths {
				status, _, body := p.get(t, http.MethodGet, path)
				var e struct {
					Errors []struct{ Code, Message string } `json:"errors"`
				}
				if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) == 0 || status != http.StatusServiceUnavailable ||
					e.Errors[0].Code != "UNAVAILABLE" || !strings.Contains(e.Errors[0].Message, "storage failed; retry") {
					t.Fatalf("%s with storage failing: %d %s, want 503 UNAVAILABLE naming storage", path, status, body)
				}
				if strings.Contains(string(body), dataDir) {
					t.Fatalf("%s: the client is told where storage is: %s", path, body)
				}
			}
			for _, reason := range []string{"invalid_manifest", "not_referenced"} {
				if n := p.decisions(t, "denied", reason) + p.decisions(t, "audit", reason); n != 0 {
					t.Fatalf("%v %s decisions for a storage failure", n, reason)
				}
			}
			if !strings.Contains(p.logs.String(), `"msg":"storage failed"`) {
				t.Fatal("the storage failure is not logged for the operator")
			}

			must(t, os.Remove(blocker))
			for _, ref := range refs {
				if status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/"+ref); status != http.StatusOK {
					t.Fatalf("%s once storage works: %d %s", ref, status, body)
				}
			}
			p.mustPull(t, "library/app:v1")
		})
	}
}

// TestReadiness: /readyz's answer (Server.Readiness) is ok with storage
// taking writes and the Notary server answering; degraded while the Notary
// server is down, counting the repositories whose trust data is still
// fresh in cache; not ready (503) when storage takes no writes.
func TestReadiness(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "readiness v1")
	healthy := w.start(t, "")
	if r := healthy.proxy.Readiness(t.Context()); !r.OK || r.Status != "ok" || !slices.Contains(r.Checks, "storage: writable") || !slices.Contains(r.Checks, "notary docker.io: reachable") {
		t.Fatalf("healthy: %+v", r)
	}

	cached := w.start(t, "")
	cached.mustPull(t, "library/app:v1")
	w.Notary.SetDown(true)
	r := cached.proxy.Readiness(t.Context())
	if !r.OK || r.Status != "degraded" || !strings.Contains(r.String(), "notary docker.io: unreachable") || !strings.Contains(r.String(), "trust data of 1 repositories still fresh") {
		t.Fatalf("notary down: %+v", r)
	}
	w.Notary.SetDown(false)

	dataDir := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(dataDir, "storage"), 0o755))
	must(t, os.WriteFile(filepath.Join(dataDir, "storage", "trustproxy"), []byte("not a directory"), 0o644))
	broken := start(t, w.config(t, dataDir, ""))
	if r := broken.proxy.Readiness(t.Context()); r.OK || r.Status != "not ready" || !strings.Contains(r.String(), "storage: not writable") {
		t.Fatalf("storage not writable: %+v", r)
	}
}
