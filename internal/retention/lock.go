package retention

import (
	"context"
	"encoding/json"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/trustproxy/trustproxy/internal/cache"
)

// lockTTL is how long the collector's lock outlives its holder's last
// refresh; the holder refreshes it every lockTTL/3.
const lockTTL = time.Minute

// lock is the collector's sealed entry on Redis, <prefix>retention:lock:
// which replica holds it, until when, and whether its collection is done
// (then the lock is kept until the next collection is due, so that the
// replicas' timers make one collection per interval, not one each).
type lock struct {
	Owner string    `json:"owner"`
	Until time.Time `json:"until"`
	Done  bool      `json:"done,omitempty"`
}

// heldError says another replica holds the lock (or collected recently).
type heldError struct{ lock }

func (e *heldError) Error() string {
	if e.Done {
		return "another replica collected recently"
	}
	return "another replica is collecting"
}

// swapIfSame replaces KEYS[1] with ARGV[2] for ARGV[3] ms when it still
// holds ARGV[1], or, when ARGV[1] is "", when it holds nothing a replica
// would read: no key, another type, or a string over ARGV[4] bytes (what
// Shared.Read refuses). ARGV[2] "" deletes it.
var swapIfSame = redis.NewScript(`
local t = redis.call('TYPE', KEYS[1])['ok']
local same
if ARGV[1] == '' then
  same = t == 'none' or t ~= 'string' or redis.call('STRLEN', KEYS[1]) > tonumber(ARGV[4])
else
  same = t == 'string' and redis.call('GET', KEYS[1]) == ARGV[1]
end
if not same then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[2] ~= '' then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1`)

// maxLock is the most a lock entry may be, sealed.
const maxLock = 4096

// redisLock is the collector's lock on sh.
type redisLock struct {
	sh    *cache.Shared
	key   string
	owner string
	cur   string // the sealed value this holder last wrote
}

func (l *redisLock) seal(v lock) string {
	b, _ := json.Marshal(v)
	return string(l.sh.Seal(cache.KindRetention, l.key, b))
}

// acquire takes the lock, or returns a *heldError when a genuine lock of
// another holder is not over. An entry that is not sealed for the key
// (planted, altered, of another type or size), or is over (its holder
// died, or it is replayed), is replaced: a Redis writer cannot make
// collections skip beyond replaying a genuine lock until its end; by
// deleting the lock it can make two replicas collect at once, which
// removes nothing that one alone would keep. Any other error is Redis
// failing.
func (l *redisLock) acquire(ctx context.Context) error {
	ctx, cancel := l.sh.Bound(ctx)
	defer cancel()
	raw, err := l.sh.Read(ctx, l.sh.Redis, cache.KindRetention, l.key, maxLock)
	if err != nil {
		return err
	}
	if p, ok := l.sh.Open(cache.KindRetention, l.key, raw); ok {
		var cur lock
		if json.Unmarshal(p, &cur) == nil && time.Now().Before(cur.Until) && cur.Owner != l.owner {
			return &heldError{cur}
		}
	}
	next := l.seal(lock{Owner: l.owner, Until: time.Now().Add(lockTTL)})
	n, err := swapIfSame.Run(ctx, l.sh.Redis, []string{l.key}, string(raw), next, lockTTL.Milliseconds(), maxLock).Int()
	if err != nil {
		return err
	}
	if n == 0 {
		// Someone wrote the key between the read and the swap: another
		// replica just took it.
		return &heldError{lock{Until: time.Now().Add(lockTTL)}}
	}
	l.cur = next
	return nil
}

// refresh extends the lock; false when it is no longer this holder's
// (taken over after it expired, or altered): the collection must stop.
func (l *redisLock) refresh(ctx context.Context) (bool, error) {
	ctx, cancel := l.sh.Bound(ctx)
	defer cancel()
	next := l.seal(lock{Owner: l.owner, Until: time.Now().Add(lockTTL)})
	n, err := swapIfSame.Run(ctx, l.sh.Redis, []string{l.key}, l.cur, next, lockTTL.Milliseconds(), maxLock).Int()
	if err != nil {
		return false, err
	}
	if n == 1 {
		l.cur = next
	}
	return n == 1, nil
}

// release ends the collection: the lock stays, marked done, for hold (so
// the other replicas skip until the next collection is due), or is
// deleted when hold is not positive.
func (l *redisLock) release(ctx context.Context, hold time.Duration) error {
	ctx, cancel := l.sh.Bound(context.WithoutCancel(ctx))
	defer cancel()
	next := ""
	if hold > 0 {
		next = l.seal(lock{Owner: l.owner, Until: time.Now().Add(hold), Done: true})
	}
	return swapIfSame.Run(ctx, l.sh.Redis, []string{l.key}, l.cur, next, max(hold, time.Millisecond).Milliseconds(), maxLock).Err()
}

func newRedisLock(sh *cache.Shared) *redisLock {
	return &redisLock{sh: sh, key: sh.Key("retention:lock"), owner: uuid.NewString()}
}
