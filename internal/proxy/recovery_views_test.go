package proxy_test

import (
	"strings"
	"testing"
	"time"

	"github.com/theupdateframework/notary/tuf/data"
	"github.com/theupdateframework/notary/tuf/testutils"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

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
	rs := testenv.StartRedis(t, "")
	storage := t.TempDir()
	const ttl = 4 * time.Second
	replica := func() *instance {
		cfg := w.config(t, t.TempDir(), "", sharedYAML(t, storage, rs.Addr()))
		return start(t, strings.Replace(cfg, "refresh_ttl: 1ns", "refresh_ttl: "+ttl.String(), 1))
	}
	s := w.swizzle()
	must(t, s.OffsetMetadataVersion(data.CanonicalTimestampRole, 1000))
	a := replica()
	a.mustPull(t, "library/app:v1") // A verifies timestamp 1001 and shares its view
	attacker := newRedisWriter(t, rs.Addr())
	preRotation := attacker.save("trustproxy:verdict:*")
	if len(preRotation) == 0 {
		t.Fatal("no shared view on redis")
	}

	key, err := testutils.CreateKey(w.cs, gun, data.CanonicalTimestampRole, data.ECDSAKey)
	must(t, err)
	must(t, s.RotateKey(data.CanonicalTimestampRole, key))
	must(t, s.OffsetMetadataVersion(data.CanonicalRootRole, 1))
	must(t, s.UpdateSnapshotHashes(data.CanonicalRootRole))
	must(t, s.UpdateTimestampHash())
	must(t, s.OffsetMetadataVersion(data.CanonicalTimestampRole, -1000)) // version 1, signed by the new key

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
