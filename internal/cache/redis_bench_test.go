package cache

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/trustproxy/trustproxy/config"
)

// BenchmarkFloorWriteNewRepository measures what WAIT (redis.floor_replicas)
// costs a new repository: one op stores the first floor of a new GUN (root,
// targets, snapshot, timestamp, one WATCH transaction) on a Redis master
// with two replicas, redis-server processes on 127.0.0.1, without waiting
// and waiting for one and for two replicas. (testenv's StartSentinel cannot
// be used here: testenv imports this package.) Compare the sub-benchmarks of one
// run:
//
//	go test ./internal/cache -run '^$' -bench FloorWriteNewRepository -benchtime 2000x
func BenchmarkFloorWriteNewRepository(b *testing.B) {
	master := startRedisNode(b, "")
	startRedisNode(b, master)
	startRedisNode(b, master)
	rdb, err := NewRedis(config.Redis{Addrs: []string{master}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { rdb.Close() })
	for _, replicas := range []int{0, 1, 2} {
		b.Run(fmt.Sprintf("floor_replicas=%d", replicas), func(b *testing.B) {
			f := benchFloor(b, rdb, replicas)
			i := 0
			for b.Loop() {
				i++
				gun := fmt.Sprintf("docker.io/bench/%d-%d", replicas, i)
				entries := map[string]*floorEntry{}
				for _, role := range []string{"root", "targets", "snapshot", "timestamp"} {
					entries[role] = &floorEntry{Version: 1, Root: 1, Epoch: role + "-key", blob: meta(1)}
				}
				if err := f.set(gun, entries); err != nil {
					b.Fatal(err)
				}
				if f.Health.Degraded() {
					b.Fatal("redis unreachable")
				}
			}
			if n := testutil.ToFloat64(f.unreplicated); n > 0 {
				b.Fatalf("%v writes not acknowledged by %d replicas within floor_wait", n, replicas)
			}
		})
	}
}

func benchFloor(b testing.TB, rdb redis.UniversalClient, replicas int) *sharedFloor {
	b.Helper()
	sh, err := NewShared(rdb, "bench:", []byte("bench-state-key-0123456789abcdef0123"), NewRedisHealth(slog.New(slog.DiscardHandler)), nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	sh.FloorReplicas = replicas
	return &sharedFloor{Shared: sh, limit: 1 << 20}
}

// startRedisNode starts redis-server on a free 127.0.0.1 port, a replica of
// master when that is not "", with the further arguments extra, and waits
// until it answers (a replica: until its link to master is up). It is
// killed at b.Cleanup.
func startRedisNode(b testing.TB, master string, extra ...string) string {
	b.Helper()
	return startRedisNodeAt(b, freeAddr(b), master, extra...)
}

// freeAddr is a loopback address nothing listens on.
func freeAddr(b testing.TB) string {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startRedisNodeAt is startRedisNode on addr.
func startRedisNodeAt(b testing.TB, addr, master string, extra ...string) string {
	b.Helper()
	_, port, _ := net.SplitHostPort(addr)
	args := []string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", b.TempDir(),
		"--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"}
	if master != "" {
		h, p, _ := net.SplitHostPort(master)
		args = append(args, "--replicaof", h, p)
	}
	args = append(args, extra...)
	cmd := exec.Command("redis-server", args...)
	if err := cmd.Start(); err != nil {
		b.Fatalf("redis-server (apt-get install -y redis-server): %v", err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		info, err := c.Info(context.Background(), "replication").Result()
		if err == nil && (master == "" || strings.Contains(info, "master_link_status:up")) {
			return addr
		}
		if time.Now().After(deadline) {
			b.Fatalf("redis-server on %s: %v %s", addr, err, info)
		}
	}
}
