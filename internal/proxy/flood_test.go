package proxy_test

import (
	"fmt"
	"io/fs"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

// files lists every file under dir.
func files(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	slices.Sort(out)
	return out
}

// TestMadeUpRepositoriesBoundedNotaryRequests floods trustproxy with 500
// anonymous requests for 50 repositories nobody signed (manifests by tag and
// by digest, blobs, tag lists): the Notary server is asked about each name a
// bounded number of times, not once per request, and nothing is written.
func TestMadeUpRepositoriesBoundedNotaryRequests(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "v1")
	dataDir := t.TempDir()
	p := start(t, w.config(t, dataDir, ""))
	p.mustPull(t, "library/app:v1")
	before := files(t, dataDir)
	asked := w.Notary.Requests("")

	const names, perName = 50, 10
	paths := func(name string) []string {
		d := "sha256:" + fmt.Sprintf("%064x", len(name))
		return []string{"/manifests/latest", "/manifests/" + d, "/blobs/" + d, "/tags/list"}
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range names * perName {
		name := fmt.Sprintf("made-up/repo-%d", i%names)
		path := "/v2/" + name + paths(name)[i%4]
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			status, _, body := p.get(t, http.MethodGet, path)
			if status != http.StatusForbidden {
				t.Errorf("GET %s: %d %s, want 403", path, status, body)
			}
		}()
	}
	wg.Wait()
	got := w.Notary.Requests("") - asked
	t.Logf("%d requests for %d made-up repositories: %d Notary requests", names*perName, names, got)
	if got > 2*names {
		t.Errorf("%d Notary requests for %d made-up repositories, want at most %d (two per name)", got, names, 2*names)
	}
	if after := files(t, dataDir); !slices.Equal(before, after) {
		t.Errorf("the flood wrote to the data directory:\nbefore %q\nafter  %q", before, after)
	}
}
