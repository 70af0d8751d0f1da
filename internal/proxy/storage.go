package proxy

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/trust"

	// The drivers every build has; cmd/trustproxy links the cloud ones.
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
)

// NewStorage opens distribution storage as cfg describes it: one driver name
// with its parameters (config validation ensured exactly one).
func NewStorage(ctx context.Context, cfg map[string]map[string]any) (distribution.Namespace, error) {
	for name, params := range cfg {
		d, err := factory.Create(ctx, name, params)
		if err != nil {
			return nil, fmt.Errorf("storage driver %s: %w", name, err)
		}
		ns, err := storage.NewRegistry(ctx, d)
		if err != nil {
			return nil, fmt.Errorf("storage: %w", err)
		}
		return ns, nil
	}
	return nil, fmt.Errorf("storage: no driver configured")
}

// Open wires a Server from cfg alone: its trust.Verifier and its storage,
// with metrics on reg. It is what `trustproxy serve` runs.
func Open(ctx context.Context, cfg *config.Config, log *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	v, err := trust.New(cfg, log, reg)
	if err != nil {
		return nil, fmt.Errorf("trust: %w", err)
	}
	store, err := NewStorage(ctx, cfg.Storage)
	if err != nil {
		return nil, err
	}
	return New(cfg, store, v, log, reg)
}
