package proxy_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	goredis "github.com/redis/go-redis/v9"

	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// TestRollbackRefusedAcrossReplicas: replica A has seen the newest trust
// metadata; the Notary server then serves older, still unexpired metadata.
// Replicas B and C, which never saw the newer version themselves, refuse
// it: the floor is shared on Redis. They still do after all three restart.
func TestRollbackRefusedAcrossReplicas(t *testing.T) {
	w := newWorld(t)
	d := testenv.NewDeployment(t, testenv.StartRedis(t, "replica-secret"))
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "v1")
	old := w.Notary.Record(t, gun)
	w.pushSigned(t, "library/app", "v2", "v2")
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	a := w.replica(t, d, dirs[0], time.Nanosecond)
	a.mustPull(t, "library/app:v2")

	w.Notary.Replay(gun, old)
	for round := range 2 {
		for i, dir := range dirs[1:] {
			r := w.replica(t, d, dir, time.Nanosecond)
			status, _, body := r.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
			if status != http.StatusForbidden {
				t.Fatalf("round %d, replica %c: the replayed older metadata was accepted: %d %s", round, 'B'+i, status, body)
			}
			wantDenied(t, status, body, proxy.Reason(trust.Rollback))
		}
	}
	// Without Redis, a fresh replica has no floor and would accept it: what the shared floor prevents.
	lone := start(t, w.config(t, t.TempDir(), ""))
	if status, _, _ := lone.get(t, http.MethodGet, "/v2/library/app/manifests/v1"); status != http.StatusOK {
		t.Fatalf("a replica without the shared floor: %d (the test no longer shows what Redis adds)", status)
	}
}

// signedOnRedis is a world whose library/app:v1 alice signed, and a
// deployment on one Redis node for its replicas to share.
func signedOnRedis(t *testing.T) (*world, *testenv.Deployment) {
	t.Helper()
	w := newWorld(t)
	d := testenv.NewDeployment(t, testenv.StartRedis(t, ""))
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "v1")
	return w, d
}

// TestRedisDownServesFromOwnFloor: Redis stops during traffic; signed pulls
// keep working on every replica, unsigned ones stay refused, /readyz says
// degraded and the gauge says so. Redis comes back (empty): the replicas
// use it again and no signed pull is refused.
func TestRedisDownServesFromOwnFloor(t *testing.T) {
	w, d := signedOnRedis(t)
	w.Registry.Push(t, "library/app", "v2", testenv.Image(t, "unsigned", 1, 1024))
	replicas := []*instance{
		w.replica(t, d, t.TempDir(), time.Nanosecond),
		w.replica(t, d, t.TempDir(), time.Nanosecond),
	}
	pullAll := func(when string) {
		t.Helper()
		for i, r := range replicas {
			if _, err := r.pull(t, "library/app:v1"); err != nil {
				t.Fatalf("%s, replica %d: signed pull: %v", when, i, err)
			}
			status, _, body := r.get(t, http.MethodGet, "/v2/library/app/manifests/v2")
			wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned))
		}
	}
	pullAll("redis up")
	d.Redis.Stop()
	pullAll("redis down")
	for i, r := range replicas {
		if got := r.proxy.Readiness(t.Context()).Status; !strings.HasPrefix(got, "degraded") {
			t.Fatalf("replica %d ready %q with redis down", i, got)
		}
		if g := r.gauge(t, "trustproxy_redis_degraded"); g != 1 {
			t.Fatalf("replica %d trustproxy_redis_degraded = %v", i, g)
		}
	}
	d.Redis.Start()
	back := time.Now()
	for deadline := back.Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		pullAll("redis back")
		if replicas[0].proxy.Readiness(t.Context()).Status == "ok" && replicas[1].proxy.Readiness(t.Context()).Status == "ok" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still degraded 15s after redis came back: %q", replicas[0].proxy.Readiness(t.Context()).Status)
		}
	}
	t.Logf("both replicas on the shared floor again %s after redis came back", time.Since(back).Round(time.Millisecond))
}

// TestFreshReplicaRefusesWhileRedisDown: a replica that has never
// verified a repository holds no rollback floor of its own for it; the
// floor the other replicas raised is on Redis alone. While Redis does not
// answer, such a replica refuses the repository trust_unavailable, both
// when Redis stops answering in the middle of its first update and when it
// is already known to be down, rather than take what the Notary server
// gives: here a replay of older metadata, which it served before. A
// replica that verified the repository before goes on on its own floor
// and refuses the replay. Once Redis answers again the fresh replica
// verifies: the refusal was not kept for refusal_ttl.
func TestFreshReplicaRefusesWhileRedisDown(t *testing.T) {
	w, d := signedOnRedis(t)
	old := w.Notary.Record(t, gun)
	w.pushSigned(t, "library/app", "v2", "v2")
	current := w.Notary.Record(t, gun)
	seen := w.replica(t, d, t.TempDir(), time.Nanosecond)
	seen.mustPull(t, "library/app:v2")
	fresh := w.replica(t, d, t.TempDir(), time.Nanosecond)

	d.Redis.Stop()
	w.Notary.Replay(gun, old)
	for _, when := range []string{"redis stops answering during the update", "redis known to be down"} {
		status, _, body := fresh.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
		if status == http.StatusOK {
			t.Fatalf("%s: a replica without a floor of its own served the replayed older metadata", when)
		}
		wantDenied(t, status, body, proxy.Reason(trust.TrustUnavailable))
		if !strings.Contains(string(body), "redis") {
			t.Fatalf("%s: the refusal does not say redis is the cause: %s", when, body)
		}
	}
	status, _, body := seen.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, proxy.Reason(trust.Rollback))

	w.Notary.Replay(gun, current)
	d.Redis.Start()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if _, err := fresh.pull(t, "library/app:v2"); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the fresh replica still refuses 15s after redis came back: %v", err)
		}
	}
}

// TestFloorWrittenWhileRedisDownPushedWhenBack: a replica that verifies
// newer trust data while Redis is down keeps that floor on its disk alone;
// when Redis answers again (here, restarted empty) it pushes the floor up
// at once, not at its next read of the repository, which may never come.
// A fresh replica then refuses the older metadata a trust server replays,
// though the replica that saw the newer never asked for it again.
func TestFloorWrittenWhileRedisDownPushedWhenBack(t *testing.T) {
	w, d := signedOnRedis(t)
	a := w.replica(t, d, t.TempDir(), time.Nanosecond)
	a.mustPull(t, "library/app:v1")
	old := w.Notary.Record(t, gun)
	w.pushSigned(t, "library/app", "v2", "v2")

	d.Redis.Stop()
	a.mustPull(t, "library/app:v2") // the newer floor, on a's disk alone
	if a.gauge(t, "trustproxy_redis_degraded") != 1 {
		t.Fatal("a does not say redis is down")
	}
	d.Redis.Start()
	waitOnRedis(t, a, "a")
	for deadline := time.Now().Add(10 * time.Second); a.counter(t, "trustproxy_redis_floor_pushed_total", "", "") < 1; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a did not push up the floor it wrote while redis was down, 10s after redis came back")
		}
	}

	w.Notary.Replay(gun, old)
	fresh := w.replica(t, d, t.TempDir(), time.Nanosecond)
	waitOnRedis(t, fresh, "the fresh replica")
	status, body := getPastRedisRefusals(t, fresh, "/v2/library/app/manifests/v1")
	if status == http.StatusOK {
		t.Fatal("a fresh replica accepted the older metadata: the floor written while redis was down never reached it")
	}
	wantDenied(t, status, body, proxy.Reason(trust.Rollback))
}

// TestSharedViewFloorServesWhileRedisDown: a replica that took another
// replica's verified view of a repository, and never verified it itself,
// holds that view's versions as its own floor; once the view is due again
// with Redis down it verifies on that floor and serves, as the replica
// that verified does.
func TestSharedViewFloorServesWhileRedisDown(t *testing.T) {
	w, d := signedOnRedis(t)
	const refresh = 2 * time.Second
	a, b := w.replica(t, d, t.TempDir(), refresh), w.replica(t, d, t.TempDir(), refresh)
	a.mustPull(t, "library/app:v1")
	asked := w.Notary.Requests("")
	b.mustPull(t, "library/app:v1")
	if n := w.Notary.Requests("") - asked; n != 0 {
		t.Fatalf("replica B asked the Notary server %d times for a view A verified, want 0", n)
	}
	d.Redis.Stop()
	time.Sleep(refresh + 500*time.Millisecond)
	b.mustPull(t, "library/app:v1")
	if n := w.Notary.Requests("") - asked; n == 0 {
		t.Fatal("replica B served without verifying again after its refresh_ttl")
	}
}

// TestScanSharedAcrossReplicas: replica A starts a scan whose scanner
// pulls from replica B (the load balancer's choice) with A's credential,
// which B accepts: the credential key is shared. B then serves the image
// on A's report, without a scan of its own.
func TestScanSharedAcrossReplicas(t *testing.T) {
	w := newScanWorld(t)
	d := testenv.NewDeployment(t, testenv.StartRedis(t, ""))
	signed := w.signedImage(t, "v1")
	replica := func(registryURL func(own string) string) *instance {
		return w.startWith(t, "scan: {missing: wait, wait: 20s}", func(url string) string {
			return d.YAML() + scanners(registryURL(url), "test-adapter", w.scanner.URL())
		})
	}
	b := replica(func(own string) string { return own })
	a := replica(func(string) string { return b.srv.URL })
	a.mustPull(t, "library/app:v1")
	pulls := w.scanner.Pulls()
	if len(pulls) != 2 || pulls[0].Status != 200 || pulls[1].Status != 200 {
		t.Fatalf("the scanner's pulls from replica B with replica A's credential: %+v", pulls)
	}
	b.mustPull(t, "library/app:v1")
	if n := w.scanner.ScanRequests(signed); n != 1 {
		t.Fatalf("%d scans for two replicas, want 1 (the report is shared)", n)
	}
}

// TestRevokedTagStopsOnEveryReplica: a tag its signer revokes stops being
// served by every replica within trust.refresh_ttl.
func TestRevokedTagStopsOnEveryReplica(t *testing.T) {
	w, d := signedOnRedis(t)
	const ttl = 2 * time.Second
	var replicas []*instance
	for range 3 {
		replicas = append(replicas, w.replica(t, d, t.TempDir(), ttl))
	}
	for _, r := range replicas {
		r.mustPull(t, "library/app:v1")
	}
	w.Notary.Unsign(t, gun, "v1", testenv.Releases)
	revoked := time.Now()
	time.Sleep(ttl + 100*time.Millisecond)
	for i, r := range replicas {
		status, _, body := r.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
		if status != http.StatusNotFound {
			t.Fatalf("replica %d still serves the revoked tag %s after revocation (refresh_ttl %s): %d %s", i, time.Since(revoked).Round(time.Millisecond), ttl, status, body)
		}
		wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned))
	}
}

// TestRedisOverTLSWithPassword: the shared floor works over TLS with a
// password, and a replica without the CA cannot use that Redis (and says
// so) but still serves.
func TestRedisOverTLSWithPassword(t *testing.T) {
	w := newWorld(t)
	d := testenv.NewDeployment(t, testenv.StartRedisTLS(t, "tls-secret"))
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "v1")
	old := w.Notary.Record(t, gun)
	w.pushSigned(t, "library/app", "v2", "v2")
	replica := func(redisFields ...string) *instance {
		return start(t, w.replicaConfig(t, d, t.TempDir(), time.Nanosecond, redisFields...))
	}
	withCA := "tls: {ca_file: " + d.Redis.CAFile() + "}"
	a := replica(withCA)
	a.mustPull(t, "library/app:v2")
	if got := a.proxy.Readiness(t.Context()).Status; got != "ok" {
		t.Fatalf("replica over TLS: ready %q", got)
	}
	w.Notary.Replay(gun, old)
	b := replica(withCA)
	status, _, body := b.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, proxy.Reason(trust.Rollback))

	plain := replica() // speaks plain TCP to a TLS port
	if got := plain.proxy.Readiness(t.Context()).Status; !strings.HasPrefix(got, "degraded") {
		t.Fatalf("a replica that cannot speak to redis: ready %q", got)
	}
}

// TestRefusalsSharedAcrossReplicas: requests for made-up repositories
// spread over three replicas ask the Notary server about each name once
// per refusal_ttl, not once per replica.
func TestRefusalsSharedAcrossReplicas(t *testing.T) {
	w := newWorld(t)
	d := testenv.NewDeployment(t, testenv.StartRedis(t, ""))
	var replicas []*instance
	for range 3 {
		replicas = append(replicas, w.replica(t, d, t.TempDir(), time.Hour))
	}
	asked := w.Notary.Requests("")
	const names = 20
	for i := range names * 3 {
		path := fmt.Sprintf("/v2/made-up/repo-%d/manifests/latest", i%names)
		status, _, body := replicas[i%3].get(t, http.MethodGet, path) // each name on each replica in turn
		wantDenied(t, status, body, proxy.Reason(trust.NoTrustData))
	}
	got := w.Notary.Requests("") - asked
	t.Logf("%d requests for %d made-up names over 3 replicas: %d Notary requests", names*3, names, got)
	if got > names*2 {
		t.Fatalf("%d Notary requests for %d made-up names over 3 replicas, want at most %d", got, names, names*2)
	}
}

// upstreamFront is the upstream registry w, except that a GET of blob
// waits delay and then, when onBlob is not nil, gets onBlob's answer.
func upstreamFront(t *testing.T, w *world, blob string, delay time.Duration, onBlob http.HandlerFunc) *httptest.Server {
	u, _ := url.Parse(w.Registry.URL())
	rp := httputil.NewSingleHostReverseProxy(u)
	s := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+blob) {
			time.Sleep(delay)
			if onBlob != nil {
				onBlob(rw, r)
				return
			}
		}
		rp.ServeHTTP(rw, r)
	}))
	t.Cleanup(s.Close)
	return s
}

// twoReplicas starts replicas a (its replica_url as urlA says) and b in
// front of the upstream at up, sharing a Redis and a storage directory,
// each having verified library/app:v1.
func twoReplicas(t *testing.T, w *world, up string, urlA func(own string) string) (*instance, *instance) {
	t.Helper()
	d := testenv.NewDeployment(t, testenv.StartRedis(t, ""))
	a := w.peer(t, d, up, urlA)
	b := w.peer(t, d, up, func(own string) string { return own })
	for _, r := range []*instance{a, b} {
		if status, _, body := r.get(t, http.MethodGet, "/v2/library/app/manifests/v1"); status != 200 {
			t.Fatalf("manifest: %d %s", status, body)
		}
	}
	return a, b
}

// signedLayer pushes and signs library/app:v1 with one layer of size bytes
// and returns the layer's digest.
func signedLayer(t *testing.T, w *world, seed string, size int64) v1.Hash {
	t.Helper()
	w.initRepo(t, gun, w.alice)
	img := testenv.Image(t, seed, 1, size)
	w.Registry.Push(t, "library/app", "v1", img)
	w.Notary.SignImage(t, gun, "v1", img, testenv.Releases)
	return firstLayer(t, img)
}

// wantNoCompleteWrongBlob fetches layer from r and fails t if a whole
// 200 response arrives whose body is not the layer.
func wantNoCompleteWrongBlob(t *testing.T, r *instance, layer v1.Hash) {
	t.Helper()
	resp, err := http.Get(r.srv.URL + "/v2/library/app/blobs/" + layer.String())
	if err != nil {
		return
	}
	body, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == 200 && rerr == nil && digest.FromBytes(body).String() != layer.String() {
		t.Fatalf("a complete 200 response of %d bytes that is not the layer", len(body))
	}
}

// A holder whose fill fails before it starts (the upstream lies about the
// length) must not make its peers answer an empty 200.
func TestPeerOfAFailedFillAnswersNoEmptyBlob(t *testing.T) {
	w := newWorld(t)
	layer := signedLayer(t, w, "x", 1<<20)
	up := upstreamFront(t, w, layer.String(), 1500*time.Millisecond, func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Content-Length", "5")
		_, _ = rw.Write([]byte("hello"))
	})
	a, b := twoReplicas(t, w, up.URL, func(own string) string { return own })
	go func() { _, _, _ = a.get(t, http.MethodGet, "/v2/library/app/blobs/"+layer.String()) }()
	time.Sleep(300 * time.Millisecond)
	wantNoCompleteWrongBlob(t, b, layer)
}

// What a peer sends is checked like an upstream's: bytes that are not the
// layer (a wrong replica_url, or someone on the path between pods) are
// never a complete response.
func TestPeerBytesVerified(t *testing.T) {
	w := newWorld(t)
	layer := signedLayer(t, w, "y", 1<<20)
	up := upstreamFront(t, w, layer.String(), 1500*time.Millisecond, nil)
	liar := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		_, _ = rw.Write([]byte("attacker-chosen bytes, not the layer"))
	}))
	t.Cleanup(liar.Close)
	a, b := twoReplicas(t, w, up.URL, func(string) string { return liar.URL })
	go func() { _, _, _ = a.get(t, http.MethodGet, "/v2/library/app/blobs/"+layer.String()) }()
	time.Sleep(300 * time.Millisecond)
	wantNoCompleteWrongBlob(t, b, layer)
}

// A replica that cannot reach the Notary server and has no cache of its own
// does not deny the others, which can serve from their cached trust data.
func TestFreshReplicaRefusalDoesNotDenyOthers(t *testing.T) {
	w, d := signedOnRedis(t)
	a := w.replica(t, d, t.TempDir(), time.Nanosecond)
	a.mustPull(t, "library/app:v1")
	w.Notary.SetDown(true)
	if status, _, body := a.get(t, http.MethodGet, "/v2/library/app/manifests/v1"); status != 200 {
		t.Fatalf("A with the Notary server down: %d %s", status, body)
	}
	b := w.replica(t, d, t.TempDir(), time.Nanosecond)
	status, _, body := b.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, proxy.Reason(trust.TrustUnavailable))
	if status, _, body := a.get(t, http.MethodGet, "/v2/library/app/manifests/v1"); status != 200 {
		t.Fatalf("A after B's refusal: %d %s", status, body)
	}
}

// A root written to Redis is never a replica's trusted root: a replica
// pointed at a hostile Notary server still refuses its root, whatever
// Redis says.
func TestRootOnRedisIsNotTrusted(t *testing.T) {
	w := newWorld(t)
	rs := testenv.StartRedis(t, "")
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "v1")
	noSigners := func(cfg string) string { return strings.Replace(cfg, "      signers: [alice]\n", "", 1) }
	shared := testenv.NewDeployment(t, rs).YAML()
	a := start(t, noSigners(w.config(t, t.TempDir(), shared)))
	a.mustPull(t, "library/app:v1")

	evil := newWorld(t)
	evil.Notary.Init(t, gun)
	img := testenv.Image(t, "evil", 1, 1024)
	w.Registry.Push(t, "library/app", "evil", img)
	evil.Notary.SignImage(t, gun, "evil", img, testenv.Targets)
	hostile := func() string {
		c := noSigners(w.config(t, t.TempDir(), shared))
		c = strings.Replace(c, w.Notary.URL(), evil.Notary.URL(), 1)
		return strings.Replace(c, w.Notary.CAFile(), evil.Notary.CAFile(), 1)
	}
	ctx := context.Background()
	rdb := goredis.NewClient(&goredis.Options{Addr: rs.Addr()})
	defer rdb.Close()
	keys, err := rdb.Keys(ctx, "*tuf:*").Result()
	if err != nil || len(keys) == 0 {
		t.Fatalf("keys %v %v", keys, err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: evil.Notary.CAPool()}}}
	resp, err := hc.Get(evil.Notary.URL() + "/v2/" + gun + "/_trust/tuf/root.json")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("the hostile root: %v %v", err, resp)
	}
	evilRoot, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, k := range keys {
		if strings.HasSuffix(k, ":root") {
			rdb.Set(ctx, k, evilRoot, 0)
		} else {
			rdb.Del(ctx, k)
		}
	}
	b := start(t, hostile())
	status, _, body := b.get(t, http.MethodGet, "/v2/library/app/manifests/evil")
	if status == http.StatusOK {
		t.Fatalf("served a manifest signed under a root that is not the pinned one: %.200s", body)
	}
}

// TestVerdictsSharedWithStateKey: with a state key, a replica reuses the
// trust view another verified (no Notary request of its own); a replica
// with another key does not take it, and verifies itself.
func TestVerdictsSharedWithStateKey(t *testing.T) {
	w, d := signedOnRedis(t)
	replica := func(key string) *instance {
		return start(t, w.config(t, t.TempDir(), d.YAML("state_key_file: "+testenv.StateKeyFile(t, key))))
	}
	const key = "0123456789abcdef0123456789abcdef-state"
	a, b := replica(key), replica(key)
	a.mustPull(t, "library/app:v1")
	asked := w.Notary.Requests("")
	b.mustPull(t, "library/app:v1")
	if n := w.Notary.Requests("") - asked; n != 0 {
		t.Fatalf("replica B asked the Notary server %d times for a view A verified, want 0", n)
	}
	other := replica("another key, not the replicas' one, 32+ chars")
	other.mustPull(t, "library/app:v1")
	if n := w.Notary.Requests("") - asked; n == 0 {
		t.Fatal("a replica with another state key took the shared view instead of verifying")
	}
}
