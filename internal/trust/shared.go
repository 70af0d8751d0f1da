package trust

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/trustproxy/trustproxy/internal/cache"
)

// sharedRefusals keeps "no trust data" refusals on Redis for
// trust.refusal_ttl, so a flood of requests for made-up or unsigned names
// spread over the replicas asks the Notary server once per name per TTL,
// not once per replica. Only that refusal is shared: it is what the Notary
// server said, the same for every replica, where an unreachable server, a
// replica's own cache or its pinning state are that replica's (one fresh
// replica refusing as trust_unavailable must not deny the others their
// cached trust data). A refusal read from Redis can deny, never admit. Verified trust views are not shared; each replica verifies
// its own (one TUF refresh per repository per refresh_ttl), so that
// nothing written to Redis can make a replica serve what it did not verify.
type sharedRefusals struct {
	rdb    redis.UniversalClient
	prefix string
	health *cache.RedisHealth
}

type sharedRefusal struct {
	Reason Reason `json:"reason"`
	Detail string `json:"detail"`
}

func (s *sharedRefusals) key(gun string) string {
	sum := sha256.Sum256([]byte(gun))
	return s.prefix + "refusal:" + hex.EncodeToString(sum[:16])
}

// get returns the refusal of gun another replica stored, or nil.
func (s *sharedRefusals) get(gun string) *RefusalError {
	if s == nil || s.health.Skip() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	b, err := s.rdb.Get(ctx, s.key(gun)).Bytes()
	if s.health.Failed(err) || err != nil {
		return nil
	}
	var r sharedRefusal
	if json.Unmarshal(b, &r) != nil || r.Reason != NoTrustData {
		return nil
	}
	return &RefusalError{GUN: gun, Reason: r.Reason, Detail: r.Detail + " (refused by another replica within trust.refusal_ttl)"}
}

// put stores rerr for ttl; a nil rerr removes what is stored.
func (s *sharedRefusals) put(gun string, rerr *RefusalError, ttl time.Duration) {
	if s == nil || s.health.Skip() || (rerr != nil && rerr.Reason != NoTrustData) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if rerr == nil {
		s.health.Failed(s.rdb.Del(ctx, s.key(gun)).Err())
		return
	}
	detail := rerr.Detail
	if rerr.Err != nil {
		detail += ": " + rerr.Err.Error()
	}
	b, _ := json.Marshal(sharedRefusal{Reason: rerr.Reason, Detail: detail})
	s.health.Failed(s.rdb.Set(ctx, s.key(gun), b, ttl).Err())
}
