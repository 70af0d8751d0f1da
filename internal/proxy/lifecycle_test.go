package proxy_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	"github.com/distribution/reference"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

// uploadsDir is where distribution keeps the uploads of repo (a GUN) under
// a filesystem storage root.
func uploadsDir(root, repo string) string {
	return filepath.Join(root, "docker", "registry", "v2", "repositories", repo, "_uploads")
}

// entries lists dir, or nothing if it does not exist.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// waitSpooled waits until a spool file under dataDir holds at least n bytes:
// a fill is under way.
func waitSpooled(t *testing.T, dataDir string, n int64) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		files, _ := filepath.Glob(filepath.Join(dataDir, "spool", "blob-*"))
		for _, f := range files {
			if info, err := os.Stat(f); err == nil && info.Size() >= n {
				return
			}
		}
	}
	t.Fatalf("no fill spooled %d bytes within 30s", n)
}

// TestCloseCancelsFills: Close during a cold pull whose blob arrives slowly
// cancels the fill: the client's pull fails, nothing is committed, no upload
// or spool file is left, and a request that would start a fill afterwards
// gets 503 UNAVAILABLE.
func TestCloseCancelsFills(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	img := testenv.Image(t, "closing", 1, 2<<20)
	w.Registry.Push(t, "library/app", "v1", img)
	w.Notary.SignImage(t, gun, "v1", img, testenv.Releases)
	layer := firstLayer(t, img)
	slow := testenv.Throttle(t, w.Registry.Host(), 256<<10) // the layer takes about 8s
	p := start(t, strings.Replace(w.config(t, t.TempDir(), ""), w.Registry.URL(), slow.URL(), 1))

	pulled := make(chan error, 1)
	go func() {
		_, err := p.pull(t, "library/app:v1")
		pulled <- err
	}()
	waitSpooled(t, p.dataDir, 64<<10)

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := p.proxy.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Close returned: the fill has ended and cleaned up after itself.
	if slices.Contains(p.storedBlobs(t), layer.String()) {
		t.Error("the cancelled fill committed its blob")
	}
	if files := entries(t, filepath.Join(p.dataDir, "spool")); len(files) != 0 {
		t.Errorf("spool files left: %v", files)
	}
	if ups := entries(t, uploadsDir(filepath.Join(p.dataDir, "storage"), gun)); len(ups) != 0 {
		t.Errorf("uploads left: %v", ups)
	}
	if !strings.Contains(p.logs.String(), "trustproxy is shutting down") {
		t.Errorf("the log does not say why the fill stopped:\n%s", p.logs)
	}
	select {
	case err := <-pulled:
		if err == nil {
			t.Error("the pull succeeded from a cancelled fill")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the pull was still running 30s after Close")
	}

	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/blobs/"+layer.String())
	wantError(t, status, body, http.StatusServiceUnavailable, "UNAVAILABLE", "trustproxy is shutting down")
	if status, _, _ := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1"); status != http.StatusOK {
		t.Errorf("stored manifest after Close: %d, want 200 (only fills stop)", status)
	}
}

// TestOpenPurgesStaleUploads: uploads that fills of a killed process left in
// storage are removed at start once older than a fill can run; younger ones,
// which another process sharing the storage may still be writing, stay.
func TestOpenPurgesStaleUploads(t *testing.T) {
	dataDir := t.TempDir()
	root := filepath.Join(dataDir, "storage")
	ctx := t.Context()
	d, err := factory.Create(ctx, "filesystem", map[string]any{"rootdirectory": root})
	if err != nil {
		t.Fatal(err)
	}
	ns, err := storage.NewRegistry(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	named, err := reference.WithName(gun)
	if err != nil {
		t.Fatal(err)
	}
	repo, err := ns.Repository(ctx, named)
	if err != nil {
		t.Fatal(err)
	}
	// Three fills that never ended, as a killed process leaves them: one
	// started two days ago, one an hour ago (past 2 × blob_idle_timeout, not
	// past the deadline of a large blob's fill), one just now.
	started := map[string]time.Duration{}
	for _, age := range []time.Duration{48 * time.Hour, time.Hour, 0} {
		bw, err := repo.Blobs(ctx).Create(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := bw.Write([]byte("part of a blob")); err != nil {
			t.Fatal(err)
		}
		if err := bw.Close(); err != nil {
			t.Fatal(err)
		}
		started[bw.ID()] = age
		at := time.Now().Add(-age).UTC().Format(time.RFC3339)
		if err := os.WriteFile(filepath.Join(uploadsDir(root, gun), bw.ID(), "startedat"), []byte(at), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	p := start(t, "data_dir: "+dataDir+"\nupstreams: [{name: docker.io, url: 'http://127.0.0.1:9'}]\n")
	left := entries(t, uploadsDir(root, gun))
	for id, age := range started {
		if kept := slices.Contains(left, id); kept != (age < 2*time.Hour) {
			t.Errorf("upload started %v ago: kept %v", age, kept)
		}
	}
	logged := false
	for _, line := range p.logs.Lines() {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "stale uploads purged" {
			logged = m["removed"] == 1.0
		}
	}
	if !logged {
		t.Errorf("no log line says one stale upload was purged:\n%s", p.logs)
	}
}
