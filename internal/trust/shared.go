package trust

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"time"

	"github.com/trustproxy/trustproxy/internal/cache"
)

// sharedState is what a replica's Verifier shares on Redis, every entry
// sealed with the state key (cache.Shared): what is not sealed for its key
// name is ignored.
//
// It keeps "no trust data" refusals on Redis for trust.refusal_ttl, so a
// flood of requests for made-up or unsigned names spread over the replicas
// asks the Notary server once per name per TTL, not once per replica. Only
// that refusal is shared: it is what the Notary server said, the same for
// every replica, where an unreachable server, a replica's own cache or its
// pinning state are that replica's (one fresh replica refusing as
// trust_unavailable must not deny the others their cached trust data). A
// refusal read from Redis can deny, never admit, and carries its own end: a
// replayed one denies no longer than the TTL it was written for.
//
// It also shares verified trust views, for as long as the replica that
// verified them would use them itself: a replica then reuses another's
// verification. A view carries the versions of the metadata it rests on; a
// replica takes it only when none is below its own floor, and raises its
// floor to them (a replayed older view is refused by every replica that
// saw a newer one).
type sharedState struct {
	*cache.Shared
	log func(msg string, args ...any)
}

type sharedRefusal struct {
	GUN    string    `json:"gun"`
	Reason Reason    `json:"reason"`
	Detail string    `json:"detail"`
	Until  time.Time `json:"until"`
}

// What is read of a refusal or a view on Redis: a refusal is a reason and
// a sentence or two; a view lists a repository's signed tags.
const (
	maxSharedRefusal = 16 << 10
	maxSharedView    = 8 << 20
)

func (s *sharedState) key(gun string) string {
	sum := sha256.Sum256([]byte(gun))
	return s.Key("refusal:" + hex.EncodeToString(sum[:16]))
}

// get returns the refusal of gun another replica stored, or nil.
func (s *sharedState) get(gun string) *RefusalError {
	if s == nil {
		return nil
	}
	key := s.key(gun)
	b := s.Get(context.Background(), cache.KindRefusal, key, maxSharedRefusal)
	if b == nil {
		return nil
	}
	var r sharedRefusal
	if json.Unmarshal(b, &r) != nil || r.GUN != gun || r.Reason != NoTrustData {
		s.Reject(cache.KindRefusal, key, "a sealed refusal that does not read")
		return nil
	}
	if !time.Now().Before(r.Until) {
		return nil // its time is over: a replay of an old one
	}
	return &RefusalError{GUN: gun, Reason: r.Reason, Detail: r.Detail + " (refused by another replica within trust.refusal_ttl)"}
}

// put stores rerr for ttl; a nil rerr removes what is stored.
func (s *sharedState) put(gun string, rerr *RefusalError, ttl time.Duration) {
	if s == nil || s.Health.Skip() || (rerr != nil && rerr.Reason != NoTrustData) {
		return
	}
	ctx, cancel := s.Bound(context.Background())
	defer cancel()
	key := s.key(gun)
	if rerr == nil {
		s.Health.Failed(s.Redis.Del(ctx, key).Err())
		return
	}
	detail := rerr.Detail
	if rerr.Err != nil {
		detail += ": " + rerr.Err.Error()
	}
	if len(detail) > maxSharedRefusal/4 {
		detail = detail[:maxSharedRefusal/4] + "..."
	}
	b, _ := json.Marshal(sharedRefusal{GUN: gun, Reason: rerr.Reason, Detail: detail, Until: time.Now().Add(ttl)})
	s.Health.Failed(s.Redis.Set(ctx, key, s.Seal(cache.KindRefusal, key, b), ttl).Err())
}

// sharedVerdict is a verified trust view as replicas share it: the
// View's facts, the policy they were judged under, until when they may
// be used.
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
	Versions    map[string]int           `json:"versions"`
	Keys        map[string][]string      `json:"keys"`
}

func (s *sharedState) verdictKey(gun, policy string) string {
	sum := sha256.Sum256([]byte(gun + "\n" + policy))
	return s.Key("verdict:" + hex.EncodeToString(sum[:16]))
}

// putVerdict shares view, judged under policy, until until.
func (s *sharedState) putVerdict(view *View, policy string, until time.Time) {
	ttl := time.Until(until)
	if s == nil || ttl <= 0 || s.Health.Skip() {
		return
	}
	v := sharedVerdict{Policy: policy, Until: until, GUN: view.GUN, Targets: view.Targets, Refused: map[string]sharedRefusal{},
		Checked: view.Checked, Expires: view.Expires, Refreshed: view.Refreshed, Unreachable: view.Unreachable, Versions: view.Versions, Keys: view.Keys}
	for tag, r := range view.Refused {
		v.Refused[tag] = sharedRefusal{Reason: r.Reason, Detail: r.Detail}
	}
	payload, err := json.Marshal(v)
	if err != nil {
		return
	}
	ctx, cancel := s.Bound(context.Background())
	defer cancel()
	key := s.verdictKey(view.GUN, policy)
	s.Health.Failed(s.Redis.Set(ctx, key, s.Seal(cache.KindVerdict, key, payload), ttl).Err())
}

// verdict returns a view of gun that another replica verified under the
// same policy, and until when it may be used; nil when there is none, when
// what Redis holds is not genuine or is over, or when it rests on metadata
// older than store's floor. Using it raises store's floor to its versions.
func (s *sharedState) verdict(gun, policy string, store *cache.GUNStore) (*View, time.Time) {
	if s == nil {
		return nil, time.Time{}
	}
	key := s.verdictKey(gun, policy)
	b := s.Get(context.Background(), cache.KindVerdict, key, maxSharedView)
	if b == nil {
		return nil, time.Time{}
	}
	var v sharedVerdict
	if json.Unmarshal(b, &v) != nil || v.GUN != gun || v.Policy != policy || len(v.Versions) == 0 || len(v.Keys) == 0 {
		s.Reject(cache.KindVerdict, key, "a sealed view that does not read, or of another repository or policy")
		return nil, time.Time{}
	}
	if now := time.Now(); !now.Before(v.Until) || !now.Before(v.Expires) {
		return nil, time.Time{}
	}
	if err := store.RaiseFloor(v.Versions, v.Keys); err != nil {
		if errors.As(err, new(*cache.RollbackError)) {
			s.Reject(cache.KindVerdict, key, "a view older than what this replica has seen: "+err.Error())
		} else {
			s.log("cannot raise the trust floor to a shared view; verifying here", "gun", gun, "err", err)
		}
		return nil, time.Time{}
	}
	view := &View{GUN: gun, Targets: v.Targets, Refused: map[string]*RefusalError{}, Checked: v.Checked,
		Expires: v.Expires, Refreshed: v.Refreshed, Unreachable: v.Unreachable, Versions: v.Versions, Keys: v.Keys}
	if view.Targets == nil {
		view.Targets = map[string]Target{}
	}
	for tag, r := range v.Refused {
		view.Refused[tag] = &RefusalError{GUN: gun, Ref: tag, Reason: r.Reason, Detail: r.Detail}
	}
	view.index()
	return view, v.Until
}
