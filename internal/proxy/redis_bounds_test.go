package proxy_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

// TestRedisWriterHugeParentsSetReadBounded: a Redis writer plants, under
// <prefix>parents:<digest>, a set of a few huge members. A replica reads
// at most maxSharedParents members of at most the size of a sealed digest
// (the filtering runs in Redis): one anonymous request for that digest
// costs it no more than that, not the planted bytes (before: 512 MiB).
func TestRedisWriterHugeParentsSetReadBounded(t *testing.T) {
	w := newWorld(t)
	rs := testenv.StartRedis(t, "")
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "v1")
	a := w.replica(t, testenv.NewDeployment(t, rs), t.TempDir(), time.Nanosecond)
	a.mustPull(t, "library/app:v1")

	attacker := newRedisWriter(t, rs.Addr())
	target := digest.FromString("no signed manifest lists this")
	const members, size = 8, 16 << 20
	for i := range members {
		m := strings.Repeat(string(rune('a'+i)), size)
		if err := attacker.rdb.SAdd(context.Background(), "trustproxy:parents:"+target.String(), m).Err(); err != nil {
			t.Fatal(err)
		}
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	status, _, _ := a.get(t, http.MethodGet, "/v2/library/app/blobs/"+target.String())
	runtime.ReadMemStats(&after)
	read := after.TotalAlloc - before.TotalAlloc
	t.Logf("one request for a digest with a planted parents set of %d × %d MiB members allocated %.1f MiB", members, size>>20, float64(read)/(1<<20))
	if read > 16<<20 {
		t.Fatalf("one request (%d) for a digest with a planted parents set of %d × %d MiB members allocated %d MiB", status, members, size>>20, read>>20)
	}
}

// TestRedisWriterHugeFloorEntryReadBounded: a Redis writer plants a huge
// string at each role's floor key. Neither the read of the floor nor its
// compare-and-set sends an entry larger than the largest metadata a role
// may be to the replica (before: the compare-and-set read them whole, 783
// MiB for one pull).
func TestRedisWriterHugeFloorEntryReadBounded(t *testing.T) {
	w := newWorld(t)
	rs := testenv.StartRedis(t, "")
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "v1")
	attacker := newRedisWriter(t, rs.Addr())
	sum := sha256.Sum256([]byte(gun))
	const size = 64 << 20
	for _, role := range []string{"root", "timestamp", "snapshot", "targets"} {
		attacker.set("trustproxy:tuf:{"+hex.EncodeToString(sum[:16])+"}:"+role, bytes.Repeat([]byte{'x'}, size))
	}
	a := w.replica(t, testenv.NewDeployment(t, rs), t.TempDir(), time.Nanosecond)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	a.mustPull(t, "library/app:v1")
	runtime.ReadMemStats(&after)
	read := after.TotalAlloc - before.TotalAlloc
	t.Logf("one pull with 4 planted floor entries of %d MiB allocated %.1f MiB", size>>20, float64(read)/(1<<20))
	if read > 64<<20 {
		t.Fatalf("one pull with 4 planted floor entries of %d MiB allocated %d MiB", size>>20, read>>20)
	}
}
