package proxy_test

// TUF's version rules at their edges, through trustproxy: recovery from a
// fast-forward attack (T23), also on a replica whose floor came from
// another's view, and rollback of a role inside a consistent new snapshot
// (T8).

import (
	"net/http"
	"testing"
	"time"

	"github.com/theupdateframework/notary/tuf/data"
	"github.com/theupdateframework/notary/tuf/testutils"

	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// TestFastForwardRecoveryAfterTimestampKeyRotation (T23, TUF 5.3.11):
// whoever held the timestamp key pushed the timestamp to version 1001. The
// owner rotates the timestamp key in a new root, and the new key's
// timestamps start again at 1: the repository is served again, by the
// replica that saw version 1001 and by a fresh one sharing its Redis.
// Without a rotation, a lower timestamp is still a rollback.
func TestFastForwardRecoveryAfterTimestampKeyRotation(t *testing.T) {
	w := newTUFWorld(t)
	replica, _ := w.replicas(t, time.Nanosecond)
	a := replica()
	a.mustPull(t, "library/app:v1")

	s := w.Swizzle()
	must(t, s.OffsetMetadataVersion(data.CanonicalTimestampRole, 1000))
	a.mustPull(t, "library/app:v1") // the fast-forwarded timestamp is now the floor

	w.rotateTimestampKey(t, s) // version 1, signed by the new key
	for name, p := range map[string]*instance{"the replica that saw 1001": a, "a fresh replica": replica()} {
		if got, err := p.pull(t, "library/app:v1"); err != nil || got != w.signed {
			t.Fatalf("%s after the rotation: %v %v", name, got, err)
		}
	}

	must(t, s.OffsetMetadataVersion(data.CanonicalTimestampRole, 5))
	a.mustPull(t, "library/app:v1")
	must(t, s.OffsetMetadataVersion(data.CanonicalTimestampRole, -3))
	status, body := a.manifestV1(t)
	wantDenied(t, status, body, proxy.Reason(trust.Rollback))
}

// TestSnapshotRoleVersionsNeverDecrease (T8, TUF 5.5.5): the server, which
// holds the snapshot and timestamp keys, publishes a new snapshot and
// timestamp that pin an older (genuine, once signed) targets/releases.
// notary's snapshots list no versions, so the check is each role's version
// against the newest stored: the replica that saw the newer one refuses it,
// and so does a fresh replica sharing its Redis; a lone fresh replica,
// which has seen nothing newer, cannot tell.
func TestSnapshotRoleVersionsNeverDecrease(t *testing.T) {
	w := newTUFWorld(t)
	old := w.Meta[data.RoleName(testenv.Releases)]
	w.signImage(t, testenv.Releases, "v2", testenv.Image(t, "tuf v2", 1, 1024))
	w.Publish(t)
	replica, _ := w.replicas(t, time.Nanosecond)
	a := replica()
	a.mustPull(t, "library/app:v2")

	s := w.Swizzle()
	must(t, s.MetadataCache.Set(testenv.Releases, old))
	must(t, s.UpdateSnapshotHashes(data.RoleName(testenv.Releases)))
	must(t, s.OffsetMetadataVersion(data.CanonicalSnapshotRole, 1))
	must(t, s.UpdateTimestampHash())
	must(t, s.OffsetMetadataVersion(data.CanonicalTimestampRole, 1))
	for name, p := range map[string]*instance{"the replica that saw it": a, "a fresh replica on the same redis": replica()} {
		status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
		if status == http.StatusOK {
			t.Fatalf("%s served under a snapshot that pins an older targets/releases", name)
		}
		wantDenied(t, status, body, proxy.Reason(trust.Rollback))
	}
	lone := w.start(t, "", "")
	if status, _, _ := lone.get(t, http.MethodGet, "/v2/library/app/manifests/v1"); status != http.StatusOK {
		t.Fatalf("a replica with no floor refused it too (%d): the test no longer shows what the floor adds", status)
	}
}

// TestSharedViewFloorSurvivesKeyRotation (T23 with shared views, T46): a
// replica that took another's verified view has the view's versions as its
// floor (data_dir/trust/<gun>/floor), and no root of its own. The
// timestamp key is rotated and the new key's timestamps start again at 1;
// a Redis writer replays the last view from before the rotation (genuine,
// within its life) so that a fresh replica takes it. Once that view is
// over, the replica verifies itself and serves: the floor of the old keys
// does not bind under the new root (before: refused as a rollback until the
// new key's versions passed the old ones).
func TestSharedViewFloorSurvivesKeyRotation(t *testing.T) {
	w := newTUFWorld(t)
	const ttl = 4 * time.Second
	replica, d := w.replicas(t, ttl)
	s := w.Swizzle()
	must(t, s.OffsetMetadataVersion(data.CanonicalTimestampRole, 1000))
	a := replica()
	a.mustPull(t, "library/app:v1") // A verifies timestamp 1001 and shares its view
	attacker := newRedisWriter(t, d.Redis.Addr())
	preRotation := attacker.save("trustproxy:verdict:*")
	if len(preRotation) == 0 {
		t.Fatal("no shared view on redis")
	}

	w.rotateTimestampKey(t, s) // version 1, signed by the new key

	b := replica()
	attacker.restore(preRotation) // the view is genuine and not over yet
	if got, err := b.pull(t, "library/app:v1"); err != nil || got != w.signed {
		t.Fatalf("B on the shared view: %v %v", got, err)
	}
	time.Sleep(ttl + 200*time.Millisecond) // B's view is over: B verifies itself
	for i, p := range []*instance{a, b} {
		if got, err := p.pull(t, "library/app:v1"); err != nil || got != w.signed {
			status, _, body := p.get(t, "GET", "/v2/library/app/manifests/v1")
			t.Errorf("replica %c after the rotation, %s after it took a pre-rotation view: %v %v (%d %s)", 'A'+i, ttl, got, err, status, body)
		}
	}
}

// rotateTimestampKey has the owner of w rotate the timestamp key in a new
// root (s, a swizzler over w's metadata whose timestamp was fast-forwarded
// to version 1001) and start the new key's timestamps again at version 1.
func (w *tufWorld) rotateTimestampKey(t *testing.T, s *testutils.MetadataSwizzler) {
	t.Helper()
	key, err := testutils.CreateKey(w.CS, gun, data.CanonicalTimestampRole, data.ECDSAKey)
	must(t, err)
	must(t, s.RotateKey(data.CanonicalTimestampRole, key))
	must(t, s.OffsetMetadataVersion(data.CanonicalRootRole, 1))
	must(t, s.UpdateSnapshotHashes(data.CanonicalRootRole))
	must(t, s.UpdateTimestampHash())
	must(t, s.OffsetMetadataVersion(data.CanonicalTimestampRole, -1000))
}
