package cache

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/trustproxy/trustproxy/config"
)

// TestFloorWaitRefusedStaysHealthy: a Redis that takes the floor write but
// refuses WAIT after it (renamed away here; an ACL without +wait, or a
// proxy, does the same), or refuses the write itself for want of replicas
// (min-replicas-to-write), is answering: the write is counted as
// unreplicated and this replica goes on using Redis. Were it taken for
// Redis down, every first pull of a new repository would make the replica
// ignore the shared floor for seconds, where a replayed older version is
// refused only by its own disk.
func TestFloorWaitRefusedStaysHealthy(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		written bool
	}{
		{"WAIT refused", []string{"--rename-command", "WAIT", ""}, true},
		{"NOREPLICAS", []string{"--min-replicas-to-write", "1"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rdb, err := NewRedis(config.Redis{Addrs: []string{startRedisNode(t, "", tc.args...)}})
			must(t, err)
			t.Cleanup(func() { rdb.Close() })
			f := benchFloor(t, rdb, 1)
			entries := map[string]*floorEntry{"timestamp": {Version: 1, Root: 1, Epoch: "key", blob: meta(1)}}
			must(t, f.set("docker.io/library/app", entries))
			if f.Health.Degraded() || f.Health.Skip() {
				t.Error("an answering Redis was taken for down after a floor write")
			}
			if n := testutil.ToFloat64(f.unreplicated); n != 1 {
				t.Errorf("trustproxy_redis_floor_unreplicated_total = %v, want 1", n)
			}
			n, err := rdb.Exists(context.Background(), f.key("docker.io/library/app", "timestamp")).Result()
			must(t, err)
			if (n == 1) != tc.written {
				t.Errorf("the floor key exists: %v, want %v", n == 1, tc.written)
			}
		})
	}
}
