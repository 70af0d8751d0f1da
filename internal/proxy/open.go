package proxy

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trustproxy/trustproxy/config"
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
	return New(cfg, store, v, log, reg)
}
