package trust

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/trustproxy/trustproxy/internal/cache"
)

// sharedState is what a replica's Verifier shares on Redis.
//
// It keeps "no trust data" refusals on Redis for
// trust.refusal_ttl, so a flood of requests for made-up or unsigned names
// spread over the replicas asks the Notary server once per name per TTL,
// not once per replica. Only that refusal is shared: it is what the Notary
// server said, the same for every replica, where an unreachable server, a
// replica's own cache or its pinning state are that replica's (one fresh
// replica refusing as trust_unavailable must not deny the others their
// cached trust data). A refusal read from Redis can deny, never admit.
//
// With a state key (redis.state_key_file, from the Secret, never from
// Redis) it also shares verified trust views, signed with it, for as long
// as the replica that verified them would use them itself: a replica then
// reuses another's verification. Without the key nothing written to Redis
// can pass as a verification.
type sharedState struct {
	rdb      redis.UniversalClient
	prefix   string
	health   *cache.RedisHealth
	stateKey []byte // signs shared verdicts; nil: verdicts are not shared
}

type sharedRefusal struct {
	Reason Reason `json:"reason"`
	Detail string `json:"detail"`
}

func (s *sharedState) key(gun string) string {
	sum := sha256.Sum256([]byte(gun))
	return s.prefix + "refusal:" + hex.EncodeToString(sum[:16])
}

// get returns the refusal of gun another replica stored, or nil.
func (s *sharedState) get(gun string) *RefusalError {
	if s == nil || s.health.Skip() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), cache.RedisTimeout)
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
func (s *sharedState) put(gun string, rerr *RefusalError, ttl time.Duration) {
	if s == nil || s.health.Skip() || (rerr != nil && rerr.Reason != NoTrustData) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), cache.RedisTimeout)
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

// sharedVerdict is a verified trust view as replicas share it: the
// Snapshot's facts, the policy they were judged under, until when they may
// be used, signed with the state key.
type sharedVerdict struct {
	Policy      string                   `json:"policy"` // policyStamp of the rule and pinning that judged it
	Until       time.Time                `json:"until"`
	GUN         string                   `json:"gun"`
	Targets     map[string]Target        `json:"targets"`
	Refused     map[string]sharedRefusal `json:"refused"`
	Checked     time.Time                `json:"checked"`
	Expires     time.Time                `json:"expires"`
	Refreshed   time.Time                `json:"refreshed"`
	Unreachable string                   `json:"unreachable,omitempty"`
}

func (s *sharedState) verdictKey(gun, policy string) string {
	sum := sha256.Sum256([]byte(gun + "\n" + policy))
	return s.prefix + "verdict:" + hex.EncodeToString(sum[:16])
}

// putVerdict shares snap, judged under policy, until until. Nothing is
// shared without a state key.
func (s *sharedState) putVerdict(snap *Snapshot, policy string, until time.Time) {
	ttl := time.Until(until)
	if s == nil || s.stateKey == nil || ttl <= 0 || s.health.Skip() {
		return
	}
	v := sharedVerdict{Policy: policy, Until: until, GUN: snap.GUN, Targets: snap.Targets, Refused: map[string]sharedRefusal{},
		Checked: snap.Checked, Expires: snap.Expires, Refreshed: snap.Refreshed, Unreachable: snap.Unreachable}
	for tag, r := range snap.Refused {
		v.Refused[tag] = sharedRefusal{Reason: r.Reason, Detail: r.Detail}
	}
	payload, err := json.Marshal(v)
	if err != nil {
		return
	}
	mac := hmac.New(sha256.New, s.stateKey)
	mac.Write(payload)
	b := append(mac.Sum(nil), payload...)
	ctx, cancel := context.WithTimeout(context.Background(), cache.RedisTimeout)
	defer cancel()
	s.health.Failed(s.rdb.Set(ctx, s.verdictKey(snap.GUN, policy), b, ttl).Err())
}

// verdict returns a view of gun that another replica verified under the
// same policy, and until when it may be used; nil when there is none, or
// when what Redis holds is not signed with the state key.
func (s *sharedState) verdict(gun, policy string) (*Snapshot, time.Time) {
	if s == nil || s.stateKey == nil || s.health.Skip() {
		return nil, time.Time{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), cache.RedisTimeout)
	defer cancel()
	b, err := s.rdb.Get(ctx, s.verdictKey(gun, policy)).Bytes()
	if s.health.Failed(err) || err != nil || len(b) < sha256.Size {
		return nil, time.Time{}
	}
	mac := hmac.New(sha256.New, s.stateKey)
	mac.Write(b[sha256.Size:])
	var v sharedVerdict
	if !hmac.Equal(mac.Sum(nil), b[:sha256.Size]) || json.Unmarshal(b[sha256.Size:], &v) != nil ||
		v.GUN != gun || v.Policy != policy || !time.Now().Before(v.Until) || !time.Now().Before(v.Expires) {
		return nil, time.Time{}
	}
	snap := &Snapshot{GUN: gun, Targets: v.Targets, Refused: map[string]*RefusalError{}, Checked: v.Checked,
		Expires: v.Expires, Refreshed: v.Refreshed, Unreachable: v.Unreachable}
	if snap.Targets == nil {
		snap.Targets = map[string]Target{}
	}
	for tag, r := range v.Refused {
		snap.Refused[tag] = &RefusalError{GUN: gun, Ref: tag, Reason: r.Reason, Detail: r.Detail}
	}
	snap.index()
	return snap, v.Until
}
