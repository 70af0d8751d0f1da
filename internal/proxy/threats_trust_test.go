package proxy_test

// THREATS.md rows about the trust data (T1, T6, T9-T22), played through
// trustproxy: a hostile or failing Notary server, the client's view.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/theupdateframework/notary/tuf/data"
	"github.com/theupdateframework/notary/tuf/testutils"

	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// TestUnsignedTagRefused (T1): v1 and v2 are pushed, only v1 is signed. v2
// is refused as not signed, counted, and the upstream is never asked for
// it, by tag or digest: a tag resolves through the signed targets only.
func TestUnsignedTagRefused(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	signed := w.pushSigned(t, "library/app", "v1", "v1")
	unsigned := w.Registry.Push(t, "library/app", "v2", testenv.Image(t, "v2 unsigned", 1, 1024))
	p := w.start(t, "")
	asked := func() int {
		return w.Registry.Requests(http.MethodGet, "/manifests/v2") + w.Registry.Requests(http.MethodHead, "/manifests/v2") +
			w.Registry.Requests("", "/manifests/"+unsigned.String())
	}
	before := asked()

	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v2")
	wantRefusal(t, status, body, proxy.Reason(trust.NotSigned))
	p.wantDecision(t, gun, "v2", "denied", proxy.Reason(trust.NotSigned))
	if n := p.refusals(t, proxy.Reason(trust.NotSigned)); n != 1 {
		t.Fatalf("trustproxy_decisions_total{denied,not_signed} = %v, want 1", n)
	}
	if status, _, _ := p.get(t, http.MethodHead, "/v2/library/app/manifests/v2"); !refused(status) {
		t.Fatalf("HEAD of the unsigned tag: %d", status)
	}
	if n := asked() - before; n != 0 {
		t.Fatalf("the upstream was asked %d times for the unsigned tag or its manifest", n)
	}
	if got := p.mustPull(t, "library/app:v1"); got != signed {
		t.Fatalf("the signed tag was served as %s, want %s", got, signed)
	}
}

// TestOtherRepositoryTrustDataRefused (T6): the Notary server answers
// library/app's trust URLs with library/other's (valid, signed) trust data.
// Its root is certified for another GUN: refused whether the root is pinned
// or trusted on first use, and nothing is fetched from the upstream.
func TestOtherRepositoryTrustDataRefused(t *testing.T) {
	w := newWorld(t)
	const other = "docker.io/library/other"
	w.initRepo(t, other, w.alice)
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/other", "v1", "other")
	w.pushSigned(t, "library/app", "v1", "app")
	w.Notary.Replay(gun, w.Notary.Record(t, other))

	pinned := w.start(t, "")
	delete(w.roots, gun)
	delete(w.roots, other)
	tofu := start(t, strings.Replace(w.config(t, t.TempDir(), ""), "      signers: [alice]\n", "      signers: [alice]\n      tofu: true\n", 1))
	before := w.Registry.Requests("", "")
	for name, p := range map[string]*instance{"pinned": pinned, "tofu": tofu} {
		status, body := p.manifestV1(t)
		if status == http.StatusOK {
			t.Fatalf("%s: served library/app:v1 under library/other's trust data", name)
		}
		wantRefusal(t, status, body, proxy.Reason(trust.NotPinned))
	}
	if n := w.Registry.Requests("", "") - before; n != 0 {
		t.Fatalf("%d upstream requests under another repository's trust data", n)
	}
}

// TestConcurrentReplicaWritesKeepHighestFloor (T9): two replicas share one
// Redis; the Notary server answers each timestamp request with version 3 or
// version 2 in turn (both validly signed), while 50 clients per replica
// pull five times each. Whatever order their writes race in, the shared floor ends at the
// highest version: a new replica shown version 2 refuses it as a rollback.
func TestConcurrentReplicaWritesKeepHighestFloor(t *testing.T) {
	w := newTUFWorld(t)
	replica, _ := w.replicas(t, time.Nanosecond)
	s := testutils.NewMetadataSwizzler(gun, testutils.CopyRepoMetadata(w.Meta), w.CS)
	must(t, s.OffsetMetadataVersion(data.CanonicalTimestampRole, 1))
	lo, err := s.MetadataCache.GetSized(data.CanonicalTimestampRole.String(), 1<<20)
	must(t, err)
	must(t, s.OffsetMetadataVersion(data.CanonicalTimestampRole, 1))
	hi, err := s.MetadataCache.GetSized(data.CanonicalTimestampRole.String(), 1<<20)
	must(t, err)
	var n atomic.Int64
	var only atomic.Pointer[[]byte]
	w.Server.SetOverride(func(rw http.ResponseWriter, r *http.Request, role string) bool {
		if role != data.CanonicalTimestampRole.String() {
			return false
		}
		b := lo
		if n.Add(1)%2 == 0 {
			b = hi
		}
		if o := only.Load(); o != nil {
			b = *o
		}
		_, _ = rw.Write(b)
		return true
	})
	replicas := []*instance{replica(), replica()}

	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[string]int{}
	for _, p := range replicas {
		for range 50 {
			wg.Go(func() {
				for range 5 {
					status, body := p.manifestV1(t)
					key := fmt.Sprint(status)
					if status != http.StatusOK {
						key += " " + string(body)
						if status == http.StatusForbidden && strings.Contains(key, "(rollback)") {
							key = "403 rollback"
						}
					}
					mu.Lock()
					statuses[key]++
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	t.Logf("50 clients × 5 pulls on each of 2 replicas, timestamps v2 and v3 in turn (%d timestamps served): %v", n.Load(), statuses)
	for k := range statuses {
		if k != "200" && k != "403 rollback" {
			t.Errorf("answered %s, want 200 or a rollback refusal", k)
		}
	}
	if statuses["200"] == 0 {
		t.Fatal("no pull was served")
	}

	only.Store(&lo)
	status, body := replica().manifestV1(t)
	wantRefusal(t, status, body, proxy.Reason(trust.Rollback))
	only.Store(&hi)
	if status, body := replica().manifestV1(t); status != http.StatusOK {
		t.Fatalf("a new replica shown the highest timestamp: %d %s", status, body)
	}
}

// TestExpiredTrustDataRefused (T10): an expired timestamp, snapshot,
// targets or root (each re-signed, so that only its expiry is wrong) is
// refused as expired, the message says so, the refusal is counted under
// reason "expired", and the upstream is not asked for the manifest.
func TestExpiredTrustDataRefused(t *testing.T) {
	for _, role := range []data.RoleName{data.CanonicalTimestampRole, data.CanonicalSnapshotRole, data.CanonicalTargetsRole, data.CanonicalRootRole} {
		t.Run(role.String(), func(t *testing.T) {
			w := newTUFWorld(t)
			s := w.Swizzle()
			must(t, s.ExpireMetadata(role))
			if role != data.CanonicalTimestampRole {
				if role != data.CanonicalSnapshotRole {
					must(t, s.UpdateSnapshotHashes(role))
				}
				must(t, s.UpdateTimestampHash())
			}
			p := w.start(t, "", "")
			status, body := p.manifestV1(t)
			wantRefusal(t, status, body, proxy.Reason(trust.Expired))
			if !strings.Contains(string(body), "expired") {
				t.Errorf("refusal %s does not say the trust data expired", body)
			}
			if n := p.refusals(t, proxy.Reason(trust.Expired)); n != 1 {
				t.Errorf("trustproxy_decisions_total{denied,expired} = %v, want 1", n)
			}
			if n := w.reg.ManifestGets(w.signed); n != 0 {
				t.Errorf("the manifest was fetched %d times under expired trust data", n)
			}
		})
	}
}

// TestNotaryDownRefusedAfterMaxStaleness (T11): the Notary server stops
// answering. Cached trust data, valid for days, keeps the image served for
// the rule's max_staleness, then it is refused (trust_unavailable, naming
// max_staleness); served again once the server answers.
func TestNotaryDownRefusedAfterMaxStaleness(t *testing.T) {
	const staleness = 3 * time.Second
	w := newTUFWorld(t)
	p := w.start(t, ", max_staleness: "+staleness.String(), "")
	p.mustPull(t, "library/app:v1")
	fresh := time.Now()

	var down atomic.Bool
	down.Store(true)
	w.Server.SetOverride(func(rw http.ResponseWriter, r *http.Request, role string) bool {
		if down.Load() {
			panic(http.ErrAbortHandler) // the connection is closed without an answer
		}
		return false
	})
	if status, body := p.manifestV1(t); status != http.StatusOK {
		t.Fatalf("within max_staleness of the last fresh timestamp: %d %s", status, body)
	}
	if !strings.Contains(p.logs.String(), "notary unreachable, using cached metadata") {
		t.Error("no warning that cached trust metadata was used")
	}
	time.Sleep(time.Until(fresh.Add(staleness + 200*time.Millisecond)))
	status, body := p.manifestV1(t)
	wantRefusal(t, status, body, proxy.Reason(trust.TrustUnavailable))
	if !strings.Contains(string(body), "max_staleness") {
		t.Fatalf("refusal %s does not name max_staleness", body)
	}
	down.Store(false)
	if status, body := p.manifestV1(t); status != http.StatusOK {
		t.Fatalf("after the server answered again: %d %s", status, body)
	}
}

// rootRotationWorld is a world whose library/app replicas are those of
// one deployment, each with its own data directory.
type rootRotationWorld struct {
	*world
	shared *testenv.Deployment
}

// replica starts a trustproxy with dataDir that pins library/app's root
// certificates pins.
func (w *rootRotationWorld) replica(t *testing.T, dataDir string, pins ...string) *instance {
	t.Helper()
	cfg := w.replicaConfig(t, w.shared, dataDir, time.Nanosecond)
	old := fmt.Sprintf("      %s: [%s]\n", gun, w.roots[gun])
	return start(t, strings.Replace(cfg, old, fmt.Sprintf("      %s: [%s]\n", gun, strings.Join(pins, ", ")), 1))
}

// TestRootRotationAcceptedAndShared (T13): the owner rotates the root key
// (the next root signed by the old and the new key), then the targets key
// (the root after it signed by the new key), so that a replica must walk
// the new roots to verify. A running replica that pinned the old root
// certificate walks the chain from its cached root and serves: as in
// notary, pins decide only the first root, and a rotation is checked
// against the root already trusted. A new replica pinning only the old
// certificate refuses the new root (root_not_pinned) until the operator
// pins the new one as well; it then serves. A new replica shown the trust
// data from before the rotation refuses it as a rollback: the floor on
// Redis is past it.
func TestRootRotationAcceptedAndShared(t *testing.T) {
	w := &rootRotationWorld{world: newWorld(t), shared: testenv.NewDeployment(t, testenv.StartRedis(t, ""))}
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "v1")
	oldID := w.roots[gun]
	before := w.Notary.Record(t, gun)
	running := w.replica(t, t.TempDir(), oldID)
	running.mustPull(t, "library/app:v1")

	newID := w.Notary.RotateRoot(t, gun)
	w.Notary.RotateTargetsKey(t, gun)
	signed := w.pushSigned(t, "library/app", "v2", "v2 after the root rotation")
	if got := running.mustPull(t, "library/app:v2"); got != signed {
		t.Fatalf("served %s", got)
	}
	intermediate := fmt.Sprintf("/_trust/tuf/%d.root.json", before.Version("root")+1)
	if n := w.Notary.Requests(intermediate); n == 0 {
		t.Errorf("the replica did not walk the intermediate root %s", intermediate)
	}

	status, _, body := w.replica(t, t.TempDir(), oldID).get(t, http.MethodGet, "/v2/library/app/manifests/v2")
	wantRefusal(t, status, body, proxy.Reason(trust.NotPinned))
	if got := w.replica(t, t.TempDir(), oldID, newID).mustPull(t, "library/app:v2"); got != signed {
		t.Fatalf("a new replica with the new root pinned too: served %s", got)
	}
	w.Notary.Replay(gun, before)
	status, _, body = w.replica(t, t.TempDir(), oldID, newID).get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantRefusal(t, status, body, proxy.Reason(trust.Rollback))
}

// TestRootRotationWithoutOldKeyRefused (T14): both root certificates are
// pinned, the old and the one the owner will rotate to. A server holding
// the new key (but not the old one) publishes root v2 signed by the new key
// alone: a replica that trusts root v1 refuses it. The same rotation
// signed by the old key as well is accepted.
func TestRootRotationWithoutOldKeyRefused(t *testing.T) {
	w := newTUFWorld(t)
	newRoot, err := testutils.CreateKey(w.CS, gun, data.CanonicalRootRole, data.ECDSAKey)
	must(t, err)
	p := start(t, w.config(t, t.TempDir(), "", "", w.RootID(), newRoot.ID()))
	p.mustPull(t, "library/app:v1")

	s := w.Swizzle()
	must(t, s.MutateRoot(func(r *data.Root) {
		r.Keys[newRoot.ID()] = newRoot
		r.Roles[data.CanonicalRootRole].KeyIDs = []string{newRoot.ID()}
		r.Version++
	}))
	bumpSnapshotAndTimestamp(t, s, data.CanonicalRootRole)
	status, body := p.manifestV1(t)
	wantRefusal(t, status, body, proxy.Reason(trust.NotPinned))
	t.Logf("refusal: %s", body)

	must(t, w.Repo.ReplaceBaseKeys(data.CanonicalRootRole, newRoot))
	w.Publish(t)
	if status, body := p.manifestV1(t); status != http.StatusOK {
		t.Fatalf("the rotation signed by the old and the new root key: %d %s", status, body)
	}
}

// bumpSnapshotAndTimestamp lists the changed roles' hashes in a new
// snapshot version and that in a new timestamp version.
func bumpSnapshotAndTimestamp(t *testing.T, s *testutils.MetadataSwizzler, changed ...data.RoleName) {
	t.Helper()
	must(t, s.UpdateSnapshotHashes(changed...))
	must(t, s.OffsetMetadataVersion(data.CanonicalSnapshotRole, 1))
	must(t, s.UpdateTimestampHash())
	must(t, s.OffsetMetadataVersion(data.CanonicalTimestampRole, 1))
}

var versionedRootName = regexp.MustCompile(`^([0-9]+)\.root$`)

// TestManyRootRotationsRefused (T15): the server claims root v1000 and
// answers every intermediate N.root with a valid root of version N signed
// by the old key; or it answers root.json with 50 MB. The update stops at
// limits.max_root_rotations (at most 32 versioned roots fetched) and at
// limits.root_bytes, refused as invalid_metadata naming the limit, and the
// heap does not grow by the root's size.
func TestManyRootRotationsRefused(t *testing.T) {
	t.Run("rotations", func(t *testing.T) {
		w := newTUFWorld(t)
		p := w.start(t, "", "")
		p.mustPull(t, "library/app:v1")
		rootV1 := w.Meta[data.CanonicalRootRole]
		s := w.Swizzle()
		must(t, s.OffsetMetadataVersion(data.CanonicalRootRole, 999))
		must(t, s.ChangeRootKey())
		bumpSnapshotAndTimestamp(t, s, data.CanonicalRootRole)
		var versioned atomic.Int64
		w.Server.SetOverride(func(rw http.ResponseWriter, r *http.Request, role string) bool {
			m := versionedRootName.FindStringSubmatch(role)
			if m == nil {
				return false
			}
			var n int
			fmt.Sscan(m[1], &n)
			if n >= 1000 {
				return false
			}
			versioned.Add(1)
			sw := testutils.NewMetadataSwizzler(gun, map[data.RoleName][]byte{data.CanonicalRootRole: rootV1}, w.CS)
			must(t, sw.OffsetMetadataVersion(data.CanonicalRootRole, n-1))
			b, err := sw.MetadataCache.GetSized(data.CanonicalRootRole.String(), 1<<30)
			must(t, err)
			_, _ = rw.Write(b)
			return true
		})
		status, body := p.manifestV1(t)
		wantRefusal(t, status, body, proxy.Reason(trust.InvalidMetadata))
		if !strings.Contains(string(body), "limits.max_root_rotations") {
			t.Errorf("refusal %s does not name limits.max_root_rotations", body)
		}
		if n := versioned.Load(); n == 0 || n > 32 {
			t.Errorf("%d versioned roots fetched, want 1..32", n)
		}
	})
	t.Run("huge root", func(t *testing.T) {
		w := newTUFWorld(t)
		const huge = 50 << 20
		var sent atomic.Int64
		w.Server.SetOverride(func(rw http.ResponseWriter, r *http.Request, role string) bool {
			if role != data.CanonicalRootRole.String() {
				return false
			}
			rw.Header().Set("Content-Type", "application/json")
			chunk := bytes.Repeat([]byte(" "), 64<<10)
			_, _ = rw.Write([]byte(`{"signed":{"_type":"Root","version":1,"pad":"`))
			for sent.Load() < huge {
				if _, err := rw.Write(chunk); err != nil {
					return true
				}
				sent.Add(int64(len(chunk)))
			}
			return true
		})
		p := w.start(t, "", "")
		peak := watchHeap(t)
		status, body := p.manifestV1(t)
		grew := peak()
		wantRefusal(t, status, body, proxy.Reason(trust.InvalidMetadata))
		if !strings.Contains(string(body), "limits.root_bytes") {
			t.Errorf("refusal %s does not name limits.root_bytes", body)
		}
		t.Logf("a 50 MB root.json: %d KiB sent before the proxy hung up, heap grew by %d KiB at most", sent.Load()>>10, grew>>10)
		if grew > 16<<20 {
			t.Errorf("heap grew by %d MiB while refusing a 50 MB root", grew>>20)
		}
	})
}

// watchHeap samples the heap in use until the returned function is called,
// which returns how far it grew above what it was at the start.
func watchHeap(t *testing.T) func() int64 {
	t.Helper()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	var once sync.Once
	stopNow := func() { once.Do(func() { close(stop); <-done }) }
	t.Cleanup(stopNow)
	return func() int64 {
		stopNow()
		return int64(peak.Load()) - int64(base)
	}
}

// TestEndlessTimestampRefused (T16): the server answers timestamp.json
// with a body that never ends. The update is cut at limits.timestamp_bytes
// and refused as invalid_metadata naming that limit, well within the
// update's deadline.
func TestEndlessTimestampRefused(t *testing.T) {
	w := newTUFWorld(t)
	var sent atomic.Int64
	w.Server.SetOverride(func(rw http.ResponseWriter, r *http.Request, role string) bool {
		if role != data.CanonicalTimestampRole.String() {
			return false
		}
		chunk := bytes.Repeat([]byte("x"), 4096)
		for r.Context().Err() == nil {
			if _, err := rw.Write(chunk); err != nil {
				break
			}
			sent.Add(int64(len(chunk)))
		}
		return true
	})
	p := w.start(t, "", "limits: {upstream_timeout: 5s}\n")
	begin := time.Now()
	status, body := p.manifestV1(t)
	took := time.Since(begin)
	wantRefusal(t, status, body, proxy.Reason(trust.InvalidMetadata))
	if !strings.Contains(string(body), "limits.timestamp_bytes") {
		t.Errorf("refusal %s does not name limits.timestamp_bytes", body)
	}
	t.Logf("endless timestamp refused after %s, %d KiB sent", took.Round(time.Millisecond), sent.Load()>>10)
	if took > 10*time.Second { // the update's deadline: 2 × upstream_timeout
		t.Errorf("refused after %s, past the update's 10s deadline", took)
	}
}

// TestTricklingNotaryBounded (T17): the server sends timestamp.json one byte
// every 200 ms, forever. A replica with nothing cached refuses
// (trust_unavailable) within the update's deadline (2 × upstream_timeout)
// and its goroutines return to what they were; a replica with valid cached
// trust data serves from it within the same bound.
func TestTricklingNotaryBounded(t *testing.T) {
	w := newTUFWorld(t)
	const limits = "limits: {upstream_timeout: 1s}\n"
	warm := w.start(t, "", limits)
	warm.mustPull(t, "library/app:v1")
	w.Server.SetOverride(func(rw http.ResponseWriter, r *http.Request, role string) bool {
		if role != data.CanonicalTimestampRole.String() {
			return false
		}
		for r.Context().Err() == nil {
			if _, err := rw.Write([]byte(" ")); err != nil {
				break
			}
			rw.(http.Flusher).Flush()
			time.Sleep(200 * time.Millisecond)
		}
		return true
	})

	cold := w.start(t, "", limits)
	time.Sleep(100 * time.Millisecond)
	base := runtime.NumGoroutine()
	begin := time.Now()
	status, body := cold.manifestV1(t)
	took := time.Since(begin)
	wantRefusal(t, status, body, proxy.Reason(trust.TrustUnavailable))
	t.Logf("trickled timestamp, nothing cached: refused after %s", took.Round(time.Millisecond))
	if took > 2*time.Second+3*time.Second {
		t.Errorf("refused after %s: past the update's 2s deadline", took)
	}
	for deadline := time.Now().Add(10 * time.Second); runtime.NumGoroutine() > base+8; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines 10s after the refusal, %d before the request", runtime.NumGoroutine(), base)
		}
	}

	begin = time.Now()
	if status, body := warm.manifestV1(t); status != http.StatusOK {
		t.Fatalf("trickled timestamp, valid cache: %d %s", status, body)
	}
	if took := time.Since(begin); took > 5*time.Second {
		t.Errorf("served from the cache after %s: past the update's 2s deadline", took)
	}
	if !strings.Contains(warm.logs.String(), "notary unreachable, using cached metadata") {
		t.Error("no warning that cached trust metadata was used")
	}
}

// TestThresholdNotMetRefused (T18): root requires two signatures on
// targets, or on snapshot, or targets requires two on targets/releases,
// and each carries one valid signature (one key compromised, one not): a
// replica refuses as invalid_metadata and asks the upstream nothing.
func TestThresholdNotMetRefused(t *testing.T) {
	for _, role := range []data.RoleName{data.CanonicalTargetsRole, data.CanonicalSnapshotRole, testenv.Releases} {
		t.Run(role.String(), func(t *testing.T) {
			w := newTUFWorld(t)
			s := w.Swizzle()
			must(t, s.SetThreshold(role, 2))
			changed := data.CanonicalRootRole
			if data.IsDelegation(role) {
				changed = data.CanonicalTargetsRole
			}
			bumpSnapshotAndTimestamp(t, s, changed)
			p := w.start(t, "", "")
			status, body := p.manifestV1(t)
			wantRefusal(t, status, body, proxy.Reason(trust.InvalidMetadata))
			if n := w.reg.ManifestGets(w.signed); n != 0 {
				t.Fatalf("the manifest was fetched %d times", n)
			}
		})
	}
}

// TestDuplicateSignaturesCountedOnce (T19): targets needs two signatures;
// targets.json carries the one valid signature twice. It is counted once:
// refused as invalid_metadata.
func TestDuplicateSignaturesCountedOnce(t *testing.T) {
	w := newTUFWorld(t)
	s := w.Swizzle()
	must(t, s.SetThreshold(data.CanonicalTargetsRole, 2))
	b, err := s.MetadataCache.GetSized(data.CanonicalTargetsRole.String(), 1<<30)
	must(t, err)
	var doc data.Signed
	must(t, json.Unmarshal(b, &doc))
	if len(doc.Signatures) != 1 {
		t.Fatalf("targets.json has %d signatures, want 1", len(doc.Signatures))
	}
	doc.Signatures = append(doc.Signatures, doc.Signatures[0])
	b, err = json.Marshal(&doc)
	must(t, err)
	must(t, s.MetadataCache.Set(data.CanonicalTargetsRole.String(), b))
	bumpSnapshotAndTimestamp(t, s, data.CanonicalRootRole, data.CanonicalTargetsRole)
	p := w.start(t, "", "")
	status, body := p.manifestV1(t)
	wantRefusal(t, status, body, proxy.Reason(trust.InvalidMetadata))
	if n := w.reg.ManifestGets(w.signed); n != 0 {
		t.Fatalf("the manifest was fetched %d times", n)
	}
}

// TestHashMismatchRefused (T20): the server serves a new, validly signed
// version of a role under the name the snapshot (or timestamp) pins by
// hash, without listing its hash there: targets, targets/releases or the
// snapshot. Refused as invalid_metadata; the newly signed tag is never
// served.
func TestHashMismatchRefused(t *testing.T) {
	for _, role := range []data.RoleName{data.CanonicalTargetsRole, testenv.Releases, data.CanonicalSnapshotRole} {
		t.Run(role.String(), func(t *testing.T) {
			w := newTUFWorld(t)
			s := w.Swizzle()
			must(t, s.OffsetMetadataVersion(role, 1))
			w.Server.SetOverride(func(rw http.ResponseWriter, r *http.Request, got string) bool {
				if got != role.String() {
					return false
				}
				b, err := s.MetadataCache.GetSized(role.String(), 1<<30)
				must(t, err)
				_, _ = rw.Write(b)
				return true
			})
			p := w.start(t, "", "")
			status, body := p.manifestV1(t)
			wantRefusal(t, status, body, proxy.Reason(trust.InvalidMetadata))
			if n := w.reg.ManifestGets(w.signed); n != 0 {
				t.Fatalf("the manifest was fetched %d times", n)
			}
		})
	}
}

// TestTagOnlyInOtherDelegationRefused (T21): alice, the trusted signer,
// signs tags in targets/a and in targets/releases/x, neither a role that
// counts for docker (only targets/releases and targets). Both are refused
// as not signed and never fetched; her tag in targets/releases is served.
func TestTagOnlyInOtherDelegationRefused(t *testing.T) {
	w := newTUFWorld(t)
	alice := w.Repo.Targets[data.CanonicalTargetsRole].Signed.Delegations.Roles[0].KeyIDs[0]
	key := w.Repo.Targets[data.CanonicalTargetsRole].Signed.Delegations.Keys[alice]
	for _, role := range []string{"targets/a", testenv.Releases + "/x"} {
		must(t, w.Repo.UpdateDelegationKeys(data.RoleName(role), data.KeyList{key}, nil, 1))
		must(t, w.Repo.UpdateDelegationPaths(data.RoleName(role), []string{""}, nil, false))
	}
	a := w.signImage(t, "targets/a", "in-a", testenv.Image(t, "in targets/a", 1, 1024))
	x := w.signImage(t, testenv.Releases+"/x", "in-x", testenv.Image(t, "in targets/releases/x", 1, 1024))
	w.Publish(t)
	p := w.start(t, "", "")
	for tag, d := range map[string]string{"in-a": a.String(), "in-x": x.String()} {
		for _, ref := range []string{tag, d} {
			status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/"+ref)
			wantRefusal(t, status, body, proxy.Reason(trust.NotSigned))
		}
	}
	if n := w.reg.ManifestGets(a) + w.reg.ManifestGets(x); n != 0 {
		t.Fatalf("manifests signed only in other roles were fetched %d times", n)
	}
	if got := p.mustPull(t, "library/app:v1"); got != w.signed {
		t.Fatalf("served %s", got)
	}
}

// TestExpiredReleasesDoesNotFallThrough (T22): v1 is signed in
// targets/releases and, as another digest, in targets. With
// targets/releases expired (the rest valid), notary would resolve v1
// through targets; trustproxy refuses the repository as expired, naming
// targets/releases, and fetches neither manifest.
func TestExpiredReleasesDoesNotFallThrough(t *testing.T) {
	w := newTUFWorld(t)
	other := testenv.Image(t, "owner's older v1", 1, 1024)
	od := w.reg.Push(t, "library/app", "owner-v1", other)
	raw, _ := other.RawManifest()
	w.addDigest(t, data.CanonicalTargetsRole.String(), "v1", od, int64(len(raw)))
	w.Publish(t)
	s := w.Swizzle()
	must(t, s.ExpireMetadata(testenv.Releases))
	bumpSnapshotAndTimestamp(t, s, testenv.Releases)
	p := w.start(t, "", "")
	status, body := p.manifestV1(t)
	wantRefusal(t, status, body, proxy.Reason(trust.Expired))
	if !strings.Contains(string(body), testenv.Releases) {
		t.Errorf("refusal %s does not name %s", body, testenv.Releases)
	}
	if n := w.reg.ManifestGets(w.signed) + w.reg.ManifestGets(od); n != 0 {
		t.Fatalf("%d manifest fetches with targets/releases expired", n)
	}
}
