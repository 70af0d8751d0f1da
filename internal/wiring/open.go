package wiring

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/cache"
	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/refgraph"
	"github.com/trustproxy/trustproxy/internal/retention"
	"github.com/trustproxy/trustproxy/internal/scan"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// Open wires the proxy that `trustproxy serve` runs from cfg alone, in this
// order: the Redis client and the state key's sealing when shared state is
// configured; the storage driver; a purge of the uploads that fills of
// stopped processes left in it; distribution's storage over it; the
// trust.Verifier (its floor shared on Redis); the scan gate; the reference
// graph (shared on Redis); the pull records, when retention is
// configured; the proxy.Server (its fill locks shared on Redis); the
// storage collector (its lock on Redis), not started. Metrics are
// registered on reg. Close the Proxy when done.
func Open(ctx context.Context, cfg *config.Config, log *slog.Logger, reg prometheus.Registerer) (_ *Proxy, err error) {
	var shared *cache.Shared
	if cfg.Redis.Enabled() {
		rdb, err := cache.NewRedis(cfg.Redis)
		if err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				rdb.Close() // the Server would have closed it
			}
		}()
		health := cache.NewRedisHealth(log.With("component", "proxy"))
		if shared, err = cache.NewShared(rdb, cfg.Redis.KeyPrefix, []byte(cfg.Redis.StateKey), health, log, reg); err != nil {
			return nil, fmt.Errorf("redis.state_key_file: %w", err)
		}
		shared.Timeout, shared.FloorWait = cfg.Redis.Timeout, cfg.Redis.FloorWait
		if n := cfg.Redis.FloorReplicas; n != nil {
			shared.FloorReplicas = *n
		}
		// After the settings: a failure schedules the health probe, which
		// reads them.
		pctx, cancel := context.WithTimeout(ctx, max(cfg.Redis.Timeout, cache.DefaultTimeout))
		health.Failed(rdb.Ping(pctx).Err())
		cancel()
	}
	// distribution's storage is opened without a blob descriptor cache
	// (neither on Redis nor in memory): on Redis its entries would be
	// neither under the key prefix nor sealed, a planted descriptor names
	// which stored bytes a digest is served from, and no request waits on
	// Redis for it. Each descriptor is read from the storage driver.
	driver, err := newDriver(ctx, cfg.Storage)
	if err != nil {
		return nil, err
	}
	purgeUploads(ctx, driver, staleUploadAge(cfg.Limits), log.With("component", "proxy"))
	// Digest resumption off: a fill writes each blob through one writer in
	// one process, so the writer's own hash of every byte is the one to
	// check. With it on, distribution's blob writer compares, before every
	// write, the bytes it hashed with the driver writer's Size; the s3
	// driver's counts only the parts already uploaded (chunksize, 10 MiB by
	// default), so the hash was reset at each write below it and every blob
	// filled through S3 failed its digest (TestS3ColdFillsCommitOnce).
	// distribution's own advice for a caching proxy (DisableDigestResumption).
	store, err := storage.NewRegistry(ctx, driver, storage.DisableDigestResumption)
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	v, err := trust.New(cfg, log, reg)
	if err != nil {
		return nil, fmt.Errorf("trust: %w", err)
	}
	if shared != nil {
		v.Share(shared)
	}
	gate, err := newGate(cfg, shared, log, reg)
	if err != nil {
		return nil, err
	}
	parts := proxy.Parts{Store: store, Driver: driver, Verify: v, Gate: gate, Shared: shared}
	if shared != nil {
		parts.Graph = refgraph.NewShared(shared, log.With("component", "proxy"))
	}
	var pulls *retention.Pulls
	if cfg.Retention.Enabled() {
		pulls = retention.NewPulls(driver, retention.Throttle(cfg.Retention), log.With("component", "retention"))
		parts.Pulls = pulls
	}
	srv, err := proxy.New(cfg, parts, log, reg)
	if err != nil {
		return nil, err
	}
	p := &Proxy{Server: srv}
	if pulls != nil {
		if p.Retention, err = retention.New(cfg, driver, pulls, v, srv, shared, log, reg); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Proxy is what Open wires: the proxy.Server, and the storage collector
// when retention is configured (nil otherwise), which the caller starts.
type Proxy struct {
	*proxy.Server
	Retention *retention.Collector
}

// Close stops the collector, then the Server (proxy.Server.Close).
func (p *Proxy) Close(ctx context.Context) error {
	if p.Retention != nil {
		p.Retention.Stop()
	}
	return p.Server.Close(ctx)
}

// newGate builds the scan gate, also when no rule has a scan policy yet: a
// configuration reload may add one, which must then be enforced. With
// Redis, its reports are shared and its credential key is derived from the
// state key, so a scanner's pull may reach any replica.
func newGate(cfg *config.Config, shared *cache.Shared, log *slog.Logger, reg prometheus.Registerer) (*scan.Gate, error) {
	sc := cfg.Scan
	dir := filepath.Join(cfg.DataDir, "scan")
	store, err := cache.NewReportStore(dir)
	if err != nil {
		return nil, err
	}
	var key []byte
	if shared != nil {
		store.Share(shared)
		key = shared.Derive("trustproxy scan credential key")
	} else if key, err = scan.LoadKey(filepath.Join(dir, "credential.key")); err != nil {
		return nil, err
	}
	creds, err := scan.NewCredentials(key)
	if err != nil {
		return nil, err
	}
	return scan.NewGate(sc, store, creds, scannerClient, log, reg)
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
