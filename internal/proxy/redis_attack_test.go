package proxy_test

// Attacks by whoever can write to the replicas' Redis (a leaked password, a
// neighbour on a shared Redis) but cannot read their state key, and by
// whoever can only read it (a backup, a monitoring tool). Each test plays
// that party on a real redis-server and asserts from the client's side:
// nothing is served that a replica without Redis would refuse, no
// connection goes anywhere new, and a denial lasts at most one refusal TTL.

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	goredis "github.com/redis/go-redis/v9"

	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/scan"
	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// redisWriter is whoever can read and write the replicas' Redis, without
// their state key.
type redisWriter struct {
	t   *testing.T
	rdb *goredis.Client
}

func newRedisWriter(t *testing.T, addr string) *redisWriter {
	rdb := goredis.NewClient(&goredis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	return &redisWriter{t: t, rdb: rdb}
}

// keys lists the keys matching pattern.
func (a *redisWriter) keys(pattern string) []string {
	a.t.Helper()
	k, err := a.rdb.Keys(context.Background(), pattern).Result()
	if err != nil {
		a.t.Fatal(err)
	}
	return k
}

// copy is every key matching pattern, as DUMP gives it.
type redisCopy map[string]string

// save copies every key matching pattern.
func (a *redisWriter) save(pattern string) redisCopy {
	a.t.Helper()
	c := redisCopy{}
	for _, k := range a.keys(pattern) {
		v, err := a.rdb.Dump(context.Background(), k).Result()
		if err != nil {
			a.t.Fatal(err)
		}
		c[k] = v
	}
	return c
}

// restore writes every key of c back, without expiry.
func (a *redisWriter) restore(c redisCopy) {
	a.t.Helper()
	for k, v := range c {
		if err := a.rdb.RestoreReplace(context.Background(), k, 0, v).Err(); err != nil {
			a.t.Fatal(err)
		}
	}
}

// get reads the string at key.
func (a *redisWriter) get(key string) []byte {
	a.t.Helper()
	b, err := a.rdb.Get(context.Background(), key).Bytes()
	if err != nil {
		a.t.Fatalf("GET %s: %v", key, err)
	}
	return b
}

// set writes the string at key, without expiry.
func (a *redisWriter) set(key string, v []byte) {
	a.t.Helper()
	if err := a.rdb.Set(context.Background(), key, v, 0).Err(); err != nil {
		a.t.Fatal(err)
	}
}

// rejected reads trustproxy_redis_rejected_total{kind}.
func (p *instance) rejected(t *testing.T, kind string) float64 {
	t.Helper()
	mfs, err := p.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "trustproxy_redis_rejected_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "kind" && l.GetValue() == kind {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// postReport posts body as CI's report of d to p, which must store it.
func (w *scanWorld) postReport(t *testing.T, p *instance, d digest.Digest, body []byte) {
	t.Helper()
	if got := postReport(t, p, w.token, d.String(), body); got != http.StatusCreated {
		t.Fatalf("posting CI's report: %d", got)
	}
}

// scanReplica starts one of d's replicas of the scan world, with the further
// redis fields; only reports decide (missing: block, and the scanner is
// down).
func (w *scanWorld) scanReplica(t *testing.T, d *testenv.Deployment, redisFields ...string) *instance {
	t.Helper()
	return w.startWith(t, "scan: {missing: block}", func(string) string {
		return d.YAML(redisFields...) + fmt.Sprintf("scan:\n  report_token_file: %s\n", w.tokenFile)
	})
}

// TestRedisWriterPlantedReportIgnored (T43): CI reports a critical CVE;
// a Redis writer then plants a clean report in every way it can, and a
// fresh replica, which has only Redis to go by, still refuses the image.
func TestRedisWriterPlantedReportIgnored(t *testing.T) {
	w := newScanWorld(t)
	w.scanner.SetFault(testenv.ScannerDown)
	signed := w.signedImage(t, "v1")
	other := digest.Digest(w.pushSigned(t, "library/app", "other", "another clean image").String())
	rs := testenv.StartRedis(t, "")
	d := testenv.NewDeployment(t, rs)
	a := w.scanReplica(t, d)
	w.postReport(t, a, signed, ciReport(signed, xz))
	w.postReport(t, a, other, ciReport(other))
	status, _, body := a.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, scan.ReasonVulnerable)

	attacker := newRedisWriter(t, rs.Addr())
	reportKey := "trustproxy:scan:report:" + signed.String()
	genuine := attacker.get(reportKey)
	clean, _ := json.Marshal(map[string]any{"digest": signed, "source": "ci", "received": time.Now().Add(time.Hour), "report": json.RawMessage(ciReport(signed))})

	// A second deployment (same binary, its own state key) on its own Redis
	// holds a clean report for the same digest under the same key name.
	rs2 := testenv.StartRedis(t, "")
	d2 := w.scanReplica(t, testenv.NewDeployment(t, rs2), "state_key_file: "+testenv.StateKeyFile(t, "another deployment's state key, 32+ chars"))
	w.postReport(t, d2, signed, ciReport(signed))
	otherDeployment := newRedisWriter(t, rs2.Addr()).get(reportKey)

	altered := bytes.Clone(genuine)
	altered = bytes.Replace(altered, []byte("CVE-2024-3094"), []byte("CVE-2024-3095"), 1)
	for name, planted := range map[string][]byte{
		"planted unsealed":          clean,
		"altered":                   altered,
		"moved from another digest": attacker.get("trustproxy:scan:report:" + other.String()),
		"another deployment's":      otherDeployment,
	} {
		t.Run(name, func(t *testing.T) {
			attacker.set(reportKey, planted)
			b := w.scanReplica(t, d)
			status, _, body := b.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
			if status == http.StatusOK {
				t.Fatalf("a fresh replica served the image on a report planted on Redis")
			}
			wantDenied(t, status, body, scan.ReasonMissing) // as a replica without Redis: no report of its own
			if n := b.rejected(t, "report"); n == 0 {
				t.Error("the planted report was not counted in trustproxy_redis_rejected_total{kind=report}")
			}
			status, _, body = a.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
			wantDenied(t, status, body, scan.ReasonVulnerable)
		})
	}
}

// TestRedisWriterPlantedIndexRecordsIgnored (T44): reference-index records
// planted, moved or altered on Redis cannot make an unsigned manifest, or
// a blob no signed manifest lists, servable in a repository.
func TestRedisWriterPlantedIndexRecordsIgnored(t *testing.T) {
	w := newWorld(t)
	rs := testenv.StartRedis(t, "")
	w.initRepo(t, gun, w.alice)
	signed := w.pushSigned(t, "library/app", "v1", "v1")
	unsignedImg := testenv.Image(t, "unsigned", 1, 4096)
	unsigned := w.Registry.Push(t, "library/app", "unsigned", unsignedImg)
	unsignedLayer := firstLayer(t, unsignedImg)
	w.initRepo(t, "docker.io/library/other", w.alice)
	otherSigned := w.pushSigned(t, "library/other", "v1", "other")
	d := testenv.NewDeployment(t, rs)
	a := w.replica(t, d, t.TempDir(), time.Nanosecond)
	a.mustPull(t, "library/app:v1")
	a.mustPull(t, "library/other:v1")

	attacker := newRedisWriter(t, rs.Addr())
	refsKey := "trustproxy:refs:" + signed.String()
	rawManifest, _ := unsignedImg.RawManifest()
	layers, _ := unsignedImg.Layers()
	raw, _ := json.Marshal([]map[string]any{ // what the signed manifest would list if it listed them
		{"d": unsigned.String(), "s": len(rawManifest), "m": "application/vnd.docker.distribution.manifest.v2+json"},
		{"d": unsignedLayer.String(), "s": mustSize(t, layers[0]), "m": "application/vnd.docker.image.rootfs.diff.tar.gzip"},
	})
	genuine := attacker.get(refsKey)
	for name, plant := range map[string]func(){
		"planted unsealed": func() {
			attacker.set(refsKey, raw)
			for _, d := range []v1.Hash{unsigned, unsignedLayer} {
				attacker.rdb.SAdd(context.Background(), "trustproxy:parents:"+d.String(), signed.String())
			}
		},
		"moved from another manifest": func() {
			// library/other's genuine record, under library/app's signed manifest.
			attacker.set(refsKey, attacker.get("trustproxy:refs:"+otherSigned.String()))
		},
		"altered": func() {
			attacker.set(refsKey, bytes.Replace(genuine, []byte(`"d":"sha256:`), []byte(`"d":"sha256:`+unsignedLayer.Hex[:8]), 1))
		},
	} {
		t.Run(name, func(t *testing.T) {
			plant()
			b := w.replica(t, d, t.TempDir(), time.Nanosecond)
			for _, path := range []string{"/v2/library/app/manifests/" + unsigned.String(), "/v2/library/app/blobs/" + unsignedLayer.String()} {
				if status, _, body := b.get(t, http.MethodGet, path); status == http.StatusOK {
					t.Fatalf("GET %s: served on records planted on Redis (%d bytes)", path, len(body))
				}
			}
			if b.rejected(t, "refs")+b.rejected(t, "parents") == 0 {
				t.Error("the planted records were not counted in trustproxy_redis_rejected_total")
			}
			b.mustPull(t, "library/app:v1") // genuine content still served
		})
	}
}

// TestRedisWriterPlantedFillLockIgnored (T45): a fill lock planted on
// Redis names an address of the attacker's; a genuine lock naming an
// address outside redis.peer_networks, or replayed after it ended, is not
// followed either: no connection reaches the address, and the client gets
// the blob from the upstream.
func TestRedisWriterPlantedFillLockIgnored(t *testing.T) {
	w := newWorld(t)
	layer := signedLayer(t, w, "lock", 1<<20)
	capture, accepts := listenAndHold(t)
	rs := testenv.StartRedis(t, "")
	attacker := newRedisWriter(t, rs.Addr())
	lockKey := "trustproxy:fill:" + gun + "@" + layer.String()

	// A genuine lock, taken by a replica whose replica_url is the capture
	// address (the upstream is slow for it), saved while it was held.
	slowUp := upstreamFront(t, w, layer.String(), 1500*time.Millisecond, nil)
	holder := w.peer(t, testenv.NewDeployment(t, rs), slowUp.URL, func(string) string { return capture })
	filled := make(chan struct{})
	go func() {
		defer close(filled)
		_, _, _ = holder.get(t, http.MethodGet, "/v2/library/app/blobs/"+layer.String())
	}()
	var genuine []byte
	for deadline := time.Now().Add(5 * time.Second); genuine == nil; time.Sleep(20 * time.Millisecond) {
		if b, err := attacker.rdb.Get(context.Background(), lockKey).Bytes(); err == nil {
			genuine = b
		} else if time.Now().After(deadline) {
			t.Fatal("the holder took no fill lock")
		}
	}
	saved := time.Now()
	<-filled

	get := func(t *testing.T, lock []byte, fields ...string) {
		t.Helper()
		cold := testenv.NewDeployment(t, rs) // a storage of its own: the blob is cold for this replica
		r := w.peer(t, cold, w.Registry.URL(), func(own string) string { return own }, fields...)
		attacker.set(lockKey, lock)
		defer attacker.rdb.Del(context.Background(), lockKey)
		before := accepts.Load()
		resp, err := http.Get(r.srv.URL + "/v2/library/app/blobs/" + layer.String())
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		_, _ = buf.ReadFrom(resp.Body)
		resp.Body.Close()
		if n := accepts.Load() - before; n != 0 {
			t.Fatalf("%d connections reached the address the lock on redis names", n)
		}
		if resp.StatusCode != 200 || digest.FromBytes(buf.Bytes()).String() != layer.String() {
			t.Fatalf("the blob: %d, %d bytes", resp.StatusCode, buf.Len())
		}
	}
	t.Run("genuine lock outside peer_networks", func(t *testing.T) {
		get(t, genuine, "peer_networks: [127.0.0.1/32]")
	})
	t.Run("planted unsealed", func(t *testing.T) {
		get(t, []byte(capture+" 5f2b1c9e-0000-4000-8000-000000000000")) // the unsealed form: URL, space, owner
	})
	t.Run("genuine lock replayed after it ended", func(t *testing.T) {
		time.Sleep(time.Until(saved.Add(16 * time.Second))) // a lock names its holder for 15s after its last refresh
		get(t, genuine)
	})
}

// listenAndHold listens on 127.0.0.2 (on Linux every 127/8 address is
// loopback), accepting connections and never answering; it counts them.
func listenAndHold(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			t.Cleanup(func() { c.Close() })
		}
	}()
	return "http://" + l.Addr().String(), &n
}

// TestRedisWriterCannotRaiseFloor (T46): a Redis writer raises every trust
// floor to 2^31-1, in the entry format of every trustproxy version and with
// entries of another deployment; the repository still publishes and is
// still served, on a replica that has seen it and on a fresh one.
func TestRedisWriterCannotRaiseFloor(t *testing.T) {
	w := newWorld(t)
	rs := testenv.StartRedis(t, "")
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "v1")
	d := testenv.NewDeployment(t, rs)
	a := w.replica(t, d, t.TempDir(), time.Nanosecond)
	a.mustPull(t, "library/app:v1")

	attacker := newRedisWriter(t, rs.Addr())
	floors := attacker.keys("trustproxy:tuf:*")
	if len(floors) == 0 {
		t.Fatal("no trust floor on redis")
	}
	huge := fmt.Appendf(nil, `{"signed":{"_type":"Timestamp","version":%d},"signatures":[]}`, int32(^uint32(0)>>1))
	ctx := context.Background()
	for _, k := range floors {
		attacker.rdb.Del(ctx, k)
		attacker.rdb.HSet(ctx, k, "version", "2147483647", "blob", huge) // the unsealed form of earlier versions
	}
	w.pushSigned(t, "library/app", "v2", "v2") // the owner publishes: every version goes up by one
	a.mustPull(t, "library/app:v2")
	w.replica(t, d, t.TempDir(), time.Nanosecond).mustPull(t, "library/app:v2")

	for _, k := range floors {
		attacker.set(k, append([]byte{1}, huge...)) // looks sealed, is not
	}
	w.pushSigned(t, "library/app", "v3", "v3")
	a.mustPull(t, "library/app:v3")
	b := w.replica(t, d, t.TempDir(), time.Nanosecond)
	b.mustPull(t, "library/app:v3")
	if a.rejected(t, "floor") == 0 { // a met them first, and replaced them
		t.Error("the planted floors were not counted in trustproxy_redis_rejected_total{kind=floor}")
	}
}

// TestRedisReaderFindsNoSecret (T47): whoever reads every key on Redis
// finds neither the scan credential key nor the peers' key: a credential
// minted with anything found there does not skip the scan gate, and a peer
// token does not open a fill.
func TestRedisReaderFindsNoSecret(t *testing.T) {
	w := newScanWorld(t)
	w.scanner.SetFault(testenv.ScannerDown)
	signed := w.signedImage(t, "v1")
	rs := testenv.StartRedis(t, "")
	d := testenv.NewDeployment(t, rs)
	a := w.startWith(t, "scan: {missing: block}", func(own string) string {
		return d.YAML("replica_url: "+own) + scanners(own, "test-adapter", w.scanner.URL())
	})
	status, _, body := a.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, scan.ReasonMissing)

	reader := newRedisWriter(t, rs.Addr())
	var found [][]byte
	for _, k := range reader.keys("*") {
		// a key may go between KEYS and GET (a scan lease released when
		// the failed scan ends): what is gone holds nothing to read
		if v, err := reader.rdb.Get(context.Background(), k).Bytes(); err == nil {
			found = append(found, v)
		}
	}
	if len(found) == 0 {
		t.Fatal("nothing on redis to read")
	}
	for i, key := range found {
		if len(key) < 32 {
			continue
		}
		creds, err := scan.NewCredentials(key)
		if err != nil {
			t.Fatal(err)
		}
		auth := creds.Mint(scan.Grant{Repository: gun, Digest: signed, Expires: time.Now().Add(time.Minute)})
		status, _, body := a.get(t, http.MethodGet, "/v2/library/app/manifests/"+signed.String(), "Authorization", auth)
		if status == http.StatusOK {
			t.Fatalf("a scan credential minted with the value of a key read from redis (%d) skipped the scan gate", i)
		}
		wantDenied(t, status, body, proxy.ReasonScanCredential)

		exp := time.Now().Add(time.Minute).Unix()
		m := hmac.New(sha256.New, key)
		fmt.Fprintf(m, "fill\n%s\n%s\n%d", gun, signed, exp)
		status, _, _ = a.get(t, http.MethodGet, fmt.Sprintf("/internal/fills?gun=%s&digest=%s&exp=%d", gun, signed, exp),
			"Authorization", "Bearer "+base64.RawURLEncoding.EncodeToString(m.Sum(nil)))
		if status != http.StatusForbidden {
			t.Fatalf("a peer token minted with a value read from redis: %d, want 403", status)
		}
	}
}

// TestRedisWriterDenialBounded: a genuine "no trust data" refusal, saved
// while the repository had none and replayed without expiry after it was
// signed, denies it no longer than trust.refusal_ttl; an unsealed one
// planted denies nothing.
func TestRedisWriterDenialBounded(t *testing.T) {
	w := newWorld(t)
	rs := testenv.StartRedis(t, "")
	d := testenv.NewDeployment(t, rs)
	const ttl = time.Second
	replica := func() *instance {
		cfg := w.config(t, t.TempDir(), d.YAML())
		return start(t, strings.Replace(cfg, "refresh_ttl: 1h", "refresh_ttl: "+ttl.String()+"\n  refusal_ttl: "+ttl.String(), 1))
	}
	status, _, body := replica().get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, proxy.Reason(trust.NoTrustData))
	attacker := newRedisWriter(t, rs.Addr())
	refusals := attacker.save("trustproxy:refusal:*")
	if len(refusals) != 1 {
		t.Fatalf("%d shared refusals on redis, want 1", len(refusals))
	}
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "v1")
	time.Sleep(ttl)
	replica().mustPull(t, "library/app:v1")

	attacker.restore(refusals)
	replayed := time.Now()
	b := replica()
	for {
		if _, err := b.pull(t, "library/app:v1"); err == nil {
			break
		}
		if time.Since(replayed) > ttl+time.Second {
			t.Fatalf("a refusal replayed on redis still denies the repository %s later (refusal_ttl %s)", time.Since(replayed).Round(time.Millisecond), ttl)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for k := range refusals {
		attacker.set(k, []byte(`{"reason":"no_trust_data","detail":"planted"}`))
	}
	c := replica()
	c.mustPull(t, "library/app:v1")
}

// TestRedisReplayOfOldEntries (T50): a Redis writer restores yesterday's
// copy of genuine entries. A clean report replayed over a failing one
// admits nothing; the trust state from before a re-sign, replayed with the
// old Notary files, never serves the old digest on a replica that saw the
// new one.
func TestRedisReplayOfOldEntries(t *testing.T) {
	t.Run("scan report", func(t *testing.T) {
		w := newScanWorld(t)
		w.scanner.SetFault(testenv.ScannerDown)
		signed := w.signedImage(t, "v1")
		rs := testenv.StartRedis(t, "")
		d := testenv.NewDeployment(t, rs)
		a, b := w.scanReplica(t, d), w.scanReplica(t, d)
		w.postReport(t, a, signed, ciReport(signed))
		b.mustPull(t, "library/app:v1")
		attacker := newRedisWriter(t, rs.Addr())
		yesterday := attacker.save("trustproxy:scan:*")

		w.postReport(t, a, signed, ciReport(signed, xz))
		time.Sleep(2100 * time.Millisecond) // a stored report is read again after 2s
		for _, r := range []*instance{a, b} {
			status, _, body := r.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
			wantDenied(t, status, body, scan.ReasonVulnerable)
		}
		attacker.restore(yesterday)
		time.Sleep(2100 * time.Millisecond)
		for i, r := range []*instance{a, b} {
			status, _, body := r.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
			if status == http.StatusOK {
				t.Fatalf("replica %c served the image on yesterday's clean report, replayed on redis", 'A'+i)
			}
			wantDenied(t, status, body, scan.ReasonVulnerable)
		}
	})
	t.Run("trust state", func(t *testing.T) {
		w := newWorld(t)
		rs := testenv.StartRedis(t, "")
		w.initRepo(t, gun, w.alice)
		old := w.pushSigned(t, "library/app", "v1", "old")
		d := testenv.NewDeployment(t, rs)
		const ttl = 2 * time.Second
		replica := func() *instance { // reuses a view another replica verified within ttl
			return w.replica(t, d, t.TempDir(), ttl)
		}
		a := replica()
		a.mustPull(t, "library/app:v1")
		attacker := newRedisWriter(t, rs.Addr())
		yesterday := attacker.save("trustproxy:*")
		oldFiles := w.Notary.Record(t, gun)

		resigned := w.pushSigned(t, "library/app", "v1", "new") // v1 re-signed to another digest
		time.Sleep(ttl)
		if got := a.mustPull(t, "library/app:v1"); got != resigned { // A verifies and shares the new view
			t.Fatalf("served %s after the re-sign, want %s", got, resigned)
		}
		asked := w.Notary.Requests("")
		b := replica() // B takes A's view, without a trust fetch of its own
		if got := b.mustPull(t, "library/app:v1"); got != resigned {
			t.Fatalf("B served %s after the re-sign, want %s", got, resigned)
		}
		if n := w.Notary.Requests("") - asked; n != 0 {
			t.Fatalf("B asked the Notary server %d times; the test needs it to use A's view", n)
		}
		attacker.restore(yesterday)
		w.Notary.Replay(gun, oldFiles)
		time.Sleep(ttl) // every view either replica holds has expired: they verify again
		// B first: A would push its newer floor back up to Redis.
		for i, r := range []*instance{b, a} {
			if got, err := r.pull(t, "library/app:v1"); err == nil && got == old {
				t.Fatalf("replica %c served the old digest again", 'B'-i)
			}
			status, _, body := r.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
			wantDenied(t, status, body, proxy.Reason(trust.Rollback))
		}
	})
}

// TestRedisWriterCopiesAnotherDeployment: a second deployment of the same
// binary, with its own state key and a policy that trusts mallory, pulls
// from the same upstream and Notary server; a Redis writer copies every
// key it wrote (same names: the floors, the reference index, its views)
// into this deployment's Redis. A fresh replica here ignores them all:
// it verifies itself, serves what alice signed and refuses what only
// mallory signed, by tag, by digest and by blob.
func TestRedisWriterCopiesAnotherDeployment(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "v1")
	const evilGUN = "docker.io/library/evil"
	w.initRepo(t, evilGUN, w.mallory)
	evilImg := testenv.Image(t, "evil", 1, 4096)
	evil := w.Registry.Push(t, "library/evil", "v1", evilImg)
	w.Notary.SignImage(t, evilGUN, "v1", evilImg, testenv.Releases)

	rs, rs2 := testenv.StartRedis(t, ""), testenv.StartRedis(t, "")
	trustsMallory := func(cfg string) string {
		cfg = strings.Replace(cfg, "      signers: [alice]\n", "      signers: [alice, mallory]\n", 1)
		return strings.Replace(cfg, "  rules:\n", "    - name: mallory\n      public_key: "+w.mallory.CertFile+"\n  rules:\n", 1)
	}
	otherKey := "state_key_file: " + testenv.StateKeyFile(t, "another deployment's state key, 32+ chars")
	other := start(t, trustsMallory(w.config(t, t.TempDir(), testenv.NewDeployment(t, rs2).YAML(otherKey))))
	other.mustPull(t, "library/app:v1")
	other.mustPull(t, "library/evil:v1")

	d := testenv.NewDeployment(t, rs)
	a := w.replica(t, d, t.TempDir(), time.Nanosecond)
	a.mustPull(t, "library/app:v1")
	copied := newRedisWriter(t, rs2.Addr()).save("*")
	newRedisWriter(t, rs.Addr()).restore(copied)
	t.Logf("copied %d keys of the other deployment", len(copied))

	b := w.replica(t, d, t.TempDir(), time.Nanosecond)
	asked := w.Notary.Requests("")
	b.mustPull(t, "library/app:v1")
	if w.Notary.Requests("") == asked {
		t.Error("the fresh replica verified nothing itself")
	}
	status, _, body := b.get(t, http.MethodGet, "/v2/library/evil/manifests/v1")
	wantDenied(t, status, body, proxy.Reason(trust.UntrustedSigner))
	for _, path := range []string{"/v2/library/evil/manifests/" + evil.String(), "/v2/library/evil/blobs/" + firstLayer(t, evilImg).String()} {
		if status, _, _ := b.get(t, http.MethodGet, path); status == http.StatusOK {
			t.Fatalf("GET %s served on the other deployment's entries", path)
		}
	}
	var total float64
	for _, kind := range []string{"floor", "refs", "parents", "verdict", "refusal"} {
		total += b.rejected(t, kind) + a.rejected(t, kind)
	}
	if total == 0 {
		t.Error("none of the other deployment's entries was counted as rejected")
	}
}
