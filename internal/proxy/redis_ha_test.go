package proxy_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// floorTag is the hash tag of gun's trust floor keys on Redis: one Cluster
// slot holds all its roles.
func floorTag(gun string) string {
	sum := sha256.Sum256([]byte(gun))
	return "{" + hex.EncodeToString(sum[:16]) + "}"
}

// pullsThroughFailover has two replicas of d pull the signed
// library/app:v1, and ask for the unsigned v2, without pause while kill
// takes the Redis master down and waits for the failover. Every signed
// pull must succeed and every unsigned request be refused, before, during
// and after; afterwards both replicas are on Redis again (ready "ok"),
// and the shared floor works there: a rollback seen by one replica is
// refused by a fresh one.
func pullsThroughFailover(t *testing.T, d *testenv.Deployment, kill func()) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "v1")
	w.Registry.Push(t, "library/app", "v2", testenv.Image(t, "unsigned", 1, 1024))
	replicas := []*instance{w.replica(t, d, t.TempDir(), time.Nanosecond), w.replica(t, d, t.TempDir(), time.Nanosecond)}
	for _, r := range replicas {
		r.mustPull(t, "library/app:v1")
	}

	var stop atomic.Bool
	var pulls, failed, served atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for i, r := range replicas {
		wg.Go(func() {
			for !stop.Load() {
				pulls.Add(1)
				if _, err := r.pull(t, "library/app:v1"); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("replica %d: %v", i, err))
				}
				if status, _, body := r.get(t, http.MethodGet, "/v2/library/app/manifests/v2"); status != http.StatusNotFound {
					served.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("replica %d, unsigned v2: %d %.200s", i, status, body))
				}
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	killed := time.Now()
	kill()
	t.Logf("redis failed over %s after the master's kill", time.Since(killed).Round(time.Millisecond))
	back := map[int]time.Duration{}
	for deadline := time.Now().Add(20 * time.Second); len(back) < len(replicas); time.Sleep(50 * time.Millisecond) {
		for i, r := range replicas {
			if _, ok := back[i]; !ok && r.proxy.Readiness(t.Context()).Status == "ok" && r.gauge(t, "trustproxy_redis_degraded") == 0 {
				back[i] = time.Since(killed)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("replicas not back on redis 20s after the failover: %v", back)
		}
	}
	time.Sleep(300 * time.Millisecond) // pulls on Redis again
	stop.Store(true)
	wg.Wait()
	t.Logf("%d pulls during the failover, %d failed; replicas back on redis after %v", pulls.Load(), failed.Load(), back)
	if failed.Load() > 0 || served.Load() > 0 {
		t.Fatalf("%d signed pulls failed, %d unsigned served, during the failover; first: %v", failed.Load(), served.Load(), firstErr.Load())
	}

	// The shared floor after the failover: replica 0 sees newer metadata,
	// the Notary server then replays the older; a fresh replica refuses it.
	old := w.Notary.Record(t, gun)
	w.pushSigned(t, "library/app", "v3", "v3")
	replicas[0].mustPull(t, "library/app:v3")
	// Had that floor write outlived redis.timeout (a loaded machine), it
	// is on replica 0's disk only, and replica 0 keeps off Redis for a few
	// seconds: its next pull once it is back pushes the newer floor up.
	waitOnRedis(t, replicas[0], "replica 0")
	replicas[0].mustPull(t, "library/app:v3")
	w.Notary.Replay(gun, old)
	fresh := w.replica(t, d, t.TempDir(), time.Nanosecond)
	// A first Redis call outliving redis.timeout (a loaded machine) keeps a
	// fresh replica off Redis for a few seconds, when it refuses what it
	// never verified (trust_unavailable): what is tested here is the shared
	// floor, so ask once it is on Redis.
	waitOnRedis(t, fresh, "the fresh replica")
	status, body := getPastRedisRefusals(t, fresh, "/v2/library/app/manifests/v1")
	if status == http.StatusOK {
		t.Logf("redis now:\n%s", d.Describe("*tuf:"+floorTag(gun)+":*"))
	}
	wantDenied(t, status, body, proxy.Reason(trust.Rollback))
}

// getPastRedisRefusals GETs path from fresh replica r, again while it
// refuses it for Redis not answering (trust_unavailable: a Redis call that
// outlived redis.timeout on a loaded machine), at most 20 s; anything else
// it answers, a 200 included, is returned at once.
func getPastRedisRefusals(t *testing.T, r *instance, path string) (int, []byte) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		status, _, body := r.get(t, http.MethodGet, path)
		if status != http.StatusForbidden || !strings.Contains(string(body), "("+string(trust.TrustUnavailable)+"): redis is unreachable") || time.Now().After(deadline) {
			return status, body
		}
		t.Logf("the fresh replica refused for redis not answering; asking again: %.200s", body)
	}
}

// waitOnRedis waits until replica r uses Redis (trustproxy_redis_degraded
// 0): a Redis call that outlived redis.timeout (a loaded machine, a
// client that asked a Sentinel not yet told of a failover) keeps a replica
// off Redis for a few seconds.
func waitOnRedis(t *testing.T, r *instance, name string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); r.gauge(t, "trustproxy_redis_degraded") != 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s not on redis after 20s", name)
		}
	}
}

// TestSentinelFailoverUnderPulls: replicas on a Sentinel-managed Redis keep
// serving signed content, and keep refusing unsigned content, while the
// master is SIGKILLed and the Sentinels promote a replica; then they use
// the new master.
func TestSentinelFailoverUnderPulls(t *testing.T) {
	s := testenv.StartSentinelAuth(t, "sentinel-secret", "the-sentinels-own")
	// The Sentinels take commands only after AUTH with their own password
	// (redis.sentinel_password_file): anyone else could name a master.
	anon := redis.NewSentinelClient(&redis.Options{Addr: s.Addrs()[0]})
	if _, err := anon.GetMasterAddrByName(t.Context(), testenv.SentinelMaster).Result(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Fatalf("a Sentinel answered without its password: %v", err)
	}
	anon.Close()
	pullsThroughFailover(t, testenv.NewSentinelDeployment(t, s), func() {
		m := s.Master()
		m.Kill()
		s.WaitFailover(m)
	})
}

// TestClusterFailoverUnderPulls: as TestSentinelFailoverUnderPulls on a
// Redis Cluster, killing the master of the slot that holds the GUN's trust
// floor.
func TestClusterFailoverUnderPulls(t *testing.T) {
	c := testenv.StartCluster(t, "cluster-secret")
	pullsThroughFailover(t, testenv.NewClusterDeployment(t, c), func() {
		c.MasterOf(floorTag(gun)).Kill()
		c.WaitHealthy()
	})
}

// TestFloorWriteSurvivesMasterKill: a trust floor write is not lost when
// the Redis master dies right after it. The Redis replicas are paused
// (SIGSTOP) while replica A pulls the newest metadata, and resumed 2 s
// later; the master is SIGKILLed the moment A's pull returns. With
// redis.floor_replicas the floor write waits for a Redis replica (WAIT):
// A's pull cannot return before the replicas resumed and acknowledged it
// (without the wait it returns within a few hundred ms, and the test
// fails there). The Sentinels then promote a replica that has it, and a
// fresh trustproxy replica refuses the older metadata the Notary server
// replays.
//
// What this cannot show deterministically on one machine is the loss
// without WAIT: a paused replica's kernel still receives and buffers the
// replication stream, which it reads on resuming, so the write survives
// anyway here. Losing it takes a master cut off from its replicas while
// it still takes writes (a network partition), then killed.
func TestFloorWriteSurvivesMasterKill(t *testing.T) {
	s := testenv.StartSentinel(t, "")
	d := testenv.NewSentinelDeployment(t, s)
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "v1")
	old := w.Notary.Record(t, gun)
	w.pushSigned(t, "library/app", "v2", "v2")
	fields := []string{"floor_replicas: 1", "floor_wait: 10s"}
	a := start(t, w.replicaConfig(t, d, t.TempDir(), time.Nanosecond, fields...))

	master, paused := s.Master(), s.Replicas()
	for _, r := range paused {
		r.Pause()
	}
	const pause = 2 * time.Second
	resumed := time.AfterFunc(pause, func() {
		for _, r := range paused {
			r.Resume()
		}
	})
	t.Cleanup(func() {
		if resumed.Stop() {
			for _, r := range paused {
				r.Resume()
			}
		}
	})
	began := time.Now()
	a.mustPull(t, "library/app:v2")
	took := time.Since(began)
	master.Kill()
	t.Logf("A's pull took %s with the redis replicas paused for %s", took.Round(time.Millisecond), pause)
	if took < pause {
		t.Fatalf("A's pull returned after %s, before any Redis replica could have its trust floor (paused for %s): the floor write did not wait for a replica", took, pause)
	}
	s.WaitFailover(master)

	w.Notary.Replay(gun, old)
	b := start(t, w.replicaConfig(t, d, t.TempDir(), time.Nanosecond, fields...))
	waitOnRedis(t, b, "the fresh replica") // what is tested is the floor on Redis
	status, body := getPastRedisRefusals(t, b, "/v2/library/app/manifests/v1")
	if status == http.StatusOK {
		t.Logf("redis now:\n%s", d.Describe("*tuf:"+floorTag(gun)+":*"))
		t.Fatal("a fresh replica accepted the older metadata: the floor A wrote was lost in the failover")
	}
	wantDenied(t, status, body, proxy.Reason(trust.Rollback))
}

// TestFloorUnreplicatedCounted: with redis.floor_replicas set and no Redis
// replica to acknowledge (a single node), a floor write waits
// redis.floor_wait, is counted in trustproxy_redis_floor_unreplicated_total,
// and the pull it belongs to is still served: the floor stays on the master
// and on the replica's own disk.
func TestFloorUnreplicatedCounted(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "v1")
	d := testenv.NewDeployment(t, testenv.StartRedis(t, ""))
	a := start(t, w.replicaConfig(t, d, t.TempDir(), time.Nanosecond, "floor_replicas: 1", "floor_wait: 50ms"))
	a.mustPull(t, "library/app:v1")
	if n := a.counter(t, "trustproxy_redis_floor_unreplicated_total", "", ""); n < 1 {
		t.Errorf("trustproxy_redis_floor_unreplicated_total = %v after floor writes no Redis replica acknowledged, want at least 1", n)
	}
}

// TestRedisOutageBoundsRequests: while Redis hangs (a listener that
// accepts and never answers) and then while it is stopped, signed pulls on
// every replica complete and unsigned ones are refused, and no pull waits
// on Redis anywhere near go-redis's socket timeouts: none takes 1.5 s
// longer than the slowest pull of the same run with Redis up (a bound
// relative to the machine's load; the figures are logged). Before
// redis.timeout bounded each call, the first requests of a hang waited 2 s
// or more each on Redis alone.
func TestRedisOutageBoundsRequests(t *testing.T) {
	w := newWorld(t)
	r := testenv.StartRedis(t, "")
	front := testenv.NewFront(t, r.Addr())
	d := testenv.NewDeployment(t, r).Through(front.Addr())
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "v1")
	w.Registry.Push(t, "library/app", "v2", testenv.Image(t, "unsigned", 1, 1024))
	replicas := []*instance{w.replica(t, d, t.TempDir(), time.Nanosecond), w.replica(t, d, t.TempDir(), time.Nanosecond)}
	for _, p := range replicas {
		p.mustPull(t, "library/app:v1")
	}
	var bound time.Duration
	phase := func(name string, dur time.Duration) {
		t.Helper()
		var mu sync.Mutex
		var took []time.Duration
		var errs []string
		end := time.Now().Add(dur)
		var wg sync.WaitGroup
		for i := range 4 {
			p := replicas[i%2]
			wg.Go(func() {
				for time.Now().Before(end) {
					began := time.Now()
					_, err := p.pull(t, "library/app:v1")
					d := time.Since(began)
					status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v2")
					mu.Lock()
					took = append(took, d)
					if err != nil {
						errs = append(errs, err.Error())
					}
					if status != http.StatusNotFound {
						errs = append(errs, fmt.Sprintf("unsigned v2: %d %.200s", status, body))
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		slices.Sort(took)
		q := func(f float64) time.Duration {
			return took[min(len(took)-1, int(f*float64(len(took))))].Round(time.Millisecond)
		}
		t.Logf("redis %s: %d signed pulls, p50 %s, p99 %s, max %s", name, len(took), q(0.5), q(0.99), took[len(took)-1].Round(time.Millisecond))
		if len(errs) > 0 {
			t.Fatalf("redis %s: %d failures, first: %s", name, len(errs), errs[0])
		}
		if bound == 0 {
			bound = took[len(took)-1] + 1500*time.Millisecond
			return
		}
		if max := took[len(took)-1]; max >= bound {
			t.Fatalf("redis %s: a signed pull took %s, over the slowest with redis up plus 1.5s (%s)", name, max, bound)
		}
	}
	phase("up", 3*time.Second)
	front.Hang()
	phase("hanging", 6*time.Second) // past one 5 s pause, so Redis is asked again meanwhile
	for i, p := range replicas {
		if got := p.proxy.Readiness(t.Context()).Status; !strings.HasPrefix(got, "degraded") {
			t.Fatalf("replica %d ready %q with redis hanging", i, got)
		}
	}
	front.Close()
	phase("stopped", 6*time.Second)
}

// TestEveryKeyUnderPrefix: after a busy run (verified pulls, a scan, cold
// fills shared between replicas, refusals of made-up and unsigned
// content, a retention collection), every key on Redis starts with
// redis.key_prefix: trustproxy can share a Redis with others (distribution's
// blob descriptor cache is not on Redis at all).
func TestEveryKeyUnderPrefix(t *testing.T) {
	w := newScanWorld(t)
	d := testenv.NewDeployment(t, testenv.StartRedis(t, ""))
	const prefix = "tp-keys:"
	w.signedImage(t, "v1")
	w.Registry.Push(t, "library/app", "unsigned", testenv.Image(t, "unsigned", 1, 1024))
	replica := func() *instance {
		return w.startWith(t, "scan: {missing: wait, wait: 20s}", func(url string) string {
			return d.YAML("key_prefix: "+prefix, "replica_url: "+url) + scanners(url, "test-adapter", w.scanner.URL()) + retentionConfig
		})
	}
	a, b := replica(), replica()
	for _, r := range []*instance{a, b} {
		r.mustPull(t, "library/app:v1")
		status, _, body := r.get(t, http.MethodGet, "/v2/library/app/manifests/unsigned")
		wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned))
		status, _, body = r.get(t, http.MethodGet, "/v2/made-up/repo/manifests/latest")
		wantDenied(t, status, body, proxy.Reason(trust.NoTrustData))
	}
	if _, err := a.retention.Collect(t.Context()); err != nil {
		t.Fatalf("collect: %v", err)
	}
	keys, err := d.Client(t).Keys(t.Context(), "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for _, k := range keys {
		if !strings.HasPrefix(k, prefix) {
			t.Errorf("key %q is not under the prefix %q", k, prefix)
			continue
		}
		kind, _, _ := strings.Cut(strings.TrimPrefix(k, prefix), ":")
		kinds[kind] = true
	}
	for _, want := range []string{"tuf", "refs", "parents", "scan", "refusal", "verdict", "retention"} {
		if !kinds[want] {
			t.Errorf("no %s key after the run (the run no longer covers it): %v", want, keys)
		}
	}
	t.Logf("%d keys, all under %q: %v", len(keys), prefix, slices.Sorted(func(yield func(string) bool) {
		for k := range kinds {
			if !yield(k) {
				return
			}
		}
	}))
}

// TestFlushedRedisStillAuthenticates: after FLUSHALL, a replica started
// before the flush and one started after still accept each other's scan
// credentials and fill tokens: both are derived from the state key, not
// kept on Redis.
func TestFlushedRedisStillAuthenticates(t *testing.T) {
	t.Run("scan credentials", func(t *testing.T) {
		w := newScanWorld(t)
		d := testenv.NewDeployment(t, testenv.StartRedis(t, ""))
		signed := w.signedImage(t, "v1")
		replica := func(registryURL func(own string) string) *instance {
			return w.startWith(t, "scan: {missing: wait, wait: 20s}", func(url string) string {
				return d.YAML() + scanners(registryURL(url), "test-adapter", w.scanner.URL())
			})
		}
		before := replica(func(own string) string { return own })
		if err := d.Client(t).FlushAll(t.Context()).Err(); err != nil {
			t.Fatal(err)
		}
		after := replica(func(string) string { return before.srv.URL })
		after.mustPull(t, "library/app:v1") // its scanner pulls from the replica started before the flush
		pulls := w.scanner.Pulls()
		if len(pulls) != 2 || pulls[0].Status != 200 || pulls[1].Status != 200 {
			t.Fatalf("the scanner's pulls, with a credential minted after the flush, from a replica started before: %+v", pulls)
		}
		if n := w.scanner.ScanRequests(signed); n != 1 {
			t.Fatalf("%d scans, want 1", n)
		}
	})
	t.Run("fill tokens", func(t *testing.T) {
		w := newWorld(t)
		layer := signedLayer(t, w, "flush", 1<<20)
		up := upstreamFront(t, w, layer.String(), 1500*time.Millisecond, nil)
		d := testenv.NewDeployment(t, testenv.StartRedis(t, ""))
		holder := w.peer(t, d, up.URL, func(own string) string { return own })
		if err := d.Client(t).FlushAll(t.Context()).Err(); err != nil {
			t.Fatal(err)
		}
		follower := w.peer(t, d, up.URL, func(own string) string { return own })
		for _, r := range []*instance{holder, follower} {
			if status, _, body := r.get(t, http.MethodGet, "/v2/library/app/manifests/v1"); status != 200 {
				t.Fatalf("manifest: %d %s", status, body)
			}
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, _, _ = holder.get(t, http.MethodGet, "/v2/library/app/blobs/"+layer.String())
		}()
		time.Sleep(300 * time.Millisecond)
		status, _, body := follower.get(t, http.MethodGet, "/v2/library/app/blobs/"+layer.String())
		<-done
		if status != 200 || "sha256:"+fmt.Sprintf("%x", sha256.Sum256(body)) != layer.String() {
			t.Fatalf("the follower's blob: %d, %d bytes", status, len(body))
		}
		if n := w.Registry.BlobGets(layer); n != 1 {
			t.Fatalf("the upstream served the layer %d times, want 1: the holder started before the flush did not take the fill token of the follower started after", n)
		}
	})
}
