package proxy_test

import (
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
)

// TestBlobLookupRacingRecordingPass: two first requests for blobs of a
// signed image this replica never pulled. The first misses the graph and
// is held while the second misses too, records the signed targets and is
// served; the first then finds that pass done for the same trust view and
// must look again, not refuse not_referenced.
func TestBlobLookupRacingRecordingPass(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	img := w.pushSigned(t, "library/app", "v1", "lookup-race")
	layer := w.layerOf(t, img)
	p := start(t, w.config(t, t.TempDir(), ""))

	held, release := make(chan struct{}), make(chan struct{})
	var misses atomic.Int64
	p.proxy.SetAfterMiss(func() {
		if misses.Add(1) == 1 {
			close(held)
			<-release
		}
	})
	var wg sync.WaitGroup
	var first int
	wg.Go(func() {
		first, _, _ = p.get(t, http.MethodGet, "/v2/library/app/blobs/"+layer.String())
	})
	<-held
	if status, _, body := p.get(t, http.MethodGet, "/v2/library/app/blobs/"+layer.String()); status != http.StatusOK {
		t.Fatalf("the second request: %d %s", status, body)
	}
	close(release)
	wg.Wait()
	if first != http.StatusOK {
		t.Fatalf("the request whose lookup missed before the other's recording pass ended: %d, want 200", first)
	}
}
