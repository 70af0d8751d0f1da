package cache

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trustproxy/trustproxy/config"
)

func leaseShared(t *testing.T) *Shared {
	t.Helper()
	rdb, err := NewRedis(config.Redis{Addrs: []string{startRedisNode(t, "")}})
	must(t, err)
	t.Cleanup(func() { rdb.Close() })
	sh, err := NewShared(rdb, "lease:", []byte("lease-state-key-0123456789abcdef0123"), NewRedisHealth(slog.New(slog.DiscardHandler)), nil, nil)
	must(t, err)
	return sh
}

// TestLeasePlantedNoEntryReplaced: whatever a Redis writer plants at a
// lease's key that Read takes for no entry (an empty string, one just over
// the bound, another type) is replaced by Acquire: it cannot make every
// replica go on alone (each fetching the blob, each running the scan).
func TestLeasePlantedNoEntryReplaced(t *testing.T) {
	sh := leaseShared(t)
	ctx := context.Background()
	for name, plant := range map[string]func(key string) error{
		"empty":       func(k string) error { return sh.Redis.Set(ctx, k, "", 0).Err() },
		"just over":   func(k string) error { return sh.Redis.Set(ctx, k, strings.Repeat("x", leaseRead+1), 0).Err() },
		"at the edge": func(k string) error { return sh.Redis.Set(ctx, k, strings.Repeat("x", leaseRead), 0).Err() },
		"far over":    func(k string) error { return sh.Redis.Set(ctx, k, strings.Repeat("x", 1<<16), 0).Err() },
		"a hash":      func(k string) error { return sh.Redis.HSet(ctx, k, "url", "http://attacker").Err() },
	} {
		t.Run(name, func(t *testing.T) {
			key := "lease:fill:" + name
			must(t, plant(key))
			l, holder := sh.Acquire(KindLock, key, "http://me", 15*time.Second)
			if l == nil {
				t.Fatalf("the planted value held the lease off (holder %+v)", holder)
			}
			l.Release()
		})
	}
}

// TestLeaseNoteAfterReleaseWritesNothing: a note set after the lease was
// released (a fill's deferred SetNote racing its Release) does not put the
// lease back on Redis, where it would name this replica as a holder with
// nothing refreshing it.
func TestLeaseNoteAfterReleaseWritesNothing(t *testing.T) {
	sh := leaseShared(t)
	l, _ := sh.Acquire(KindLock, "lease:fill:x", "http://me", 15*time.Second)
	if l == nil {
		t.Fatal("no lease")
	}
	l.Release()
	l.SetNote("upload-id")
	if n, err := sh.Redis.Exists(context.Background(), "lease:fill:x").Result(); err != nil || n != 0 {
		t.Fatalf("the lease is on Redis again after Release and SetNote (%d, %v)", n, err)
	}
}

// TestLeaseReleaseForAndLost: a lease released for a while (ReleaseFor,
// a storage collection just done) holds the others off, marked done,
// until its end; what a Redis writer plants there (an entry not sealed,
// a genuine one replayed after its end) is replaced; and a holder whose
// lease was taken hears it on Lost, and its Release leaves the new
// holder's entry alone.
func TestLeaseReleaseForAndLost(t *testing.T) {
	sh := leaseShared(t)
	ctx := context.Background()
	const key = "lease:retention:lock"
	a, _ := sh.Acquire(KindRetention, key, "", time.Minute)
	if a == nil {
		t.Fatal("no lease")
	}
	if l, holder := sh.Acquire(KindRetention, key, "", time.Minute); l != nil || holder == nil || holder.Done {
		t.Fatalf("Acquire while a holds the lease: %v, %+v; want a's entry, not done", l, holder)
	}
	a.ReleaseFor(time.Hour)
	if l, holder := sh.Acquire(KindRetention, key, "", time.Minute); l != nil || holder == nil || !holder.Done {
		t.Fatalf("Acquire after a released it for an hour: %v, %+v; want a's entry, done", l, holder)
	}
	if ttl := sh.Redis.PTTL(ctx, key).Val(); ttl < 59*time.Minute {
		t.Fatalf("a lease released for an hour lives %v on Redis", ttl)
	}

	for name, plant := range map[string]string{
		"not sealed": `{"owner":"mallory","until":"2999-01-01T00:00:00Z","done":true}`,
		"replayed":   newLease(sh, KindRetention, key, "", -time.Second).seal(),
	} {
		must(t, sh.Redis.Set(ctx, key, plant, 0).Err())
		l, holder := sh.Acquire(KindRetention, key, "", time.Minute)
		if l == nil {
			t.Fatalf("%s: the planted entry held the lease off (holder %+v)", name, holder)
		}
		l.Release()
	}

	b, _ := sh.Acquire(KindRetention, key, "", 300*time.Millisecond)
	if b == nil {
		t.Fatal("no lease for b")
	}
	must(t, sh.Redis.Del(ctx, key).Err()) // its entry lost (a Redis writer, or expired while Redis hung)
	c, _ := sh.Acquire(KindRetention, key, "", time.Minute)
	if c == nil {
		t.Fatal("no lease for c")
	}
	select {
	case <-b.Lost():
	case <-time.After(5 * time.Second):
		t.Fatal("b did not hear that its lease was taken")
	}
	b.Release()
	if _, holder := sh.Acquire(KindRetention, key, "", time.Minute); holder == nil || holder.Owner != c.entry.Owner {
		t.Fatalf("after b's Release the lease names %+v, want c", holder)
	}
	c.Release()
}

// TestLeaseTakenBackFromRedisWriter: what a Redis writer does to a held
// lease (deletes it, plants an entry not sealed, replays the holder's own
// older entry) does not end the holder's work (a storage collection
// stopping at each, never finishing): its next refresh takes the lease
// back. Only another replica's live entry ends it (Lost).
func TestLeaseTakenBackFromRedisWriter(t *testing.T) {
	sh := leaseShared(t)
	ctx := context.Background()
	const key = "lease:retention:lock"
	l, _ := sh.Acquire(KindRetention, key, "", 300*time.Millisecond)
	if l == nil {
		t.Fatal("no lease")
	}
	defer l.Release()
	l.mu.Lock()
	older := l.cur
	l.mu.Unlock()
	for name, plant := range map[string]func() error{
		"deleted": func() error { return sh.Redis.Del(ctx, key).Err() },
		"not sealed": func() error {
			return sh.Redis.Set(ctx, key, `{"owner":"mallory","until":"2999-01-01T00:00:00Z"}`, 0).Err()
		},
		"replayed": func() error { return sh.Redis.Set(ctx, key, older, 0).Err() },
	} {
		must(t, plant())
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if e := sh.ReadLease(ctx, KindRetention, key); e != nil && e.Owner == l.entry.Owner && e.raw != older {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the holder did not take its lease back within 5s", name)
			}
		}
		select {
		case <-l.Lost():
			t.Fatalf("%s: the holder took its lease for lost", name)
		default:
		}
	}
}

// TestHealthBackWithoutTraffic: a replica that found Redis down and then
// gets no request learns that Redis is back by itself, within a few
// redisRetry: its readiness and trustproxy_redis_degraded do not keep
// saying "unreachable" until the next request, and Watch's callback hears
// it from the probe.
func TestHealthBackWithoutTraffic(t *testing.T) {
	addr := freeAddr(t)
	rdb, err := NewRedis(config.Redis{Addrs: []string{addr}})
	must(t, err)
	t.Cleanup(func() { rdb.Close() })
	health := NewRedisHealth(slog.New(slog.DiscardHandler))
	sh, err := NewShared(rdb, "health:", []byte("health-state-key-0123456789abcdef0123"), health, nil, nil)
	must(t, err)
	ctx, cancel := sh.Bound(t.Context())
	down := health.Failed(rdb.Ping(ctx).Err())
	cancel()
	if !down {
		t.Fatal("a Redis nobody listens for answers")
	}
	var heard atomic.Int64
	health.Watch(func(degraded bool) {
		if !degraded {
			heard.Add(1)
		}
	})
	startRedisNodeAt(t, addr, "")
	start := time.Now()
	for health.Degraded() {
		if time.Since(start) > 3*redisRetry {
			t.Fatalf("still degraded %s after Redis came back, with no call made", time.Since(start).Round(time.Millisecond))
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("back %s after Redis came back", time.Since(start).Round(time.Millisecond))
	for heard.Load() == 0 {
		if time.Since(start) > 3*redisRetry {
			t.Fatal("Watch's callback did not hear that Redis is back")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
