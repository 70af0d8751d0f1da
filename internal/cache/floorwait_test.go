package cache

import (
	"context"
	"errors"
	"testing"
	"time"

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
			if err := f.set("docker.io/library/app", entries); tc.written && err != nil || !tc.written && !errors.Is(err, errNotShared) {
				t.Fatalf("set: %v, want %v", err, map[bool]error{true: nil, false: errNotShared}[tc.written])
			}
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

// TestFloorWriteToReplicaRests: a node that refuses the floor write as a
// replica (READONLY: a master demoted in a failover that the client still
// takes for the master) may be behind the master, so what the write's
// transaction read there is no floor to rely on. A replica with no floor
// of its own for the GUN is refused (FloorUnreadableError) and stores
// nothing; Redis is not taken for down.
func TestFloorWriteToReplicaRests(t *testing.T) {
	master := startRedisNode(t, "")
	rdb, err := NewRedis(config.Redis{Addrs: []string{startRedisNode(t, master)}})
	must(t, err)
	t.Cleanup(func() { rdb.Close() })
	f := benchFloor(t, rdb, 0)
	entries := map[string]*floorEntry{"timestamp": {Version: 1, Root: 1, Epoch: "key", blob: meta(1)}}
	if err := f.set("docker.io/library/app", entries); !errors.Is(err, errUnanswered) {
		t.Fatalf("a floor write refused READONLY: %v, want errUnanswered", err)
	}
	if f.Health.Degraded() {
		t.Error("an answering Redis was taken for down")
	}
	m, err := NewMetadataStore(t.TempDir(), nil)
	must(t, err)
	m.Share(f.Shared, 1<<20)
	s := m.For("docker.io/library/app", "")
	if err := s.Set("timestamp", meta(1)); !errors.As(err, new(*FloorUnreadableError)) {
		t.Fatalf("a fresh GUN's timestamp written through a READONLY node: %v, want a FloorUnreadableError", err)
	}
	if _, err := s.GetSized("timestamp", 1<<20); err == nil {
		t.Fatal("the refused timestamp was stored on disk")
	}
}

// TestFloorRestingOnDiskPushedAgain: a floor write that Redis answered
// and did not take (READONLY: a master demoted in a failover, still taken
// for the master; NOREPLICAS: min-replicas-to-write on a master whose
// replicas are not back yet) rests on the disk of a GUN with a floor of
// its own, and is pushed again without waiting for the GUN's next read:
// once the node takes writes, Redis has it, and it is counted.
func TestFloorRestingOnDiskPushedAgain(t *testing.T) {
	for _, tc := range []struct {
		name string
		node func(t *testing.T) string
		heal []any
	}{
		{"READONLY", func(t *testing.T) string { return startRedisNode(t, startRedisNode(t, "")) }, []any{"REPLICAOF", "NO", "ONE"}},
		{"NOREPLICAS", func(t *testing.T) string { return startRedisNode(t, "", "--min-replicas-to-write", "1") }, []any{"CONFIG", "SET", "min-replicas-to-write", "0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rdb, err := NewRedis(config.Redis{Addrs: []string{tc.node(t)}})
			must(t, err)
			t.Cleanup(func() { rdb.Close() })
			f := benchFloor(t, rdb, 0)
			dir := t.TempDir()
			const gun = "docker.io/library/app"
			alone, err := NewMetadataStore(dir, nil)
			must(t, err)
			must(t, alone.For(gun, "").Set("timestamp", meta(1))) // its own floor, from before
			m, err := NewMetadataStore(dir, nil)
			must(t, err)
			m.Share(f.Shared, 1<<20)
			t.Cleanup(m.shared.pending.close)
			if err := m.For(gun, "").Set("timestamp", meta(2)); err != nil {
				t.Fatalf("a timestamp over the GUN's own floor, refused by redis: %v", err)
			}
			must(t, rdb.Do(context.Background(), tc.heal...).Err())
			for deadline := time.Now().Add(3 * redisRetry); ; time.Sleep(100 * time.Millisecond) {
				if e, _ := f.get(gun, "timestamp"); e != nil && e.Version == 2 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the floor redis did not take is not on redis %s after it takes writes", 3*redisRetry)
				}
			}
			if n := testutil.ToFloat64(f.floorsPushed); n != 1 {
				t.Errorf("trustproxy_redis_floor_pushed_total = %v, want 1", n)
			}
		})
	}
}
