package retention

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/cache"
	"github.com/trustproxy/trustproxy/internal/gun"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// Verifier gives the verified trust view of a repository: its current
// signed targets. Its errors are refusals or trust data unavailable; the
// collector then keeps everything stored for the repository.
type Verifier interface {
	View(ctx context.Context, name gun.Name, r *config.Rule) (*trust.View, error)
}

var _ Verifier = (*trust.Verifier)(nil)

// Server is what the collector asks the proxy that serves (proxy.Server
// is one): whether this process is filling a blob, and which rule of the
// configuration it runs now, a reload's once applied, judges a
// repository, so that what is kept is what is served.
type Server interface {
	Filling(d digest.Digest) bool
	RuleFor(gun string) *config.Rule
}

// Collector removes stored content that retention allows, one collection
// at a time across the replicas that share its Redis.
type Collector struct {
	cfg           config.Retention
	manifestBytes int64
	driver        storagedriver.StorageDriver
	pulls         *Pulls
	verify        Verifier
	server        Server
	shared        *cache.Shared // nil: no other replica to take turns with
	lockKey       string        // the collector's lock on shared
	log           *slog.Logger
	metrics       *metrics
	now           func() time.Time

	// AfterMark, when set, is called by every collection between its mark
	// (what stays is decided) and its sweep (each removal checked again,
	// then done). Tests use it to pull, or to start another replica's
	// collection, at that point; it is nil in trustproxy serve.
	AfterMark func(ctx context.Context)

	stopOnce sync.Once
	stop     context.CancelFunc
	stopped  chan struct{}
}

// Throttle is how often a replica rewrites one repository's record of
// one manifest's pull: at most once a minute, and at most a tenth of
// max_age.
func Throttle(cfg config.Retention) time.Duration {
	if cfg.MaxAge > 0 {
		return min(time.Minute, cfg.MaxAge/10)
	}
	return time.Minute
}

// New returns the collector of cfg.Retention over the storage driver d,
// whose pull records are pulls, judging repositories with v under the rule
// srv runs now, and asking srv which blobs are being filled here; with sh,
// it takes turns with the other replicas through a lock on Redis and
// leaves alone the blobs they are filling. Its metrics are registered on
// reg.
func New(cfg *config.Config, d storagedriver.StorageDriver, pulls *Pulls, v Verifier, srv Server, sh *cache.Shared, log *slog.Logger, reg prometheus.Registerer) (*Collector, error) {
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	c := &Collector{cfg: cfg.Retention, manifestBytes: cfg.Limits.ManifestBytes, driver: d, pulls: pulls,
		verify: v, server: srv, shared: sh, log: log.With("component", "retention"), metrics: m, now: time.Now,
		stopped: make(chan struct{})}
	if sh != nil {
		c.lockKey = sh.Key("retention:lock")
	}
	return c, nil
}

// Start runs a collection every retention.interval (the first after a
// random part of it, so that replicas started together do not all ask at
// once), until Stop.
func (c *Collector) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	c.stop = cancel
	go func() {
		defer close(c.stopped)
		wait := time.Duration(rand.Int64N(int64(c.cfg.Interval)))
		c.log.Info("retention collector started", "max_age", c.cfg.MaxAge, "max_bytes", int64(c.cfg.MaxBytes),
			"interval", c.cfg.Interval, "dry_run", c.cfg.DryRun, "first_in", wait)
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			_, _ = c.Collect(ctx) // Collect logs and counts its outcome
			wait = c.cfg.Interval
		}
	}()
}

// Stop stops the collector started by Start, cancelling a collection in
// progress (what it removed until then stays removed; nothing is half
// removed but a blob's links, which the next collection finishes), and
// waits for it to end.
func (c *Collector) Stop() {
	c.stopOnce.Do(func() {
		if c.stop == nil {
			return
		}
		c.stop()
		<-c.stopped
	})
}

// metrics are the collector's Prometheus collectors.
type metrics struct {
	runs      *prometheus.CounterVec
	removed   *prometheus.CounterVec
	freed     prometheus.Counter
	last      prometheus.Gauge
	stored    prometheus.Gauge
	wouldFree prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustproxy_retention_runs_total",
			Help: "Storage collections, by result: collected, dry_run, skipped (another replica collects, or Redis is unreachable), failed.",
		}, []string{"result"}),
		removed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustproxy_retention_removed_total",
			Help: "Blobs removed from storage by retention, by kind: manifest or blob.",
		}, []string{"kind"}),
		freed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trustproxy_retention_freed_bytes_total",
			Help: "Bytes of the blobs removed from storage by retention.",
		}),
		last: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trustproxy_retention_last_run_timestamp_seconds",
			Help: "When this replica last began a collection (not a skipped one).",
		}),
		stored: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trustproxy_retention_stored_bytes",
			Help: "Bytes of the blobs in storage after this replica's last collection.",
		}),
		wouldFree: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trustproxy_retention_dry_run_bytes",
			Help: "Bytes the last dry run would have removed.",
		}),
	}
	for _, r := range []string{"collected", "dry_run", "skipped", "failed"} {
		m.runs.WithLabelValues(r)
	}
	for _, k := range []string{"manifest", "blob"} {
		m.removed.WithLabelValues(k)
	}
	if reg != nil {
		for _, col := range []prometheus.Collector{m.runs, m.removed, m.freed, m.last, m.stored, m.wouldFree} {
			if err := reg.Register(col); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
