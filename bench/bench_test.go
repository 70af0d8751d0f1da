package bench

import (
	"context"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

const (
	coldClients   = 20       // clients asking for the same cold blob at once
	coldBlobBytes = 16 << 20 // the cold blob's payload (its gzip layer is a few KiB more)
)

// BenchmarkColdBlobConcurrent times coldClients clients GETting one cold
// 16 MiB blob at once through a proxy with empty storage. Each iteration
// starts a fresh proxy and GETs the manifest by tag (the blob is then
// authorized by trustproxy's verified tree) with the timer stopped; only the
// concurrent blob GETs are timed. MB/s counts the bytes delivered to all
// clients; upstream-gets/op counts the upstream's GETs of that blob per
// iteration, upstream-reqs/op every upstream request during the timed part.
func BenchmarkColdBlobConcurrent(b *testing.B) {
	img := testenv.Image(b, "cold", 1, coldBlobBytes)
	w := newWorld(b, map[string]v1.Image{"cold": img}, nil)
	im := w.images["cold"]
	layer := im.layers[0]
	ctx := context.Background()

	for _, impl := range impls {
		b.Run("impl="+impl.name, func(b *testing.B) {
			b.SetBytes(coldClients * layer.Size)
			c := newClient(b)
			clients := make([]*client, coldClients)
			for i := range clients {
				clients[i] = c.fork()
			}
			errs := make([]error, coldClients)
			gets, reqs := 0, 0
			for range b.N {
				b.StopTimer()
				p := impl.start(b, w)
				gets0 := w.blobGets(layer.Digest)
				if err := c.manifest(ctx, p.url, "cold", im, nil); err != nil {
					p.close()
					b.Fatal(err)
				}
				reqs0 := w.upstreamRequests()
				var wg sync.WaitGroup
				ready := make(chan struct{})
				for i, cl := range clients {
					wg.Go(func() {
						<-ready
						errs[i] = cl.blob(ctx, p.url, layer)
					})
				}
				b.StartTimer()
				close(ready)
				wg.Wait()
				b.StopTimer()
				reqs += w.upstreamRequests() - reqs0
				p.close() // waits for handlers still running (distribution commits after the last byte)
				gets += w.blobGets(layer.Digest) - gets0
				c.closeIdle()
				for i, err := range errs {
					if err != nil {
						b.Fatalf("client %d: %v", i, err)
					}
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(gets)/float64(b.N), "upstream-gets/op")
			b.ReportMetric(float64(reqs)/float64(b.N), "upstream-reqs/op")
		})
	}
}

// BenchmarkWarmPull times one full sequential pull (manifest by tag, config,
// 3 layers of 4 MiB) of an image already in the proxy's storage, every
// digest checked. allocs/op counts the whole process: client, proxy, and the
// upstream for what the proxy asks of it.
func BenchmarkWarmPull(b *testing.B) {
	img := testenv.Image(b, "warm", 3, 4<<20)
	w := newWorld(b, map[string]v1.Image{"warm": img}, nil)
	im := w.images["warm"]
	benchWarm(b, w, func(c *client, p *instance) error {
		return c.pull(context.Background(), p.url, "warm", im)
	}, im.bytes())
}

// BenchmarkManifestByTagWarm times GET of a manifest by tag when the manifest
// is stored and, for trustproxy, the verified trust snapshot is cached
// (refresh_ttl 1h): the per-request cost of resolving a tag through trust.
// distribution's proxy asks the upstream for the tag on every GET, so
// impl=upstream is the fairer floor for trustproxy's overhead.
func BenchmarkManifestByTagWarm(b *testing.B) {
	img := testenv.Image(b, "tag", 1, 1024)
	w := newWorld(b, map[string]v1.Image{"v1": img}, nil)
	im := w.images["v1"]
	benchWarm(b, w, func(c *client, p *instance) error {
		return c.manifest(context.Background(), p.url, "v1", im, nil)
	}, im.manifest.Size)
}

// benchWarm starts each proxy, runs op once to fill its storage (and
// trustproxy's trust cache), then times op sequentially. impl=upstream runs
// op against the upstream registry itself: distribution serving the same
// content from its filesystem storage with no proxy in between, the floor
// both proxies add their work to.
func benchWarm(b *testing.B, w *world, op func(*client, *instance) error, size int64) {
	direct := impl{"upstream", func(testing.TB, *world) *instance {
		return &instance{url: w.upstream.URL(), close: func() {}}
	}}
	for _, impl := range append(impls[:len(impls):len(impls)], direct) {
		p := impl.start(b, w)
		b.Cleanup(p.close)
		c := newClient(b)
		if err := op(c, p); err != nil {
			b.Fatalf("%s: warm-up: %v", impl.name, err)
		}
		b.Run("impl="+impl.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(size)
			reqs0 := w.upstreamRequests()
			b.ResetTimer()
			for range b.N {
				if err := op(c, p); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if impl.name != direct.name { // there, every request is the client's own
				b.ReportMetric(float64(w.upstreamRequests()-reqs0)/float64(b.N), "upstream-reqs/op")
			}
		})
	}
}
