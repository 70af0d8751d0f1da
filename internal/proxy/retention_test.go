package proxy_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	goredis "github.com/redis/go-redis/v9"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/retention"
	"github.com/trustproxy/trustproxy/internal/testenv"
)

// retentionWorld is a world with two signed repositories whose images
// share a layer: library/app:v1 (pulled just now: live) and library/old:v1
// (pulled two hours ago, past max_age).
type retentionWorld struct {
	*world
	shared          v1.Hash   // the layer both images list
	live, old       v1.Hash   // the images' manifests
	liveOwn, oldOwn []v1.Hash // each image's config and own layer
	liveRef, oldRef string
}

// retentionConfig keeps content for an hour after its last pull.
const retentionConfig = "retention: {max_age: 1h}\n"

func newRetentionWorld(t *testing.T) *retentionWorld {
	t.Helper()
	w := &retentionWorld{world: newWorld(t), liveRef: "library/app:v1", oldRef: "library/old:v1"}
	w.initRepo(t, "docker.io/library/app", w.alice)
	w.initRepo(t, "docker.io/library/old", w.alice)
	base := testenv.Image(t, "retention shared", 1, 16<<10)
	image := func(repo, seed string) (v1.Hash, []v1.Hash) {
		own, err := testenv.Image(t, seed, 1, 8<<10).Layers()
		must(t, err)
		img, err := mutate.AppendLayers(base, own[0])
		must(t, err)
		d := w.Registry.Push(t, repo, "v1", img)
		w.Notary.SignImage(t, "docker.io/"+repo, "v1", img, testenv.Releases)
		cfg, err := img.ConfigName()
		must(t, err)
		ownDigest, err := own[0].Digest()
		must(t, err)
		return d, []v1.Hash{cfg, ownDigest}
	}
	w.live, w.liveOwn = image("library/app", "retention live")
	w.old, w.oldOwn = image("library/old", "retention old")
	layers, err := base.Layers()
	must(t, err)
	w.shared, err = layers[0].Digest()
	must(t, err)
	return w
}

// seed pulls the old image through a replica of its own (with extra, its
// storage and Redis configuration), makes everything stored two hours
// old (its pull records and blobs, as if the hours had passed), then pulls
// the live image through live.
func (w *retentionWorld) seed(t *testing.T, extra string, live *instance, storage string) {
	t.Helper()
	w.start(t, extra+retentionConfig).mustPull(t, w.oldRef)
	age(t, storage, 2*time.Hour)
	live.mustPull(t, w.liveRef)
}

// local is the configuration of replicas sharing storage without Redis,
// and the storage directory.
func local(t *testing.T) (string, string) {
	dir := t.TempDir()
	return "storage: {filesystem: {rootdirectory: " + dir + "}}\n", dir
}

// age makes the pull records and blobs in the filesystem storage at root
// by ago older: their times, and the time each record says.
func age(t *testing.T, root string, by time.Duration) {
	t.Helper()
	then := time.Now().Add(-by)
	must(t, filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		if strings.Contains(path, filepath.Join("trustproxy", "retention", "pulls")) {
			b, err := os.ReadFile(path)
			must(t, err)
			var r map[string]any
			must(t, json.Unmarshal(b, &r))
			r["pulled"] = then.UTC().Format(time.RFC3339Nano)
			b, _ = json.Marshal(r)
			must(t, os.WriteFile(path, b, 0o644))
		}
		return os.Chtimes(path, then, then)
	}))
}

// stored says which of ds are in p's storage.
func stored(t *testing.T, storage string, ds ...v1.Hash) map[v1.Hash]bool {
	t.Helper()
	out := map[v1.Hash]bool{}
	for _, d := range ds {
		_, err := os.Stat(filepath.Join(storage, "docker/registry/v2/blobs/sha256", d.Hex[:2], d.Hex, "data"))
		out[d] = err == nil
	}
	return out
}

// wantStored fails t unless every one of ds is stored (keep) or none is.
func wantStored(t *testing.T, storage string, keep bool, what string, ds ...v1.Hash) {
	t.Helper()
	for d, ok := range stored(t, storage, ds...) {
		if ok != keep {
			t.Errorf("%s %s: stored %v, want %v", what, d, ok, keep)
		}
	}
}

// A collection removes the expired image's manifest, config and own layer,
// with its repository's links, and keeps the layer it shares with a live
// image, and all of the live image; a pull of the expired image then
// succeeds, fetched again from the upstream.
func TestRetentionKeepsSharedBlobRemovesExpired(t *testing.T) {
	w := newRetentionWorld(t)
	extra, storage := local(t)
	p := w.start(t, extra+retentionConfig)
	w.seed(t, extra, p, storage)

	rep, err := p.retention.Collect(t.Context())
	if err != nil || rep.Skipped != "" {
		t.Fatalf("Collect: %+v, %v", rep, err)
	}
	wantStored(t, storage, true, "shared layer", w.shared)
	wantStored(t, storage, true, "live image", append(w.liveOwn, w.live)...)
	wantStored(t, storage, false, "expired image", append(w.oldOwn, w.old)...)
	if rep.Removed["manifest"] != 1 || rep.Removed["blob"] != 2 || rep.DryRun {
		t.Errorf("report %+v, want 1 manifest and 2 blobs removed", rep)
	}
	oldRepo := filepath.Join(storage, "docker/registry/v2/repositories/docker.io/library/old")
	for _, link := range []string{"_manifests/revisions/sha256/" + w.old.Hex, "_layers/sha256/" + w.oldOwn[1].Hex} {
		if _, err := os.Stat(filepath.Join(oldRepo, link)); err == nil {
			t.Errorf("link %s of the expired repository is still stored", link)
		}
	}
	if got := p.counter(t, "trustproxy_retention_removed_total", "kind", "blob"); got != 2 {
		t.Errorf("trustproxy_retention_removed_total{kind=blob} = %v, want 2", got)
	}
	if !strings.Contains(p.logs.String(), `"msg":"retention collected"`) {
		t.Errorf("no collection logged")
	}

	if got := p.mustPull(t, w.oldRef); got != w.old {
		t.Fatalf("pulled %s after collection, want %s", got, w.old)
	}
	wantStored(t, storage, true, "expired image pulled again", append(w.oldOwn, w.old)...)
}

// A dry run removes nothing and reports what a collection would remove.
func TestRetentionDryRun(t *testing.T) {
	w := newRetentionWorld(t)
	extra, storage := local(t)
	p := w.start(t, extra+"retention: {max_age: 1h, dry_run: true}\n")
	w.seed(t, extra, p, storage)
	rep, err := p.retention.Collect(t.Context())
	if err != nil || !rep.DryRun || rep.Removed["manifest"] != 1 || rep.Removed["blob"] != 2 {
		t.Fatalf("Collect: %+v, %v; want a dry run reporting 1 manifest and 2 blobs", rep, err)
	}
	wantStored(t, storage, true, "after a dry run", append(append(w.oldOwn, w.liveOwn...), w.old, w.live, w.shared)...)
	if !strings.Contains(p.logs.String(), "retention dry run") {
		t.Errorf("no dry run logged")
	}
	if got := p.counter(t, "trustproxy_retention_removed_total", "kind", "blob"); got != 0 {
		t.Errorf("trustproxy_retention_removed_total{kind=blob} = %v after a dry run, want 0", got)
	}
	if got := p.gauge(t, "trustproxy_retention_dry_run_bytes"); got <= 0 {
		t.Errorf("trustproxy_retention_dry_run_bytes = %v after a dry run that would remove 2 blobs", got)
	}
}

// A pull of the expired image between the collection's mark and its sweep
// succeeds, and the sweep, reading the pull records again, keeps it.
func TestRetentionPullDuringCollection(t *testing.T) {
	w := newRetentionWorld(t)
	extra, storage := local(t)
	p := w.start(t, extra+retentionConfig)
	w.seed(t, extra, p, storage)
	p.retention.AfterMark = func(context.Context) {
		if got := p.mustPull(t, w.oldRef); got != w.old {
			t.Errorf("pulled %s during collection, want %s", got, w.old)
		}
	}
	rep, err := p.retention.Collect(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	wantStored(t, storage, true, "image pulled during collection", append(append(w.oldOwn, w.liveOwn...), w.old, w.live, w.shared)...)
	if rep.Kept != 3 || rep.Removed["manifest"]+rep.Removed["blob"] != 0 {
		t.Errorf("report %+v, want the 3 chosen blobs kept at the last check", rep)
	}
}

// Blobs fetched by digest (no manifest pull, so nothing protects them)
// while the sweep removes them are each served whole: from storage, or,
// when removed between the stat and the read, from the upstream again.
func TestRetentionBlobRequestsDuringSweep(t *testing.T) {
	w := newRetentionWorld(t)
	extra, storage := local(t)
	p := w.start(t, extra+retentionConfig)
	w.seed(t, extra, p, storage)
	blobs := append(slices.Clone(w.oldOwn), w.shared)
	var wg sync.WaitGroup
	done := make(chan struct{})
	p.retention.AfterMark = func(context.Context) {
		for _, d := range blobs {
			wg.Go(func() {
				for n := 0; ; n++ {
					status, h, _ := p.get(t, http.MethodGet, "/v2/library/old/blobs/"+d.String())
					if status != http.StatusOK || h.Get("Docker-Content-Digest") != d.String() {
						t.Errorf("blob %s during collection: %d", d, status)
						return
					}
					select {
					case <-done:
						if n > 0 {
							return
						}
					default:
					}
				}
			})
		}
		time.Sleep(50 * time.Millisecond) // let the requests start before the sweep
	}
	rep, err := p.retention.Collect(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	close(done)
	wg.Wait()
	t.Logf("collection: %+v; upstream blob fetches: %v", rep, p.counter(t, "trustproxy_upstream_fetches_total", "kind", "blob"))
	wantStored(t, storage, true, "live image", append(w.liveOwn, w.live, w.shared)...)
}

// Two replicas sharing Redis and storage collect at once: one collects,
// the other skips and says so; the live image survives on both.
func TestRetentionTwoReplicasCollectOnce(t *testing.T) {
	w := newRetentionWorld(t)
	d := testenv.NewDeployment(t, testenv.StartRedis(t, ""))
	a := start(t, w.config(t, t.TempDir(), d.YAML()+retentionConfig))
	b := start(t, w.config(t, t.TempDir(), d.YAML()+retentionConfig))
	w.seed(t, d.YAML(), b, d.Storage)

	var second *retention.Report
	a.retention.AfterMark = func(ctx context.Context) {
		var err error
		if second, err = b.retention.Collect(ctx); err != nil {
			t.Errorf("replica b: %v", err)
		}
	}
	first, err := a.retention.Collect(t.Context())
	if err != nil || first.Skipped != "" {
		t.Fatalf("replica a: %+v, %v; want a collection", first, err)
	}
	if second == nil || second.Skipped != "another replica is collecting" {
		t.Fatalf("replica b during a's collection: %+v, want skipped", second)
	}
	if !strings.Contains(b.logs.String(), `"msg":"retention collection skipped"`) {
		t.Errorf("replica b logged no skip")
	}
	if got := b.counter(t, "trustproxy_retention_runs_total", "result", "skipped"); got != 1 {
		t.Errorf("replica b trustproxy_retention_runs_total{result=skipped} = %v, want 1", got)
	}
	// Within the interval after a's collection, b's timer skips too.
	if again, err := b.retention.Collect(t.Context()); err != nil || again.Skipped != "another replica collected recently" {
		t.Errorf("replica b after a's collection: %+v, %v; want skipped", again, err)
	}
	wantStored(t, d.Storage, true, "live image and shared layer", append(w.liveOwn, w.live, w.shared)...)
	wantStored(t, d.Storage, false, "expired image", append(w.oldOwn, w.old)...)
	if got := b.mustPull(t, w.oldRef); got != w.old {
		t.Fatalf("replica b pulled %s after collection, want %s", got, w.old)
	}
}

// A Redis writer cannot stop collections with a planted lock (not sealed,
// or of another type), and nothing it writes makes live content
// collectable: pull records are kept in storage, not on Redis.
func TestRetentionRedisWriter(t *testing.T) {
	w := newRetentionWorld(t)
	d := testenv.NewDeployment(t, testenv.StartRedis(t, ""))
	p := start(t, w.config(t, t.TempDir(), d.YAML()+retentionConfig))
	w.seed(t, d.YAML(), p, d.Storage)
	rdb := goredis.NewClient(&goredis.Options{Addr: d.Redis.Addr()})
	t.Cleanup(func() { rdb.Close() })
	ctx := t.Context()
	const key = "trustproxy:retention:lock"
	future, _ := json.Marshal(map[string]any{"owner": "mallory", "until": time.Now().Add(time.Hour), "done": true})
	must(t, rdb.Set(ctx, key, future, time.Hour).Err())
	// The writer also deletes every other entry it can see.
	keys, err := rdb.Keys(ctx, "trustproxy:*").Result()
	must(t, err)
	for _, k := range keys {
		if k != key {
			must(t, rdb.Del(ctx, k).Err())
		}
	}
	rep, err := p.retention.Collect(ctx)
	if err != nil || rep.Skipped != "" {
		t.Fatalf("Collect with a planted lock: %+v, %v; want a collection", rep, err)
	}
	wantStored(t, d.Storage, true, "live image and shared layer", append(w.liveOwn, w.live, w.shared)...)
	wantStored(t, d.Storage, false, "expired image", append(w.oldOwn, w.old)...)

	must(t, rdb.Del(ctx, key).Err())
	must(t, rdb.RPush(ctx, key, "not a lock").Err())
	if rep, err := p.retention.Collect(ctx); err != nil || rep.Skipped != "" {
		t.Fatalf("Collect with a list at the lock's key: %+v, %v; want a collection", rep, err)
	}
	if got := p.counter(t, "trustproxy_redis_rejected_total", "kind", "retention"); got < 2 {
		t.Errorf("trustproxy_redis_rejected_total{kind=retention} = %v, want at least 2", got)
	}
}

// counter reads the counter name with the label set to value (the first
// one when label is empty: an unlabelled counter).
func (p *instance) counter(t *testing.T, name, label, value string) float64 {
	t.Helper()
	mfs, err := p.metrics.Gather()
	must(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" {
				return m.GetCounter().GetValue()
			}
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// retentionBudgetWorld: library/app:a, :b and :c share a base layer and
// each have their own config and layer; all three were pulled, then a and b
// were unsigned (their tag moved away), so only c is a current signed
// target. a was last pulled 40 minutes ago and b 20, within max_age: only
// the size budget can remove them.
func retentionBudgetWorld(t *testing.T) (w *world, storage, extra string, own map[string][]v1.Hash, shared v1.Hash) {
	t.Helper()
	w = newWorld(t)
	w.initRepo(t, gun, w.alice)
	base := testenv.Image(t, "budget shared", 1, 16<<10)
	layers, err := base.Layers()
	must(t, err)
	shared, err = layers[0].Digest()
	must(t, err)
	own = map[string][]v1.Hash{}
	for _, tag := range []string{"a", "b", "c"} {
		l, err := testenv.Image(t, "budget "+tag, 1, 8<<10).Layers()
		must(t, err)
		img, err := mutate.AppendLayers(base, l[0])
		must(t, err)
		m := w.Registry.Push(t, "library/app", tag, img)
		w.Notary.SignImage(t, gun, tag, img, testenv.Releases)
		cfg, err := img.ConfigName()
		must(t, err)
		ld, err := l[0].Digest()
		must(t, err)
		own[tag] = []v1.Hash{m, cfg, ld}
	}
	extra, storage = local(t)
	p := w.start(t, extra+"retention: {max_age: 1h}\n")
	for _, tag := range []string{"a", "b", "c"} {
		p.mustPull(t, "library/app:"+tag)
	}
	w.Notary.Unsign(t, gun, "a", testenv.Releases)
	w.Notary.Unsign(t, gun, "b", testenv.Releases)
	age(t, storage, 50*time.Minute)
	pulledAgo(t, storage, own["a"][0], 40*time.Minute)
	pulledAgo(t, storage, own["b"][0], 20*time.Minute)
	pulledAgo(t, storage, own["c"][0], 0)
	return w, storage, extra, own, shared
}

// pulledAgo rewrites the pull records of manifest m in the filesystem
// storage at root to say it was last pulled ago.
func pulledAgo(t *testing.T, root string, m v1.Hash, ago time.Duration) {
	t.Helper()
	then := time.Now().Add(-ago)
	n := 0
	must(t, filepath.Walk(filepath.Join(root, "trustproxy", "retention", "pulls"), func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() || filepath.Base(path) != "sha256-"+m.Hex {
			return err
		}
		b, err := os.ReadFile(path)
		must(t, err)
		var r map[string]any
		must(t, json.Unmarshal(b, &r))
		r["pulled"] = then.UTC().Format(time.RFC3339Nano)
		b, _ = json.Marshal(r)
		must(t, os.WriteFile(path, b, 0o644))
		n++
		return os.Chtimes(path, then, then)
	}))
	if n == 0 {
		t.Fatalf("no pull record of %s", m)
	}
}

// blobBytes is the size of the stored blobs ds in the filesystem storage.
func blobBytes(t *testing.T, storage string, ds ...v1.Hash) int64 {
	t.Helper()
	var n int64
	for _, d := range ds {
		fi, err := os.Stat(filepath.Join(storage, "docker/registry/v2/blobs/sha256", d.Hex[:2], d.Hex, "data"))
		must(t, err)
		n += fi.Size()
	}
	return n
}

// Over max_bytes, the collector removes content no live repository's
// signed targets reference, least recently pulled first, until under the
// budget, though max_age would keep it; live content is never removed for
// the budget, and when it alone exceeds the budget the run says so.
func TestRetentionMaxBytes(t *testing.T) {
	w, storage, extra, own, shared := retentionBudgetWorld(t)
	all := append(append(append([]v1.Hash{shared}, own["a"]...), own["b"]...), own["c"]...)
	total := blobBytes(t, storage, all...)

	// A budget that removing a's content meets: b, pulled later, stays.
	budget := total - blobBytes(t, storage, own["a"]...)
	p := w.start(t, extra+"retention: {max_age: 1h, max_bytes: "+strconv.FormatInt(budget, 10)+"}\n")
	rep, err := p.retention.Collect(t.Context())
	if err != nil || rep.OverBudget || rep.Removed["manifest"] != 1 || rep.Removed["blob"] != 2 {
		t.Fatalf("Collect with max_bytes %d of %d stored: %+v, %v; want a's manifest, config and layer removed", budget, total, rep, err)
	}
	wantStored(t, storage, false, "a (unsigned, pulled 40 minutes ago)", own["a"]...)
	wantStored(t, storage, true, "b (unsigned, pulled 20 minutes ago) and c (signed)", append(append([]v1.Hash{shared}, own["b"]...), own["c"]...)...)

	// A budget below the live content: b goes, c and the shared layer stay,
	// and the run warns.
	p = w.start(t, extra+"retention: {max_age: 1h, max_bytes: 1}\n")
	rep, err = p.retention.Collect(t.Context())
	if err != nil || !rep.OverBudget || rep.Removed["manifest"] != 1 || rep.Removed["blob"] != 2 {
		t.Fatalf("Collect with max_bytes 1: %+v, %v; want b removed and the run over budget", rep, err)
	}
	wantStored(t, storage, false, "b under a budget below the live content", own["b"]...)
	wantStored(t, storage, true, "live content under a budget below it", append([]v1.Hash{shared}, own["c"]...)...)
	if !strings.Contains(p.logs.String(), "live content alone exceeds retention.max_bytes") {
		t.Errorf("no warning that live content exceeds the budget:\n%s", p.logs)
	}
	if got := p.mustPull(t, "library/app:c"); got != own["c"][0] {
		t.Fatalf("library/app:c after the collections: %s, want %s", got, own["c"][0])
	}
}

// When a live repository's trust data cannot be verified now (its Notary
// server down), the collector keeps everything stored for it, whatever the
// budget: also for an upstream named with a port, whose repositories are
// stored under gun.Name.StorageName (registry.example.com_5443/...), not
// under their GUN.
func TestRetentionKeepsAllWhenTrustUnavailable(t *testing.T) {
	for _, port := range []bool{false, true} {
		t.Run(map[bool]string{false: "docker.io", true: "port"}[port], func(t *testing.T) {
			w := newWorld(t)
			host, path := "docker.io", "library/app"
			if port {
				host, path = w.Registry.Host(), "team/app"
			}
			w.initRepo(t, host+"/"+path, w.alice)
			img := testenv.Image(t, "retention unverifiable", 1, 8<<10)
			signed := w.Registry.Push(t, path, "v1", img)
			w.Notary.SignImage(t, host+"/"+path, "v1", img, testenv.Releases)
			cfgName, err := img.ConfigName()
			must(t, err)
			layers, err := img.Layers()
			must(t, err)
			layer, err := layers[0].Digest()
			must(t, err)

			extra, storage := local(t)
			config := func() string {
				cfg := w.config(t, t.TempDir(), extra+"retention: {max_age: 1h, max_bytes: 1}\n")
				cfg = strings.Replace(cfg, "name: docker.io", "name: "+host, 1)
				return strings.Replace(cfg, `"docker.io/**"`, `"`+host+`/**"`, 1)
			}
			start(t, config()).mustPull(t, path+":v1")
			age(t, storage, 30*time.Minute) // pulled within max_age: live

			w.Notary.SetDown(true)
			t.Cleanup(func() { w.Notary.SetDown(false) })
			p := start(t, config()) // no trust data cached
			rep, err := p.retention.Collect(t.Context())
			if err != nil || rep.Skipped != "" {
				t.Fatalf("Collect: %+v, %v", rep, err)
			}
			wantStored(t, storage, true, "live repository whose trust data cannot be verified now", signed, cfgName, layer)
			if !strings.Contains(p.logs.String(), "keeping everything stored for a repository") {
				t.Errorf("no warning that everything of %s/%s is kept:\n%s", host, path, p.logs)
			}
		})
	}
}

// The collector judges repositories by the running configuration: after a
// reload that trusts a further signer, the targets that signer signed are
// live content, kept whatever the budget, as the proxy serves them.
func TestRetentionAfterReload(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.mallory)
	img := testenv.Image(t, "retention reload", 1, 8<<10)
	signed := w.Registry.Push(t, "library/app", "v1", img)
	w.Notary.SignImage(t, gun, "v1", img, testenv.Releases)
	cfgName, err := img.ConfigName()
	must(t, err)
	layers, err := img.Layers()
	must(t, err)
	layer, err := layers[0].Digest()
	must(t, err)

	extra, storage := local(t)
	before := w.config(t, t.TempDir(), extra+"retention: {max_age: 1h, max_bytes: 1}\n")
	p := start(t, before)
	if _, err := p.pull(t, "library/app:v1"); err == nil {
		t.Fatal("library/app:v1, signed by mallory, was served before mallory was trusted")
	}
	after := strings.Replace(before, "  rules:\n", "    - name: mallory\n      public_key: "+w.mallory.CertFile+"\n  rules:\n", 1)
	after = strings.Replace(after, "signers: [alice]", "signers: [alice, mallory]", 1)
	next, err := config.Load(strings.NewReader(after), nil)
	must(t, err)
	must(t, p.proxy.Reconfigure(next))
	if got := p.mustPull(t, "library/app:v1"); got != signed {
		t.Fatalf("library/app:v1 after the reload: %s, want %s", got, signed)
	}
	age(t, storage, 30*time.Minute) // pulled within max_age: live

	rep, err := p.retention.Collect(t.Context())
	if err != nil || rep.Skipped != "" {
		t.Fatalf("Collect: %+v, %v", rep, err)
	}
	wantStored(t, storage, true, "a target of the signer the reload trusts", signed, cfgName, layer)
	if got := p.mustPull(t, "library/app:v1"); got != signed {
		t.Fatalf("library/app:v1 after the collection: %s, want %s", got, signed)
	}
}

// TestRetentionCosignRule: under a cosign rule, which lists no signed
// digests to protect, a collection keeps what was pulled within max_age and
// removes what was pulled before it (with its own layers), though both
// images still carry valid signatures; the removed one is fetched again,
// and verified again, on its next pull.
func TestRetentionCosignRule(t *testing.T) {
	w := newWorld(t)
	ci := testenv.NewCosignKey(t, "ci")
	old := w.pushCosigned(t, "old", "retention cosign old", ci)
	live := w.pushCosigned(t, "live", "retention cosign live", ci)
	extra, storage := local(t)
	cfg := func() string { return w.cosignConfig(t, t.TempDir(), ci, cosignRule, extra+retentionConfig) }
	start(t, cfg()).mustPull(t, "library/app:old")
	age(t, storage, 2*time.Hour)
	p := start(t, cfg())
	p.mustPull(t, "library/app@"+live.String())

	rep, err := p.retention.Collect(t.Context())
	if err != nil || rep.Skipped != "" {
		t.Fatalf("Collect: %+v, %v", rep, err)
	}
	wantStored(t, storage, true, "image pulled within max_age", live, w.layerOf(t, live))
	wantStored(t, storage, false, "image pulled before max_age", old, w.layerOf(t, old))
	if got := p.mustPull(t, "library/app:old"); got != old {
		t.Fatalf("pulled %s after collection, want %s", got, old)
	}
	wantStored(t, storage, true, "the removed image pulled again", old, w.layerOf(t, old))
}
