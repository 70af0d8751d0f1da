package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/distribution/distribution/v3/registry/storage"
	rediscache "github.com/distribution/distribution/v3/registry/storage/cache/redis"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/cache"
	"github.com/trustproxy/trustproxy/internal/scan"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// Open wires the Server that `trustproxy serve` runs from cfg alone, in this
// order: the Redis client when shared state is configured; the storage
// driver; a purge of the uploads that fills of stopped processes left in
// it; distribution's storage over it (with its Redis blob descriptor cache);
// the trust.Verifier (its floor shared on Redis); the scan gate; the Server
// (its reference index shared on Redis). Metrics are registered on reg.
// Close the Server when done.
func Open(ctx context.Context, cfg *config.Config, log *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	var rdb redis.UniversalClient
	var opts []storage.RegistryOption
	if cfg.Redis.Enabled() {
		var err error
		if rdb, err = cache.NewRedis(cfg.Redis); err != nil {
			return nil, err
		}
		// distribution's keys carry no prefix: give trustproxy its own Redis database.
		opts = append(opts, storage.BlobDescriptorCacheProvider(rediscache.NewRedisBlobDescriptorCacheProvider(rdb)))
	}
	driver, err := newDriver(ctx, cfg.Storage)
	if err != nil {
		return nil, err
	}
	purgeUploads(ctx, driver, staleUploadAge(cfg.Limits), log.With("component", "proxy"))
	store, err := storage.NewRegistry(ctx, driver, opts...)
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	v, err := trust.New(cfg, log, reg)
	if err != nil {
		return nil, fmt.Errorf("trust: %w", err)
	}
	var health *cache.RedisHealth
	if rdb != nil {
		health = cache.NewRedisHealth(log.With("component", "proxy"))
		health.Failed(rdb.Ping(ctx).Err())
		var stateKey []byte
		if cfg.Redis.StateKey != "" {
			stateKey = []byte(cfg.Redis.StateKey)
		}
		v.Share(rdb, cfg.Redis.KeyPrefix, health, stateKey)
	}
	gate, err := newGate(ctx, cfg, rdb, health, log, reg)
	if err != nil {
		return nil, err
	}
	s, err := New(cfg, store, driver, v, gate, log, reg)
	if err != nil {
		return nil, err
	}
	if rdb != nil {
		s.redis, s.health = rdb, health
		health.Watch(s.setDegraded)
		s.index = &sharedIndex{memIndex: newMemIndex(), rdb: rdb, prefix: cfg.Redis.KeyPrefix, health: health, log: s.log}
		if u := strings.TrimSuffix(cfg.Redis.ReplicaURL, "/"); u != "" {
			local := make([]byte, 32)
			_, _ = rand.Read(local)
			key, err := cache.SharedSecret(ctx, rdb, cfg.Redis.KeyPrefix+"peer-key", local)
			if err != nil {
				s.log.Warn("cannot share the replicas' key on redis: this replica fetches cold blobs itself", "err", err)
			} else {
				s.peers = &peers{rdb: rdb, prefix: cfg.Redis.KeyPrefix, self: u, key: key, health: health,
					client: &http.Client{Timeout: 0, Transport: peerTransport()}}
			}
		}
	}
	return s, nil
}

// newGate builds the scan gate when the configuration has one: a rule with
// a scan policy, a scanner, or a token for posted reports. With Redis, its
// reports and its credential key are shared.
func newGate(ctx context.Context, cfg *config.Config, rdb redis.UniversalClient, health *cache.RedisHealth, log *slog.Logger, reg prometheus.Registerer) (*scan.Gate, error) {
	sc := cfg.Scan
	if !slices.ContainsFunc(cfg.Trust.Rules, func(r config.Rule) bool { return r.Scan != nil }) && len(sc.Scanners) == 0 && sc.ReportToken == "" {
		return nil, nil
	}
	dir := filepath.Join(cfg.DataDir, "scan")
	store, err := cache.NewReportStore(dir)
	if err != nil {
		return nil, err
	}
	key, err := scan.LoadKey(filepath.Join(dir, "credential.key"))
	if err != nil {
		return nil, err
	}
	if rdb != nil {
		store.Share(rdb, cfg.Redis.KeyPrefix, health)
		if shared, err := cache.SharedSecret(ctx, rdb, cfg.Redis.KeyPrefix+"scan:credential-key", key); err == nil {
			key = shared
		} else {
			log.Warn("cannot share the scan credential key on redis: scanners must pull from this replica", "err", err)
		}
	}
	creds, err := scan.NewCredentials(key)
	if err != nil {
		return nil, err
	}
	return scan.NewGate(sc, store, creds, scannerClient, log, reg)
}

// peerTransport is the transport of requests to other replicas: they are
// on the cluster network, never through a proxy; a peer that does not
// answer within upstream-like bounds is not waited on.
func peerTransport() *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.ResponseHeaderTimeout = 30 * time.Second
	return tr
}

// scannerClient is the HTTP client of one scanner adapter: its CA file if
// it names one, no redirects, each call bounded by a minute.
func scannerClient(s config.Scanner) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if s.CAFile != "" {
		pem, err := os.ReadFile(s.CAFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", s.CAFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{
		Transport:     tr,
		Timeout:       time.Minute,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}, nil
}
