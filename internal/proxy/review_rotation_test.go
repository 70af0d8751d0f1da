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
// floor (data_dir/trust/<gun>/floor) but no root of its own. When the
// timestamp key is rotated and the new key's timestamps start again at 1,
// that replica cannot tell the rotation (no disk root to compare the new
// root with), so its floor from the old key's epoch refuses every new
// timestamp as a rollback: the repository is locked out on that replica
// until the new key's versions pass the old ones. A Redis writer replays
// the last pre-rotation view (within its life) to make every replica that
// has not verified the repository itself take it.
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
