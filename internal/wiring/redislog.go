package wiring

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/redis/go-redis/v9"
)

// LogRedisTo sends go-redis's own messages (a Sentinel naming a new
// master, a pool that failed to dial) to log as component redis, instead
// of plain text on stderr that log collectors cannot parse. go-redis has
// one logger per process: serve sets it once.
func LogRedisTo(log *slog.Logger) { redis.SetLogger(redisLog{log.With("component", "redis")}) }

type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(ctx context.Context, format string, v ...any) {
	l.log.InfoContext(ctx, "go-redis", "detail", fmt.Sprintf(format, v...))
}
