package cache

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/trustproxy/trustproxy/config"
)

// NewRedis returns the client of cfg: a single node, Sentinels (with
// MasterName) or a Cluster, as go-redis's UniversalClient chooses from it.
func NewRedis(cfg config.Redis) (redis.UniversalClient, error) {
	opts := &redis.UniversalOptions{
		Addrs:        cfg.Addrs,
		MasterName:   cfg.MasterName,
		Username:     cfg.Username,
		Password:     cfg.Password,
		DB:           cfg.DB,
		DialTimeout:  2 * time.Second,
		ReadTimeout:  2 * time.Second,
		WriteTimeout: 2 * time.Second,
		MaxRetries:   1,
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
		opts.TLSConfig = &tls.Config{RootCAs: pool, ServerName: cfg.TLS.ServerName, MinVersion: tls.VersionTLS12}
		if opts.TLSConfig.ServerName == "" && len(cfg.Addrs) > 0 {
			opts.TLSConfig.ServerName, _, _ = net.SplitHostPort(cfg.Addrs[0])
		}
	}
	return redis.NewUniversalClient(opts), nil
}

// RedisTimeout bounds one call to Redis.
const RedisTimeout = 2 * time.Second

// SharedSecret returns the secret every replica uses under key: the one
// stored there on Redis, or, when there is none yet, local, which is
// stored there first. A replica that starts while Redis is down keeps its
// own.
func SharedSecret(ctx context.Context, rdb redis.UniversalClient, key string, local []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, RedisTimeout)
	defer cancel()
	if err := rdb.SetNX(ctx, key, local, 0).Err(); err != nil {
		return nil, err
	}
	b, err := rdb.Get(ctx, key).Bytes()
	if err != nil {
		return nil, err
	}
	if len(b) < 32 {
		return nil, fmt.Errorf("the secret on redis at %s is %d bytes, want 32: delete it", key, len(b))
	}
	return b, nil
}

// RedisHealth tracks whether Redis answers, for everything that keeps
// state there. After a failure Redis is not asked again for redisRetry:
// requests meanwhile go on with the replica's own state instead of each
// waiting on a dead Redis.
type RedisHealth struct {
	degraded atomic.Bool
	retryAt  atomic.Int64 // unix nanoseconds
	log      *slog.Logger
	onChange func(degraded bool)
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
	}
	if was := h.degraded.Swap(down); was != down {
		if down {
			h.log.Warn("redis unreachable: this replica keeps to its own state until it is back", "err", err, "retry_every", redisRetry)
		} else {
			h.log.Info("redis reachable again: shared state is used")
		}
		if h.onChange != nil {
			h.onChange(down)
		}
	}
	return down
}

// Watch makes onChange hear when Redis goes (true) and comes back (false),
// and tells it the state now. Call it before requests are served.
func (h *RedisHealth) Watch(onChange func(degraded bool)) {
	h.onChange = onChange
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
// When Redis cannot be reached the replica goes on with its own on-disk
// floor (degraded, logged and counted); what it stores meanwhile reaches
// Redis with its next write, and only ever raises the shared floor.
type sharedFloor struct {
	rdb    redis.UniversalClient
	prefix string
	health *RedisHealth
}

// setIfNotOlder stores every role unless one of them is older than what
// is stored; then it returns that role's index (1-based) and the stored
// version, and stores nothing. Keys share one hash tag: one Cluster slot.
var setIfNotOlder = redis.NewScript(`
for i, k in ipairs(KEYS) do
  local v = redis.call('HGET', k, 'version')
  if v and tonumber(v) > tonumber(ARGV[2*i-1]) then
    return {i, tonumber(v)}
  end
end
for i, k in ipairs(KEYS) do
  redis.call('HSET', k, 'version', ARGV[2*i-1], 'blob', ARGV[2*i])
end
return {0, 0}
`)

// key is the Redis key of role name of gun.
func (f *sharedFloor) key(gun, name string) string {
	sum := sha256.Sum256([]byte(gun))
	return f.prefix + "tuf:{" + hex.EncodeToString(sum[:16]) + "}:" + escapeRole(name)
}

// get returns the shared metadata of role name of gun, or nil when Redis
// has none or cannot be reached.
func (f *sharedFloor) get(gun, name string) []byte {
	if f.health.Skip() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), RedisTimeout)
	defer cancel()
	m, err := f.rdb.HGetAll(ctx, f.key(gun, name)).Result()
	if f.health.Failed(err) || len(m) == 0 {
		return nil
	}
	return []byte(m["blob"])
}

// set stores metas (role → metadata, versions parsed) of gun.
// It returns a *RollbackError when a role is older on Redis; nil when
// stored, or when Redis cannot be reached (the disk floor stands alone).
func (f *sharedFloor) set(gun string, metas map[string][]byte, versions map[string]int) error {
	var keys []string
	var names []string
	var args []any
	for name, blob := range metas {
		keys = append(keys, f.key(gun, name))
		names = append(names, name)
		args = append(args, strconv.Itoa(versions[name]), blob)
	}
	if f.health.Skip() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), RedisTimeout)
	defer cancel()
	res, err := setIfNotOlder.Run(ctx, f.rdb, keys, args...).Int64Slice()
	if f.health.Failed(err) {
		return nil
	}
	if len(res) == 2 && res[0] > 0 {
		i := res[0] - 1
		return &RollbackError{Path: "redis " + keys[i] + " (" + gun + " " + names[i] + ")", Stored: int(res[1]), Offered: versions[names[i]]}
	}
	return nil
}
