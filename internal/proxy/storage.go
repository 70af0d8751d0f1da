package proxy

import (
	"context"
	"fmt"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"

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
