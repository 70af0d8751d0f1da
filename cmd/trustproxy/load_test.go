package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

// The size of TestLoad. The defaults are what CI runs; bench/load.sh runs
// the size (200 clients, 50 images).
var (
	loadClients  = flag.Int("load.clients", 40, "TestLoad: concurrent clients")
	loadImages   = flag.Int("load.images", 12, "TestLoad: signed images, every fourth a two-platform index")
	loadDuration = flag.Duration("load.duration", 20*time.Second, "TestLoad: how long the clients pull")
	loadTable    = flag.String("load.table", "", "TestLoad: also write the figures here, as a Markdown table")
	loadRedis    = flag.Duration("load.redis-timeout", 2*time.Second, "TestLoad: the replicas' redis.timeout")
)

// loadRate is what one upstream connection carries per second in TestLoad:
// slow enough that a cold layer takes a good part of a second, so the kill
// finds fills in flight.
const loadRate = 2 << 20

// TestLoad: three trustproxy processes share a Sentinel-managed Redis and a
// storage directory in front of a throttled upstream holding signed images
// (some two-platform indexes) in several repositories, plus, in each
// repository, an unsigned tag and a signed tag the upstream moved to
// unsigned content. Clients pull random signed tags through random
// replicas, and now and then ask for the unsigned content, for
// -load.duration. A quarter of the way into the cold fills one replica is
// SIGKILLed and restarted on its data directory; half way through the run
// (once the cold fills are done) the Redis master is SIGKILLed and the
// Sentinels fail over. Then:
//
//   - nothing unverified was served: every manifest and blob a pull got
//     hashes to what was signed, and every request for unsigned content was
//     refused;
//   - every client completed: a pull that failed (a clean error: a status,
//     a cut connection) completed when retried through another replica;
//   - the upstream sent at most 1.0x the bytes of the distinct blobs, plus
//     the bytes of the blobs in flight when the replica was killed.
//
// It logs the figures as a table (and writes them to -load.table).
func TestLoad(t *testing.T) {
	clients, nImages, duration := *loadClients, *loadImages, *loadDuration
	began := time.Now()
	sentinel := testenv.StartSentinel(t, "load-secret")
	p := newProcessesOn(t, testenv.NewSentinelDeployment(t, sentinel))
	// Redis calls are bounded by 2 s, not the default 250 ms: the clients,
	// the upstream, Redis and the replicas share two busy cores here, and a
	// replica that waits 250 ms on a starved Redis keeps to itself for 5 s,
	// fetching cold blobs on its own, beyond the bound checked here.
	p.redis = []string{"timeout: " + loadRedis.String()}
	w := newLoadWorld(t, p, nImages)
	slow := testenv.Throttle(t, p.env.Registry.Host(), loadRate)
	start := func(dataDir string) *replica { return p.start(t, dataDir, slow.URL(), "") }
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	var replicas []*replica
	for _, dir := range dirs {
		replicas = append(replicas, start(dir))
	}
	urls := &replicaURLs{urls: []string{replicas[0].url, replicas[1].url, replicas[2].url}}
	baseBytes := p.env.Registry.BlobBytes()
	t.Logf("setup: %d images (%d indexes), %d distinct blobs of %s, %d repositories, in %s",
		len(w.images), w.indexes, len(w.blobs), mib(w.blobBytes), len(w.repos), time.Since(began).Round(time.Millisecond))

	st := &loadStats{}
	tr := &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: time.Minute}
	ctx := t.Context()
	t0 := time.Now()
	end := t0.Add(duration)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() { w.client(ctx, hc, urls, st, uint64(i), end) })
	}

	// The replica kill, a quarter of the way into the cold fills (or a
	// third of the way into the run, whichever comes first).
	for time.Since(t0) < duration/3 && w.committed(p.shared.Storage) < len(w.blobs)/4 {
		time.Sleep(20 * time.Millisecond)
	}
	victim := replicas[2]
	killedRSS, err := testenv.PeakRSS(victim.cmd.Process.Pid)
	if err != nil {
		t.Errorf("peak RSS of the replica killed: %v", err)
	}
	killedAt := time.Since(t0)
	urls.died(victim.url)
	victim.kill()
	inflight, inflightBytes := w.inFlight(p.env.Registry, p.shared.Storage)
	restarted := time.Now()
	replicas[2] = start(dirs[2])
	urls.set(2, replicas[2].url)
	restartTook := time.Since(restarted)

	// The Redis failover, half way through, once the cold fills are done:
	// while Redis cannot be reached each replica fetches a cold blob itself
	// (docs/scaling.md), which the bound on upstream bytes leaves out.
	time.Sleep(time.Until(t0.Add(duration / 2)))
	for w.committed(p.shared.Storage) < len(w.blobs) {
		if time.Since(t0) > 3*duration/4 {
			t.Fatalf("%d of %d blobs stored %s into the run: the cold fills outlast -load.duration=%s", w.committed(p.shared.Storage), len(w.blobs), time.Since(t0).Round(time.Second), duration)
		}
		time.Sleep(20 * time.Millisecond)
	}
	failedAt := time.Since(t0)
	master := sentinel.Master()
	master.Kill()
	sentinel.WaitFailover(master)
	failoverTook := time.Since(t0) - failedAt

	wg.Wait()
	ran := time.Since(t0)
	rss := make([]int64, len(replicas)) // the last one restarted
	for i, r := range replicas {
		if rss[i], err = testenv.PeakRSS(r.cmd.Process.Pid); err != nil {
			t.Errorf("peak RSS of replica %d: %v", i, err)
		}
	}
	takeovers := 0.0
	unreachable := strings.Count(victim.logs.String(), `"msg":"redis unreachable`)
	for _, r := range replicas {
		takeovers += r.counter(t, "trustproxy_fill_lock_takeovers_total")
		unreachable += strings.Count(r.logs.String(), `"msg":"redis unreachable`)
	}

	upBytes := p.env.Registry.BlobBytes() - baseBytes
	ratio := float64(upBytes) / float64(w.blobBytes)
	bound := 1 + float64(inflightBytes)/float64(w.blobBytes)
	gets, refetched := 0, 0
	for d := range w.blobs {
		n := p.env.Registry.BlobGets(d)
		gets += n
		if n > 1 {
			refetched++
		}
	}
	lat := st.latencies()
	rows := [][2]string{
		{"clients, images (indexes), replicas", fmt.Sprintf("%d, %d (%d), 3", clients, len(w.images), w.indexes)},
		{"redis.timeout", loadRedis.String()},
		{"distinct blobs", fmt.Sprintf("%d, %s", len(w.blobs), mib(w.blobBytes))},
		{"run", fmt.Sprintf("%s; replica SIGKILLed at %s, restarted in %s; Redis master SIGKILLed at %s, failed over in %s",
			ran.Round(100*time.Millisecond), killedAt.Round(100*time.Millisecond), restartTook.Round(10*time.Millisecond),
			failedAt.Round(100*time.Millisecond), failoverTook.Round(10*time.Millisecond))},
		{"pulls completed", fmt.Sprintf("%d (%.0f/s)", st.pulls.Load(), float64(st.pulls.Load())/ran.Seconds())},
		{"pulls retried; failed attempts through the killed replica, through the others", fmt.Sprintf("%d; %d, %d", st.retried.Load(), st.failedDead.Load(), st.failedLive.Load())},
		{"clients completed", fmt.Sprintf("%d of %d", int64(clients)-st.incomplete.Load(), clients)},
		{"requests for unsigned content refused", fmt.Sprintf("%d of %d", st.refused.Load(), st.probes.Load())},
		{"unverified content served", fmt.Sprint(st.unverified.Load())},
		{"pull latency p50, p99, max", fmt.Sprintf("%s, %s, %s", ms(lat(0.50)), ms(lat(0.99)), ms(lat(1)))},
		{"blobs in flight at the replica kill", fmt.Sprintf("%d, %s", inflight, mib(inflightBytes))},
		{"upstream blob GETs, blobs fetched more than once", fmt.Sprintf("%d, %d", gets, refetched)},
		{"fill lock takeovers", fmt.Sprintf("%.0f", takeovers)},
		{"times a replica found Redis unreachable", fmt.Sprint(unreachable)},
		{"upstream bytes per blob byte (bound)", fmt.Sprintf("%.3fx (%.3fx)", ratio, bound)},
		{"peak RSS per replica", fmt.Sprintf("%s, %s, %s killed, %s restarted", mib(rss[0]), mib(rss[1]), mib(killedRSS), mib(rss[2]))},
	}
	var table strings.Builder
	table.WriteString("| load | |\n| --- | --- |\n")
	for _, r := range rows {
		fmt.Fprintf(&table, "| %s | %s |\n", r[0], r[1])
	}
	t.Logf("figures:\n%s", table.String())
	if *loadTable != "" {
		if err := os.WriteFile(*loadTable, []byte(table.String()), 0o644); err != nil {
			t.Error(err)
		}
	}

	for _, e := range st.examples() {
		t.Log(e)
	}
	if n := st.unverified.Load(); n > 0 {
		t.Errorf("%d responses served content that was not signed", n)
	}
	if n := st.incomplete.Load(); n > 0 {
		t.Errorf("%d of %d clients did not complete a pull after retrying", n, clients)
	}
	if st.pulls.Load() < int64(clients) {
		t.Errorf("%d pulls completed by %d clients", st.pulls.Load(), clients)
	}
	if ratio > bound {
		t.Errorf("the upstream sent %.3fx the distinct blobs' bytes, over the bound %.3fx (1 + the bytes in flight at the kill)", ratio, bound)
	}
}

// loadWorld is what TestLoad's clients pull: signed images, and the
// requests for unsigned content that must be refused.
type loadWorld struct {
	images    []*loadImage
	indexes   int
	repos     []string
	probes    []string          // paths under /v2/ that must never be served
	blobs     map[v1.Hash]int64 // the signed images' distinct blobs and their lengths
	blobBytes int64
}

// loadImage is one signed tag: its manifest (or index) and, per platform,
// what a client pulls.
type loadImage struct {
	repo, tag string
	top       loadBlob    // what the tag is signed as
	platforms []*loadPull // one for an image, one per platform for an index
}

// loadPull is one image manifest and the blobs it names.
type loadPull struct {
	manifest loadBlob
	blobs    []loadBlob
}

type loadBlob struct {
	digest v1.Hash
	size   int64
}

// newLoadWorld pushes n signed images to p's upstream, five tags per
// repository (load/app-N), every fourth image a linux/amd64 and
// linux/arm64/v8 index, and signs each repository's tags at once as alice
// in targets/releases, pinning its root in p. In each repository it also
// pushes an unsigned image as "unsigned", and moves the first signed tag to
// another unsigned image after signing.
func newLoadWorld(t *testing.T, p *processes, n int) *loadWorld {
	t.Helper()
	w := &loadWorld{blobs: map[v1.Hash]int64{}}
	reg := p.env.Registry
	targets := map[string]map[string]testenv.Target{}
	for i := range n {
		repo := fmt.Sprintf("load/app-%d", i/5)
		if len(w.repos) == 0 || w.repos[len(w.repos)-1] != repo {
			w.repos = append(w.repos, repo)
			targets[repo] = map[string]testenv.Target{}
		}
		im := &loadImage{repo: repo, tag: fmt.Sprintf("v%d", i)}
		seed := fmt.Sprintf("load %d", i)
		size := int64(64<<10 + (i*5%12)*(128<<10)) // 64 KiB to 1.4 MiB: in-memory and spooled fills
		var m partial.WithRawManifest
		if i%4 == 3 {
			amd, arm := testenv.RawImageFor(t, seed, "linux/amd64", 2, size), testenv.RawImageFor(t, seed, "linux/arm64/v8", 2, size/2)
			idx := testenv.Index(t, amd, arm)
			reg.PushIndex(t, repo, im.tag, idx)
			im.platforms = []*loadPull{w.describe(t, amd), w.describe(t, arm)}
			m = idx
			w.indexes++
		} else {
			img := testenv.RawImage(t, seed, 2, size)
			reg.Push(t, repo, im.tag, img)
			im.platforms = []*loadPull{w.describe(t, img)}
			m = img
		}
		im.top = rawBlob(t, m)
		targets[repo][im.tag] = testenv.Target{Digest: im.top.digest, Size: im.top.size}
		w.images = append(w.images, im)
	}
	for _, repo := range w.repos {
		p.pins["docker.io/"+repo] = p.env.Notary.Publish(t, "docker.io/"+repo, p.alice, targets[repo])
		unsigned := testenv.RawImage(t, "unsigned "+repo, 1, 32<<10)
		moved := testenv.RawImage(t, "moved "+repo, 1, 32<<10)
		reg.Push(t, repo, "unsigned", unsigned)
		var first string
		for tag := range targets[repo] {
			if first == "" || tag < first {
				first = tag
			}
		}
		reg.Push(t, repo, first, moved) // the upstream moves a signed tag
		w.probes = append(w.probes, repo+"/manifests/unsigned")
		for _, img := range []v1.Image{unsigned, moved} {
			d := rawBlob(t, img)
			layers, err := img.Layers()
			if err != nil {
				t.Fatal(err)
			}
			ld, err := layers[0].Digest()
			if err != nil {
				t.Fatal(err)
			}
			w.probes = append(w.probes, repo+"/manifests/"+d.digest.String(), repo+"/blobs/"+ld.String())
		}
	}
	for _, size := range w.blobs {
		w.blobBytes += size
	}
	return w
}

// describe is img's manifest and blobs; it adds the blobs to w.blobs.
func (w *loadWorld) describe(t *testing.T, img v1.Image) *loadPull {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	lp := &loadPull{manifest: rawBlob(t, img)}
	for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
		lp.blobs = append(lp.blobs, loadBlob{d.Digest, d.Size})
		w.blobs[d.Digest] = d.Size
	}
	return lp
}

func rawBlob(t *testing.T, m partial.WithRawManifest) loadBlob {
	t.Helper()
	raw, err := m.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(raw)
	return loadBlob{v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}, int64(len(raw))}
}

// committed counts the distinct blobs in the shared storage.
func (w *loadWorld) committed(storage string) int {
	n := 0
	for d := range w.blobs {
		if stored(storage, d) {
			n++
		}
	}
	return n
}

func stored(storage string, d v1.Hash) bool {
	_, err := os.Stat(filepath.Join(storage, "docker", "registry", "v2", "blobs", d.Algorithm, d.Hex[:2], d.Hex, "data"))
	return err == nil
}

// inFlight counts the blobs the upstream was asked for that are not in the
// shared storage yet, and their bytes: the fills under way.
func (w *loadWorld) inFlight(reg *testenv.Registry, storage string) (n int, bytes int64) {
	for d, size := range w.blobs {
		if reg.BlobGets(d) > 0 && !stored(storage, d) {
			n, bytes = n+1, bytes+size
		}
	}
	return n, bytes
}

// replicaURLs are the replicas' URLs as a load balancer has them: a
// restarted replica is at another address.
type replicaURLs struct {
	mu   sync.Mutex
	urls []string
	dead string // the URL of the replica killed
}

func (u *replicaURLs) died(url string) {
	u.mu.Lock()
	u.dead = url
	u.mu.Unlock()
}

func (u *replicaURLs) isDead(url string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return url == u.dead
}

func (u *replicaURLs) set(i int, url string) {
	u.mu.Lock()
	u.urls[i] = url
	u.mu.Unlock()
}

// pick is a replica's URL other than not's (when there is another).
func (u *replicaURLs) pick(rng *rand.Rand, not string) string {
	u.mu.Lock()
	defer u.mu.Unlock()
	for {
		if url := u.urls[rng.IntN(len(u.urls))]; url != not || len(u.urls) == 1 {
			return url
		}
	}
}

// loadStats is what TestLoad's clients saw.
type loadStats struct {
	pulls, retried, incomplete  atomic.Int64
	failedDead, failedLive      atomic.Int64 // failed attempts through the killed replica, through the others
	probes, refused, unverified atomic.Int64

	mu      sync.Mutex
	took    []time.Duration
	errs    []string // the first few failed attempts through a live replica
	badness []string // the first few unverified responses
}

func (s *loadStats) pulled(d time.Duration) {
	s.pulls.Add(1)
	s.mu.Lock()
	s.took = append(s.took, d)
	s.mu.Unlock()
}

func (s *loadStats) note(list *[]string, msg string) {
	s.mu.Lock()
	if len(*list) < 5 {
		*list = append(*list, msg)
	}
	s.mu.Unlock()
}

// latencies returns the q-quantile of the completed pulls' durations.
func (s *loadStats) latencies() func(q float64) time.Duration {
	s.mu.Lock()
	took := slices.Clone(s.took)
	s.mu.Unlock()
	slices.Sort(took)
	return func(q float64) time.Duration {
		if len(took) == 0 {
			return 0
		}
		return took[min(len(took)-1, int(q*float64(len(took))))]
	}
}

func (s *loadStats) examples() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, e := range s.errs {
		out = append(out, "failed attempt through a live replica: "+e)
	}
	for _, e := range s.badness {
		out = append(out, "UNVERIFIED: "+e)
	}
	return out
}

// loadAttempts is how many replicas a pull is tried on before its client
// gives up: enough to outlast a replica's restart and a Redis failover.
const loadAttempts = 20

// client pulls random signed images through random replicas until end, one
// request in ten asking for unsigned content instead. A pull that fails is
// retried through another replica; a client that exhausts loadAttempts on
// one pull stops, incomplete.
func (w *loadWorld) client(ctx context.Context, hc *http.Client, urls *replicaURLs, st *loadStats, seed uint64, end time.Time) {
	rng := rand.New(rand.NewPCG(seed, 0x10ad))
	h, buf := sha256.New(), make([]byte, 64<<10)
	for time.Now().Before(end) {
		if rng.IntN(10) == 0 {
			st.probes.Add(1)
			path := w.probes[rng.IntN(len(w.probes))]
			// Refused is any answer but a 200, a replica being down included.
			if status, _ := loadGet(ctx, hc, urls.pick(rng, ""), path, loadBlob{}, h, buf); status == http.StatusOK {
				st.unverified.Add(1)
				st.note(&st.badness, fmt.Sprintf("GET %s: 200 for unsigned content", path))
			} else {
				st.refused.Add(1)
			}
			continue
		}
		im := w.images[rng.IntN(len(w.images))]
		plat := im.platforms[rng.IntN(len(im.platforms))]
		began, url := time.Now(), ""
		for attempt := 1; ; attempt++ {
			url = urls.pick(rng, url)
			err := w.pull(ctx, hc, url, im, plat, h, buf)
			if err == nil {
				st.pulled(time.Since(began))
				if attempt > 1 {
					st.retried.Add(1)
				}
				break
			}
			if errors.Is(err, errUnverified) {
				st.unverified.Add(1)
				st.note(&st.badness, err.Error())
				return
			}
			if urls.isDead(url) {
				st.failedDead.Add(1)
			} else {
				st.failedLive.Add(1)
				st.note(&st.errs, err.Error())
			}
			if attempt == loadAttempts || ctx.Err() != nil {
				st.incomplete.Add(1)
				return
			}
			time.Sleep(time.Duration(min(attempt, 10)) * 100 * time.Millisecond)
		}
	}
}

// errUnverified marks a response that delivered content other than what was
// signed: a whole 200 body of the wrong length or digest.
var errUnverified = errors.New("unverified content served")

// loadAccept is what a client that pulls multi-platform images accepts.
const loadAccept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, " +
	"application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"

// pull pulls im by tag from base as a client does, checking every body:
// the tag's manifest (an index: then plat's manifest by digest), then
// plat's config and layers.
func (w *loadWorld) pull(ctx context.Context, hc *http.Client, base string, im *loadImage, plat *loadPull, h hash.Hash, buf []byte) error {
	get := func(path string, want loadBlob) error {
		_, err := loadGet(ctx, hc, base, im.repo+path, want, h, buf)
		return err
	}
	if err := get("/manifests/"+im.tag, im.top); err != nil {
		return err
	}
	if len(im.platforms) > 1 {
		if err := get("/manifests/"+plat.manifest.digest.String(), plat.manifest); err != nil {
			return err
		}
	}
	for _, b := range plat.blobs {
		if err := get("/blobs/"+b.digest.String(), b); err != nil {
			return err
		}
	}
	return nil
}

// loadGet GETs base/v2/path and checks that a 200's body is want (when
// want has a digest). It returns the status (0 when none arrived); an
// error wraps errUnverified when a whole 200 body was not want.
func loadGet(ctx context.Context, hc *http.Client, base, path string, want loadBlob, h hash.Hash, buf []byte) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v2/"+path, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept", loadAccept)
	resp, err := hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("GET %s from %s: %w", path, base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return resp.StatusCode, fmt.Errorf("GET %s from %s: %s: %s", path, base, resp.Status, b)
	}
	h.Reset()
	n, err := io.CopyBuffer(h, resp.Body, buf)
	if err != nil {
		return resp.StatusCode, fmt.Errorf("GET %s from %s: cut after %d bytes: %w", path, base, n, err)
	}
	if want.digest.Hex == "" {
		return resp.StatusCode, nil
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != want.size || got != want.digest.Hex {
		return resp.StatusCode, fmt.Errorf("GET %s from %s: %d bytes hashing to sha256:%s, signed %d bytes %s: %w", path, base, n, got, want.size, want.digest, errUnverified)
	}
	return resp.StatusCode, nil
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }
