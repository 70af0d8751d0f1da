package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/trustproxy/trustproxy/config"
)

// NewRedis returns the client of cfg: a single node, Sentinels (with
// MasterName) or a Cluster (several Addrs without MasterName).
//
// Every call is bounded by its context (callers give it cfg.Timeout,
// Shared.Bound), dialling and waiting for a pooled connection included,
// and is not retried: while Redis is down or hangs (a listener that
// accepts and never answers) a request waits on it at most that long, then
// the replica keeps to its own state (RedisHealth). go-redis's own
// defaults would retry and wait out socket timeouts of seconds instead.
func NewRedis(cfg config.Redis) (redis.UniversalClient, error) {
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	opts := &redis.UniversalOptions{
		Addrs:                 cfg.Addrs,
		MasterName:            cfg.MasterName,
		Username:              cfg.Username,
		Password:              cfg.Password,
		SentinelUsername:      cfg.SentinelUsername,
		SentinelPassword:      cfg.SentinelPassword,
		DB:                    cfg.DB,
		DialTimeout:           timeout,
		ReadTimeout:           timeout,
		WriteTimeout:          timeout,
		PoolTimeout:           timeout,
		ContextTimeoutEnabled: true,
		MaxRetries:            -1,
		// One dial per attempt: go-redis would dial a refusing node 5 times
		// 100 ms apart, so a Cluster seed or Sentinel master that is gone
		// would eat the whole timeout of the call that tries it first.
		DialerRetries: 1,
	}
	if cfg.TLS.CAFile != "" {
		pem, err := os.ReadFile(cfg.TLS.CAFile)
		if err != nil {
			return nil, fmt.Errorf("redis.tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("redis.tls.ca_file: %s holds no PEM certificate", cfg.TLS.CAFile)
		}
		// Without a ServerName each node's certificate is checked for the
		// host it is dialled at (tls.DialWithDialer): a Sentinel's master,
		// a Cluster's nodes, each under its own name.
		opts.TLSConfig = &tls.Config{RootCAs: pool, ServerName: cfg.TLS.ServerName, MinVersion: tls.VersionTLS12}
	}
	if cfg.Cluster() {
		c := opts.Cluster()
		// go-redis asks a Cluster which node serves which slots every
		// minute by default, and on a MOVED answer: a master that died
		// answers nothing, so after a failover its slots would stay
		// unreachable for up to a minute.
		c.ClusterStateReloadInterval = clusterReload
		return redis.NewClusterClient(c), nil
	}
	return redis.NewUniversalClient(opts), nil
}

// floorRefused is a trust floor write that Redis answered with an error.
type floorRefused struct{ err error }

func (e floorRefused) Error() string { return e.err.Error() }

// clusterReload is how often a Cluster's slot map is read again while
// the client is used.
const clusterReload = time.Second

// DefaultTimeout bounds one call to Redis when redis.timeout is not set.
const DefaultTimeout = 250 * time.Millisecond

// RedisHealth tracks whether Redis answers, for everything that keeps
// state there. After a failure Redis is not asked again for redisRetry:
// requests meanwhile go on with the replica's own state instead of each
// waiting on a dead Redis.
type RedisHealth struct {
	degraded atomic.Bool
	retryAt  atomic.Int64 // unix nanoseconds
	log      *slog.Logger
	mu       sync.Mutex
	watchers []func(degraded bool) // Watch's; the probe's timer calls them too
	// reload, when set, refreshes the client's view of where to reach
	// Redis (a Cluster's slot map): run shortly before the next attempt,
	// so that attempt goes to the masters a failover promoted meanwhile.
	reload func()
	// probe, when set, asks Redis whether it answers (a PING): while Redis
	// is down it runs every redisRetry, so that a replica without traffic
	// comes back too (its readiness and trustproxy_redis_degraded say what
	// it last saw).
	probe   func() error
	probing atomic.Bool // a probe is scheduled
}

// NewRedisHealth returns a RedisHealth that logs changes to log.
func NewRedisHealth(log *slog.Logger) *RedisHealth {
	return &RedisHealth{log: log}
}

// redisRetry is how long Redis is left alone after it failed.
const redisRetry = 5 * time.Second

// Skip says whether Redis is down and not to be asked yet.
func (h *RedisHealth) Skip() bool {
	return h.degraded.Load() && time.Now().UnixNano() < h.retryAt.Load()
}

// Failed records the outcome of a Redis call and says whether it failed:
// nil and redis.Nil are answers.
func (h *RedisHealth) Failed(err error) bool {
	down := err != nil && !errors.Is(err, redis.Nil)
	if down {
		h.retryAt.Store(time.Now().Add(redisRetry).UnixNano())
		if h.reload != nil {
			time.AfterFunc(redisRetry*9/10, h.reload)
		}
		h.scheduleProbe()
	}
	if was := h.degraded.Swap(down); was != down {
		if down {
			h.log.Warn("redis unreachable: this replica keeps to its own state until it is back", "err", err, "retry_every", redisRetry)
		} else {
			h.log.Info("redis reachable again: shared state is used")
		}
		h.mu.Lock()
		watchers := slices.Clone(h.watchers)
		h.mu.Unlock()
		for _, f := range watchers {
			f(down)
		}
	}
	return down
}

// scheduleProbe makes probe run in redisRetry, unless it is already due.
func (h *RedisHealth) scheduleProbe() {
	if h.probe != nil && h.probing.CompareAndSwap(false, true) {
		time.AfterFunc(redisRetry, h.runProbe)
	}
}

// runProbe asks Redis once, unless a call has found it back meanwhile;
// Failed schedules the next probe while it stays down.
func (h *RedisHealth) runProbe() {
	h.probing.Store(false)
	if !h.degraded.Load() {
		return
	}
	if err := h.probe(); !errors.Is(err, redis.ErrClosed) { // closed: the replica is stopping
		h.Failed(err)
	}
}

// Watch makes onChange hear when Redis goes (true) and comes back (false),
// and tells it the state now. Call it before requests are served. It is
// called in the goroutine of the Redis call that saw the change: one that
// has work to do there starts its own.
func (h *RedisHealth) Watch(onChange func(degraded bool)) {
	h.mu.Lock()
	h.watchers = append(h.watchers, onChange)
	h.mu.Unlock()
	onChange(h.degraded.Load())
}

// Degraded says whether Redis was unreachable when last asked.
func (h *RedisHealth) Degraded() bool { return h.degraded.Load() }

// sharedFloor keeps, on Redis, the newest version of every trust role that
// any replica has stored, with its metadata: a replica reads it as its
// cache, so notary refuses what is older (a rollback or freeze attack seen
// by one replica is refused by all), and writes through a compare-and-set
// that refuses to lower a version, atomically per GUN.
//
// Every entry is sealed (Shared): whoever can write Redis but lacks the
// state key can neither plant metadata nor raise a version to lock a
// repository out; such an entry is ignored and overwritten. An entry also
// records the root it was stored under (its version, and the key IDs of
// the role in it, the role's "epoch"): after a verified root rotation that
// replaced a role's keys, entries of the old keys no longer bind (TUF
// 5.3.11, fast-forward recovery).
//
// When Redis cannot be reached the replica goes on with its own on-disk
// floor (degraded, logged and counted); what it stores meanwhile reaches
// Redis as soon as Redis answers again (pendingFloors), and only ever
// raises the shared floor.
type sharedFloor struct {
	*Shared
	limit   int // the largest metadata an entry may hold
	pending *pendingFloors
}

// floorEntry is one role's entry on Redis: its sealed payload is the JSON
// header, a newline, and the metadata.
type floorEntry struct {
	Version int    `json:"v"`
	Root    int    `json:"root"`  // the version of the root it was stored under
	Epoch   string `json:"epoch"` // the role's keys in that root (epochOf)
	blob    []byte
}

func (e *floorEntry) seal(s *Shared, key string) []byte {
	h, _ := json.Marshal(e)
	return s.Seal(KindFloor, key, append(append(h, '\n'), e.blob...))
}

// floorHeader bounds the header of an entry, before its metadata.
const floorHeader = 1024

// openFloor reads a sealed entry; nil when absent or not genuine.
func (f *sharedFloor) openFloor(key string, b []byte) *floorEntry {
	p, ok := f.Open(KindFloor, key, b)
	if !ok {
		return nil
	}
	return f.readFloor(key, p)
}

// readFloor reads the payload p of an entry; nil when it does not read.
func (f *sharedFloor) readFloor(key string, p []byte) *floorEntry {
	h, blob, found := bytes.Cut(p, []byte("\n"))
	var e floorEntry
	if !found || json.Unmarshal(h, &e) != nil {
		f.Reject(KindFloor, key, "a sealed entry that does not read")
		return nil
	}
	e.blob = blob
	if v, err := Version(blob); err != nil || v != e.Version {
		f.Reject(KindFloor, key, "a sealed entry whose metadata does not carry its version")
		return nil
	}
	return &e
}

// key is the Redis key of role name of gun. The roles of one GUN share a
// hash tag: one Cluster slot, so one transaction.
func (f *sharedFloor) key(gun, name string) string {
	sum := sha256.Sum256([]byte(gun))
	return f.Key("tuf:{" + hex.EncodeToString(sum[:16]) + "}:" + escapeRole(name))
}

// get returns the shared entry of role name of gun, or nil when Redis has
// none, cannot be reached, or holds one that is not genuine; answered says
// whether Redis answered.
func (f *sharedFloor) get(gun, name string) (e *floorEntry, answered bool) {
	key := f.key(gun, name)
	b, answered := f.Lookup(context.Background(), KindFloor, key, f.limit+floorHeader)
	if b != nil {
		return f.readFloor(key, b), true
	}
	return nil, answered
}

// errUnanswered is set's answer when Redis could not be asked: the disk
// floor stands alone, if the replica has one (GUNStore.unanswered).
var errUnanswered = errors.New("redis did not answer")

// errNotShared is set's answer when Redis answered and did not take the
// write (NOREPLICAS, OOM, NOPERM; or other writers kept changing the
// keys): Redis is up and its floor readable, but this write is on the
// replica's own disk alone until pushed again (pendingFloors).
var errNotShared = errors.New("redis did not take the trust floor write")

// casRetries bounds the attempts of a compare-and-set that other writers
// keep interrupting.
const casRetries = 5

// set stores entries (role → entry) of gun unless one of them is older
// than a genuine entry of the same epoch on Redis: then it returns a
// *RollbackError and stores nothing. An entry of an older root's epoch is
// replaced; one of a newer root's epoch (this replica has not seen the
// rotation yet) is left as it is. Entries that are not genuine are
// replaced. nil when stored; errUnanswered when Redis cannot be reached;
// errNotShared when it answered and did not take the write.
func (f *sharedFloor) set(gun string, entries map[string]*floorEntry) error {
	if f.Health.Skip() {
		return errUnanswered
	}
	keys := make([]string, 0, len(entries))
	names := make(map[string]string, len(entries))
	for name := range entries {
		k := f.key(gun, name)
		keys = append(keys, k)
		names[k] = name
	}
	wait := f.FloorReplicas > 0
	budget := f.Timeout
	if wait {
		budget += f.FloorWait
	}
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	var rollback, waitErr error
	acked := -1 // replicas that have the write, when it was waited for
	txf := func(tx *redis.Tx) error {
		rollback, waitErr = nil, nil
		write := map[string][]byte{}
		for _, k := range keys {
			e := entries[names[k]]
			b, err := f.Read(ctx, tx, KindFloor, k, f.limit+floorHeader)
			if err != nil {
				return err
			}
			var old *floorEntry
			if b != nil {
				old = f.openFloor(k, b)
			}
			switch {
			case old == nil:
			case old.Epoch != e.Epoch && old.Root > e.Root:
				continue // a rotation this replica has not seen yet: its entry stands
			case old.Epoch != e.Epoch:
			case old.Version > e.Version:
				rollback = &RollbackError{Path: "redis " + k + " (" + gun + " " + names[k] + ")", Stored: old.Version, Offered: e.Version}
				return nil
			case old.Version == e.Version && bytes.Equal(old.blob, e.blob):
				continue
			}
			write[k] = e.seal(f.Shared, k)
		}
		if len(write) == 0 {
			return nil
		}
		cmds, err := tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			for k, v := range write {
				p.Set(ctx, k, v, 0)
			}
			return nil
		})
		var reply redis.Error
		if errors.As(err, &reply) && !errors.Is(err, redis.TxFailedErr) {
			// Redis answered and refused the write (EXECABORT, with the
			// reason on the queued SET: NOREPLICAS, OOM, NOPERM...)
			for _, c := range cmds {
				if c.Err() != nil && c.Err() != err {
					err = fmt.Errorf("%w: %w", err, c.Err())
					break
				}
			}
			return floorRefused{err}
		}
		if err != nil || !wait {
			return err
		}
		// WAIT on the connection that wrote: replication is asynchronous,
		// and a failover promotes a replica that may not have the write.
		// The write is committed whatever WAIT answers: its error (an ACL
		// without +wait, a proxy that refuses it) is not Redis being down.
		n, err := tx.Wait(ctx, f.FloorReplicas, f.FloorWait).Result()
		acked, waitErr = int(n), err
		return nil
	}
	var err error
	for range casRetries {
		if err = f.Redis.Watch(ctx, txf, keys...); !errors.Is(err, redis.TxFailedErr) {
			break
		}
	}
	if errors.Is(err, redis.TxFailedErr) {
		f.log.Warn("the shared trust floor kept changing under this write; this replica's own floor stands", "gun", gun)
		return errNotShared
	}
	if refused := (floorRefused{}); errors.As(err, &refused) {
		// Redis is up: taking it for down would stop this replica
		// reading the shared floor for seconds
		f.unreplicated.Inc()
		if strings.Contains(refused.err.Error(), "READONLY") {
			// A node demoted in a failover, still taken for the master:
			// what the transaction read there may be behind the master.
			f.log.Warn("the redis node this replica takes for the master is a replica (READONLY): the trust floor read there may be behind the master's, so this write rests on this replica's own floor; the client turns to the new master when the failover is announced",
				"gun", gun, "err", refused.err)
			return errUnanswered
		}
		f.log.Warn("redis refused a trust floor write: it is not shared, this replica's own floor keeps it; see the reason (NOREPLICAS: min-replicas-to-write and too few redis replicas; OOM: maxmemory; NOPERM: the redis user's ACL)",
			"gun", gun, "err", refused.err)
		return errNotShared
	}
	if f.Health.Failed(err) {
		return errUnanswered
	}
	if waitErr != nil {
		f.unreplicated.Inc()
		f.log.Warn("WAIT after a trust floor write failed, so nothing says a redis replica has it: a failover could lose it on redis, this replica's own floor keeps it; allow WAIT to trustproxy's redis user (ACL +wait) or set redis.floor_replicas: 0",
			"gun", gun, "err", waitErr)
		return rollback
	}
	if acked >= 0 && acked < f.FloorReplicas {
		f.unreplicated.Inc()
		f.log.Warn("a trust floor write reached fewer redis replicas than redis.floor_replicas within redis.floor_wait: a failover now could lose it on redis, this replica's own floor keeps it; check the replicas' link (INFO replication) or raise floor_wait",
			"gun", gun, "replicas", acked, "want", f.FloorReplicas, "floor_wait", f.FloorWait)
	}
	return rollback
}
