package cache

import (
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Shared is the Redis that replicas share, and what every part of
// trustproxy that keeps state there needs to use it: the client, the key
// prefix, whether Redis answers, and the keys derived from the state key
// (redis.state_key_file, a Secret on every replica, never on Redis).
//
// Redis is shared storage, not a trusted party. Whoever can write it (a
// leaked password, a neighbour on a shared Redis) cannot read the state
// key, so every entry that could lead to serving, or that names a place to
// connect to, is sealed: an HMAC under a key derived from the state key
// for its kind, over the entry's full Redis key name and its payload. An
// entry that is not sealed for that kind and key name (planted, altered,
// moved from another key, written by a deployment with another state key)
// is logged, counted in trustproxy_redis_rejected_total{kind} and treated
// as absent. What a replay of genuine old entries can do is each kind's
// own concern: a payload carries its own expiry or version where that
// matters.
type Shared struct {
	Redis  redis.UniversalClient
	Prefix string
	Health *RedisHealth
	// Timeout bounds each call (Bound); DefaultTimeout unless set.
	Timeout time.Duration
	// FloorReplicas is how many Redis replicas a trust floor write waits
	// for (WAIT), at most FloorWait: redis.floor_replicas, floor_wait.
	FloorReplicas int
	FloorWait     time.Duration

	stateKey     []byte
	macKeys      map[Kind][]byte
	rejected     *prometheus.CounterVec
	unreplicated prometheus.Counter
	floorsPushed prometheus.Counter
	log          *slog.Logger

	closeMu sync.Mutex
	closers []func()
}

// OnClose makes Close run f before it closes the Redis client: work in
// the background that writes to Redis or the disk ends there.
func (s *Shared) OnClose(f func()) {
	s.closeMu.Lock()
	s.closers = append(s.closers, f)
	s.closeMu.Unlock()
}

// Close ends the background work OnClose registered, then closes the
// Redis client.
func (s *Shared) Close() error {
	s.closeMu.Lock()
	closers := s.closers
	s.closers = nil
	s.closeMu.Unlock()
	for _, f := range closers {
		f()
	}
	return s.Redis.Close()
}

// A Kind names what a sealed entry is, so that an entry of one kind is
// never taken for another: each kind has its own MAC key.
type Kind string

// The kinds of entries replicas share on Redis.
const (
	KindFloor   Kind = "floor"   // trust metadata version floors (cache)
	KindReport  Kind = "report"  // scan reports (cache)
	KindRefs    Kind = "refs"    // what a verified manifest lists (proxy's reference index)
	KindParents Kind = "parents" // which verified manifests list a digest (proxy's reference index)
	KindLock    Kind = "lock"    // cold blob fill locks, naming the holder's URL (proxy)
	KindRefusal Kind = "refusal" // "no trust data" refusals (trust)
	KindVerdict Kind = "verdict" // verified trust views (trust)
	// KindVerified is a digest a digest source (cosign) verified under a
	// rule, until when (proxy's verified set): the blobs it lists become
	// servable.
	KindVerified Kind = "verified"
	// KindRetention is the storage collector's lock (retention): which
	// replica collects, until when.
	KindRetention Kind = "retention"
	// KindScanLease is the lease of a scan of one manifest (scan gate):
	// which replica scans it, until when.
	KindScanLease Kind = "scanlease"
)

var kinds = []Kind{KindFloor, KindReport, KindRefs, KindParents, KindLock, KindRefusal, KindVerdict, KindRetention, KindVerified, KindScanLease}

// sealVersion is the first byte of every sealed entry.
const sealVersion = 1

// MinStateKey is the shortest state key accepted, in bytes.
const MinStateKey = 32

// NewShared returns the shared state on rdb under prefix, sealed with keys
// derived from stateKey. Its rejection counter is registered on reg (none
// when reg is nil).
func NewShared(rdb redis.UniversalClient, prefix string, stateKey []byte, health *RedisHealth, log *slog.Logger, reg prometheus.Registerer) (*Shared, error) {
	if len(stateKey) < MinStateKey {
		return nil, fmt.Errorf("the state key is %d bytes, want at least %d", len(stateKey), MinStateKey)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Shared{Redis: rdb, Prefix: prefix, Health: health, Timeout: DefaultTimeout, FloorWait: DefaultTimeout,
		stateKey: stateKey, macKeys: map[Kind][]byte{},
		log: log.With("component", "redis"),
		unreplicated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trustproxy_redis_floor_unreplicated_total",
			Help: "Trust floor writes that fewer Redis replicas than redis.floor_replicas acknowledged within redis.floor_wait: a failover then could lose them on Redis (the replica's own floor keeps them).",
		}),
		floorsPushed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trustproxy_redis_floor_pushed_total",
			Help: "Trust floors this replica stored on its own disk alone, Redis not answering or not taking the write, and shared on Redis once it took them (a replica with no floor of its own reads them there).",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustproxy_redis_rejected_total",
			Help: "Entries read from Redis and ignored, by kind: not sealed with this deployment's state key for that key name, or older than what this replica has seen.",
		}, []string{"kind"}),
	}
	if cc, ok := rdb.(*redis.ClusterClient); ok && health != nil {
		health.reload = func() { cc.ReloadState(context.Background()) }
	}
	if health != nil {
		health.probe = func() error {
			ctx, cancel := s.Bound(context.Background())
			defer cancel()
			return rdb.Ping(ctx).Err()
		}
	}
	for _, k := range kinds {
		s.macKeys[k] = s.Derive("trustproxy redis entry " + string(k))
		s.rejected.WithLabelValues(string(k))
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{s.rejected, s.unreplicated, s.floorsPushed} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return s, nil
}

// Bound returns ctx bounded for one call to Redis (Timeout).
func (s *Shared) Bound(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.Timeout)
}

// Derive returns a 32-byte key for purpose, derived from the state key
// (HKDF-SHA256): the replicas' shared secrets (the peers' key, the scan
// credential key) are the same on every replica without being stored on
// Redis. Distinct purposes give independent keys.
func (s *Shared) Derive(purpose string) []byte {
	k, err := hkdf.Key(sha256.New, s.stateKey, nil, purpose, 32)
	if err != nil {
		panic(err) // only for lengths HKDF cannot give
	}
	return k
}

// Key is the full Redis key name of name: the prefix and name.
func (s *Shared) Key(name string) string { return s.Prefix + name }

// Seal returns payload sealed as an entry of kind under the Redis key
// named key (a full name, as Key gives it).
func (s *Shared) Seal(kind Kind, key string, payload []byte) []byte {
	out := make([]byte, 0, 1+sha256.Size+len(payload))
	out = append(out, sealVersion)
	out = s.mac(kind, key, payload, out)
	return append(out, payload...)
}

func (s *Shared) mac(kind Kind, key string, payload, to []byte) []byte {
	mk, ok := s.macKeys[kind]
	if !ok {
		panic("cache: unknown kind " + string(kind))
	}
	m := hmac.New(sha256.New, mk)
	fmt.Fprintf(m, "%d:%s", len(key), key)
	m.Write(payload)
	return m.Sum(to)
}

// Open returns the payload of an entry of kind read from the Redis key
// named key, if it was sealed for them under this state key. Otherwise it
// logs and counts the rejection and returns false: the caller treats the
// entry as absent. An empty entry (none read) is absent without a word.
func (s *Shared) Open(kind Kind, key string, sealed []byte) ([]byte, bool) {
	if len(sealed) == 0 {
		return nil, false
	}
	if len(sealed) < 1+sha256.Size || sealed[0] != sealVersion {
		s.Reject(kind, key, "not a sealed entry")
		return nil, false
	}
	payload := sealed[1+sha256.Size:]
	if !hmac.Equal(s.mac(kind, key, payload, nil), sealed[1:1+sha256.Size]) {
		s.Reject(kind, key, "not sealed with this deployment's state key for this key name")
		return nil, false
	}
	return payload, true
}

// Reject logs and counts an entry of kind at key that is ignored, and why.
func (s *Shared) Reject(kind Kind, key, why string) {
	s.rejected.WithLabelValues(string(kind)).Inc()
	s.log.Warn("ignored an entry on redis: someone who can write to redis may be tampering with it, or another deployment shares the key prefix",
		"kind", kind, "key", key, "reason", why)
}

// Get reads the sealed entry of kind at key, of at most limit bytes of
// payload: nil when there is none, when Redis is down or skipped (Health),
// or when it does not open or is larger.
func (s *Shared) Get(ctx context.Context, kind Kind, key string, limit int) []byte {
	p, _ := s.Lookup(ctx, kind, key, limit)
	return p
}

// Lookup is Get, and says whether Redis answered: false when it is down or
// skipped, so that a nil payload says nothing about what Redis holds.
func (s *Shared) Lookup(ctx context.Context, kind Kind, key string, limit int) (payload []byte, answered bool) {
	if s.Health.Skip() {
		return nil, false
	}
	ctx, cancel := s.Bound(ctx)
	defer cancel()
	b, err := s.Read(ctx, s.Redis, kind, key, limit)
	if s.Health.Failed(err) {
		return nil, false
	}
	if b == nil {
		return nil, true
	}
	p, _ := s.Open(kind, key, b)
	return p, true
}

// readBounded returns the string at KEYS[1] when it holds at most ARGV[1]
// bytes; otherwise its length (-1: the key holds another type). It runs in
// Redis, so an entry someone made huge is never sent to a replica.
var readBounded = redis.NewScript(`
local ok, n = pcall(redis.call, 'STRLEN', KEYS[1])
if not ok then return -1 end
if n == 0 then return false end
if n > tonumber(ARGV[1]) then return n end
return redis.call('GET', KEYS[1])`)

// Read reads the sealed entry of kind at key through c (the client, or a
// transaction watching key), of at most limit bytes of payload, without
// opening it. It returns nil when there is none, and nil after counting a
// rejection when the key holds something larger or of another type; an
// error only when Redis failed.
func (s *Shared) Read(ctx context.Context, c redis.Scripter, kind Kind, key string, limit int) ([]byte, error) {
	v, err := readBounded.Run(ctx, c, []string{key}, limit+1+sha256.Size).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	switch v := v.(type) {
	case string:
		return []byte(v), nil
	case int64:
		if v < 0 {
			s.Reject(kind, key, "the key holds another type")
		} else {
			s.Reject(kind, key, fmt.Sprintf("%d bytes, over the %d bytes an entry of its kind may have", v, limit))
		}
	}
	return nil, nil
}

// membersBounded returns at most ARGV[2] members of the set KEYS[1], each
// of at most ARGV[1] bytes (longer ones are left out, and counted in the
// last element); -1 when the key holds another type.
var membersBounded = redis.NewScript(`
local out, cursor, seen, long = {}, '0', 0, 0
repeat
  local ok, r = pcall(redis.call, 'SSCAN', KEYS[1], cursor, 'COUNT', 256)
  if not ok then return -1 end
  cursor = r[1]
  for _, m in ipairs(r[2]) do
    seen = seen + 1
    if string.len(m) <= tonumber(ARGV[1]) then out[#out+1] = m else long = long + 1 end
    if seen >= tonumber(ARGV[2]) then cursor = '0' break end
  end
until cursor == '0'
out[#out+1] = long
return out`)

// Members returns the payloads of the sealed members of the set at key
// that open as kind, reading at most max members of at most limit bytes of
// payload each; members that do not open, or are larger, are counted as
// rejected. nil when Redis is down or skipped.
func (s *Shared) Members(ctx context.Context, kind Kind, key string, limit, max int) [][]byte {
	if s.Health.Skip() {
		return nil
	}
	ctx, cancel := s.Bound(ctx)
	defer cancel()
	v, err := membersBounded.Run(ctx, s.Redis, []string{key}, limit+1+sha256.Size, max).Result()
	if s.Health.Failed(err) {
		return nil
	}
	list, ok := v.([]any)
	if !ok || len(list) == 0 {
		s.Reject(kind, key, "the key holds another type")
		return nil
	}
	if long, _ := list[len(list)-1].(int64); long > 0 {
		s.Reject(kind, key, fmt.Sprintf("%d members over %d bytes", long, limit))
	}
	var out [][]byte
	for _, m := range list[:len(list)-1] {
		str, _ := m.(string)
		if p, ok := s.Open(kind, key, []byte(str)); ok {
			out = append(out, p)
		}
	}
	return out
}
