package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/cache"
	"github.com/trustproxy/trustproxy/internal/scan"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// Open wires the Server that `trustproxy serve` runs from cfg alone, in this
// order: the storage driver; a purge of the uploads that fills of stopped
// processes left in it; the trust.Verifier; the Server over both. Metrics
// are registered on reg. Close the Server when done.
func Open(ctx context.Context, cfg *config.Config, log *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	driver, err := newDriver(ctx, cfg.Storage)
	if err != nil {
		return nil, err
	}
	purgeUploads(ctx, driver, staleUploadAge(cfg.Limits), log.With("component", "proxy"))
	store, err := storage.NewRegistry(ctx, driver)
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	v, err := trust.New(cfg, log, reg)
	if err != nil {
		return nil, fmt.Errorf("trust: %w", err)
	}
	gate, err := newGate(cfg, log, reg)
	if err != nil {
		return nil, err
	}
	s, err := New(cfg, store, v, gate, log, reg)
	if err != nil {
		return nil, err
	}
	if cfg.Redis.Enabled() {
		rdb, err := cache.NewRedis(cfg.Redis)
		if err != nil {
			return nil, err
		}
		s.redis = rdb
		v.ShareFloor(rdb, cfg.Redis.KeyPrefix, s.setDegraded)
		if err := rdb.Ping(ctx).Err(); err != nil {
			s.setDegraded(true)
			s.log.Warn("redis unreachable at start: serving with this replica's own trust floor until it answers", "err", err)
		}
	}
	return s, nil
}

// newGate builds the scan gate when the configuration has one: a rule with
// a scan policy, a scanner, or a token for posted reports.
func newGate(cfg *config.Config, log *slog.Logger, reg prometheus.Registerer) (*scan.Gate, error) {
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
