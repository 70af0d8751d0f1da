package bench

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

var (
	tableOut   = flag.String("table", "", "run TestTable at full scale and write its markdown table here")
	binFlag    = flag.String("trustproxy", "", "the trustproxy binary to measure (default: built from this tree)")
	beforeFlag = flag.String("before", "", "another trustproxy binary, measured in the same run as the column trustproxy-before")
	rowsFlag   = flag.String("rows", "", "with -table: the rows to run, comma-separated (default: all)")
	profileDir = flag.String("profile", "", "with -table: write trustproxy's CPU and block profiles of the cold rows here")
)

// scale is the size of every row of the table.
type scale struct {
	reps           int   // samples per cell; the table shows their median
	coldReps       int   // samples per cell of the cold big pull, short and noisy
	bigLayers      int   // layers of the big image
	bigLayerSize   int64 // bytes per layer of the big image
	small          int   // small signed images, one repository each
	warmLayers     int
	warmLayerSize  int64
	tagClients     int           // concurrent clients asking for a manifest by tag
	tagDuration    time.Duration // how long they ask, per proxy
	concurrent     int           // clients pulling the big image at once, cold
	hugeLayerSize  int64         // the one layer of the image pulled concurrently for the memory row
	pullWorkers    int           // blobs a client fetches at once, as dockerd's max-concurrent-downloads
	profileRepeats int           // cold big pulls under the CPU profile
}

// full is the scale of the published table (docs/performance.md).
var full = scale{
	reps: 3, coldReps: 7, bigLayers: 4, bigLayerSize: 64 << 20, small: 200,
	warmLayers: 3, warmLayerSize: 4 << 20, tagClients: 32, tagDuration: 2 * time.Second,
	concurrent: 50, hugeLayerSize: 1 << 30, pullWorkers: 3, profileRepeats: 2,
}

// smoke runs every row at a size CI affords, to keep the harness working.
var smoke = scale{
	reps: 1, coldReps: 1, bigLayers: 2, bigLayerSize: 1 << 20, small: 5,
	warmLayers: 2, warmLayerSize: 64 << 10, tagClients: 4, tagDuration: 200 * time.Millisecond,
	concurrent: 5, hugeLayerSize: 4 << 20, pullWorkers: 3, profileRepeats: 1,
}

// TestTable measures every row of docs/performance.md side by side: a
// verified pull straight from the upstream (direct), through distribution's
// pull-through proxy, and through trustproxy. Without -table it runs at
// smoke scale and checks only that every pull verified and that trustproxy
// fetched each blob once; with -table FILE it runs at full scale and writes
// the table there (bench/run.sh).
func TestTable(t *testing.T) {
	sc := smoke
	if *tableOut != "" {
		sc = full
	}
	start := time.Now()
	env := newTableEnv(t, sc)
	t.Logf("setup: %s", time.Since(start).Round(time.Millisecond))
	var tab table
	tab.scale = sc
	rows := []struct {
		name string
		run  func(*testing.T, *tableEnv, *table)
	}{
		{"cold-big", runColdBig},
		{"cold-remote", runColdRemote},
		{"cold-small", runColdSmall},
		{"warm", runWarm},
		{"tags", runTags},
		{"concurrent", runConcurrent},
		{"memory", runMemory},
	}
	for _, r := range rows {
		if *rowsFlag != "" && !slices.Contains(strings.Split(*rowsFlag, ","), r.name) {
			continue
		}
		t0 := time.Now()
		if !t.Run(r.name, func(t *testing.T) { r.run(t, env, &tab) }) {
			t.FailNow()
		}
		t.Logf("%s: %s", r.name, time.Since(t0).Round(time.Millisecond))
	}
	if *profileDir != "" {
		t0 := time.Now()
		profile(t, env, *profileDir)
		t.Logf("profiles: %s", time.Since(t0).Round(time.Millisecond))
	}
	md := tab.markdown(time.Since(start))
	t.Log("\n" + md)
	if *tableOut != "" {
		if err := os.WriteFile(*tableOut, []byte(md), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// runColdBig: one client pulls the big image through a proxy with empty
// storage (and, for trustproxy, no trust data yet).
func runColdBig(t *testing.T, e *tableEnv, tab *table) {
	for range e.sc.coldReps {
		for _, im := range columns() {
			p := e.start(t, im, "")
			d := timed(t, func() error { return e.pull(t.Context(), im, p, e.big, e.sc.pullWorkers) })
			p.stop()
			tab.add("cold-big", im, d.Seconds())
		}
	}
}

// runColdRemote is runColdBig with the upstream behind a relay passing
// remoteRate per connection: the network, not the machine, sets the pace.
func runColdRemote(t *testing.T, e *tableEnv, tab *table) {
	for range e.sc.reps {
		for _, im := range columns() {
			p := e.startAt(t, im, "", e.remote.URL())
			d := timed(t, func() error { return e.pull(t.Context(), im, p, e.big, e.sc.pullWorkers) })
			p.stop()
			tab.add("cold-remote", im, d.Seconds())
		}
	}
}

// runColdSmall: one client pulls every small image, one after the other,
// each its own repository, through a proxy with empty storage.
// Also recorded, as plain: the same pulls straight from the upstream by
// tag, verifying nothing but digests (no trust data fetched).
func runColdSmall(t *testing.T, e *tableEnv, tab *table) {
	for range e.sc.reps {
		for _, im := range append(columns(), plain) {
			p := e.start(t, cmp.Or(map[string]string{plain: direct}[im], im), "")
			d := timed(t, func() error {
				for _, s := range e.smalls {
					var err error
					if im == plain {
						err = e.plainPull(t.Context(), p.url, s, e.sc.pullWorkers)
					} else {
						err = e.pull(t.Context(), im, p, s, e.sc.pullWorkers)
					}
					if err != nil {
						return err
					}
				}
				return nil
			})
			p.stop()
			tab.add("cold-small", im, d.Seconds()/float64(len(e.smalls)))
		}
	}
}

// runWarm: pulls of an image already in the proxy's storage; direct is the
// upstream serving it. Every client pulls by tag, unverified: a warm
// pull's cost is the proxy's.
func runWarm(t *testing.T, e *tableEnv, tab *table) {
	const pulls = 10
	for _, im := range columns() {
		p := e.start(t, im, "")
		if err := e.plainPull(t.Context(), p.url, e.warm, e.sc.pullWorkers); err != nil {
			t.Fatal(err)
		}
		for range e.sc.reps {
			d := timed(t, func() error {
				for range pulls {
					if err := e.plainPull(t.Context(), p.url, e.warm, e.sc.pullWorkers); err != nil {
						return err
					}
				}
				return nil
			})
			tab.add("warm", im, d.Seconds()/pulls)
		}
		p.stop()
	}
}

// runTags: tagClients clients GET the warm image's manifest by tag for
// tagDuration; the figure is requests per second.
func runTags(t *testing.T, e *tableEnv, tab *table) {
	for _, im := range columns() {
		p := e.start(t, im, "")
		c := newClient(t)
		if err := c.get(t.Context(), p.url, "/v2/"+e.warm.repo+"/manifests/"+e.warm.tag, accept, e.warm.manifest, nil); err != nil {
			t.Fatal(err)
		}
		for range e.sc.reps {
			var mu sync.Mutex
			var n int
			var firstErr error
			deadline := time.Now().Add(e.sc.tagDuration)
			var wg sync.WaitGroup
			t0 := time.Now()
			for range e.sc.tagClients {
				cl := c.fork()
				wg.Go(func() {
					k := 0
					for time.Now().Before(deadline) {
						if err := cl.get(t.Context(), p.url, "/v2/"+e.warm.repo+"/manifests/"+e.warm.tag, accept, e.warm.manifest, nil); err != nil {
							mu.Lock()
							firstErr = cmpErr(firstErr, err)
							mu.Unlock()
							return
						}
						k++
					}
					mu.Lock()
					n += k
					mu.Unlock()
				})
			}
			wg.Wait()
			if firstErr != nil {
				t.Fatal(firstErr)
			}
			tab.add("tags", im, float64(n)/time.Since(t0).Seconds())
		}
		p.stop()
	}
}

// runConcurrent: concurrent clients pull the big image at once through a
// proxy with empty storage. Recorded: the time until the last is done, the
// upstream's bytes per image, and the proxy's peak RSS.
func runConcurrent(t *testing.T, e *tableEnv, tab *table) {
	for range e.sc.reps {
		for _, im := range columns() {
			p := e.start(t, im, "")
			before := e.upstreamBlobBytes(e.big)
			d := timed(t, func() error { return e.pullMany(t.Context(), im, p, e.big, e.sc.concurrent) })
			tab.add("concurrent-time", im, d.Seconds())
			tab.add("concurrent-upstream", im, float64(e.upstreamBlobBytes(e.big)-before)/float64(e.big.blobBytes()))
			if im != direct {
				tab.add("rss-big", im, float64(p.peakRSS())/(1<<20))
			}
			p.stop()
		}
	}
}

// runMemory: the concurrent pull of the huge image, once per proxy: peak
// RSS, to set against rss-big.
func runMemory(t *testing.T, e *tableEnv, tab *table) {
	// distribution would fetch the layer once per client: 50 GiB from the
	// upstream, minutes of the run; its memory is measured at rss-big.
	for _, im := range columns()[2:] {
		p := e.start(t, im, "")
		before := e.upstreamBlobBytes(e.huge)
		d := timed(t, func() error { return e.pullMany(t.Context(), im, p, e.huge, e.sc.concurrent) })
		tab.add("rss-huge", im, float64(p.peakRSS())/(1<<20))
		tab.add("huge-time", im, d.Seconds())
		tab.add("huge-upstream", im, float64(e.upstreamBlobBytes(e.huge)-before)/float64(e.huge.blobBytes()))
		p.stop()
	}
}

// pullMany runs n pulls of im at once and returns the first error.
func (e *tableEnv) pullMany(ctx context.Context, impl string, p *proc, im *signedImage, n int) error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	ready := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-ready
			errs[i] = e.pull(ctx, impl, p, im, e.sc.pullWorkers)
		})
	}
	close(ready)
	wg.Wait()
	return errors.Join(errs...)
}

// profile writes trustproxy's CPU and block profiles of cold big pulls and
// of the cold small images to dir.
func profile(t *testing.T, e *tableEnv, dir string) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	work := map[string]func(*proc) error{
		"cold-big": func(p *proc) error {
			for _, im := range e.profileBigs {
				if err := e.pull(t.Context(), trustproxy, p, im, e.sc.pullWorkers); err != nil {
					return err
				}
			}
			return nil
		},
		"cold-small": func(p *proc) error {
			for _, s := range e.smalls {
				if err := e.pull(t.Context(), trustproxy, p, s, e.sc.pullWorkers); err != nil {
					return err
				}
			}
			return nil
		},
	}
	for _, name := range slices.Sorted(maps.Keys(work)) {
		p := e.start(t, trustproxy, "debug: {listen: 127.0.0.1:0, block_profile_rate: 10000}\n")
		if err := p.profile(t.Context(), filepath.Join(dir, name), func() error { return work[name](p) }); err != nil {
			t.Fatalf("profile %s: %v", name, err)
		}
		p.stop()
	}
}

func timed(t *testing.T, f func() error) time.Duration {
	t.Helper()
	runtime.GC()
	t0 := time.Now()
	err := f()
	d := time.Since(t0)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// testenvTarget is the notary target of im.
func testenvTarget(im *signedImage) testenv.Target {
	return testenv.Target{Digest: v1.Hash{Algorithm: "sha256", Hex: strings.TrimPrefix(im.manifest.Digest.String(), "sha256:")}, Size: im.manifest.Size}
}
