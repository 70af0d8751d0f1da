package refgraph

import (
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/redis/go-redis/v9"

	"github.com/trustproxy/trustproxy/internal/cache"
	"github.com/trustproxy/trustproxy/internal/manifest"
)

// Shared is the reference graph of several replicas: what one replica
// verified, the others can look up. Every record goes to the replica's own
// Memory and to Redis; a lookup is the union of both, so a replica that
// cannot reach Redis goes on with what it recorded itself (facts about
// content hold wherever they were learnt).
//
// On Redis: <prefix>refs:<manifest digest> holds the children as JSON, and
// <prefix>parents:<child digest> is the set of manifests that list it. Each
// value and each set member is sealed with the state key for its key name
// (cache.Shared): a record planted by whoever can write Redis, or one moved
// from another key, is ignored, so it cannot make an unsigned manifest or
// blob the "child" of a signed one. A genuine record replayed is a fact
// still. Keys expire after sharedTTL unrecorded: what no replica needs
// anymore goes.
type Shared struct {
	mem *Memory
	sh  *cache.Shared
	log *slog.Logger
}

// NewShared returns the graph shared on sh's Redis, with this replica's
// own Memory in front.
func NewShared(sh *cache.Shared, log *slog.Logger) *Shared {
	return &Shared{mem: NewMemory(), sh: sh, log: log}
}

// sharedTTL is how long a record stays on Redis after it was last
// written.
const sharedTTL = 30 * 24 * time.Hour

// maxSharedParents bounds the parents of one digest read from Redis: a
// set someone grew without bound costs a bounded read.
const maxSharedParents = 4096

type sharedChild struct {
	Digest    digest.Digest `json:"d"`
	Size      int64         `json:"s"`
	MediaType string        `json:"m,omitempty"`
}

func (x *Shared) refsKey(m digest.Digest) string    { return x.sh.Key("refs:" + m.String()) }
func (x *Shared) parentsKey(d digest.Digest) string { return x.sh.Key("parents:" + d.String()) }

func (x *Shared) Record(m digest.Digest, children []v1.Descriptor) {
	_, known := x.mem.Children(m)
	x.mem.Record(m, children)
	if known {
		return // recorded by this replica before, so on Redis too (or Redis was down)
	}
	kept := make([]sharedChild, len(children))
	for i, c := range children {
		kept[i] = sharedChild{Digest: c.Digest, Size: c.Size, MediaType: c.MediaType}
	}
	b, _ := json.Marshal(kept)
	if x.sh.Health.Skip() {
		return
	}
	ctx, cancel := x.sh.Bound(context.Background())
	defer cancel()
	_, err := x.sh.Redis.Pipelined(ctx, func(p redis.Pipeliner) error {
		k := x.refsKey(m)
		p.Set(ctx, k, x.sh.Seal(cache.KindRefs, k, b), sharedTTL)
		for _, c := range children {
			k := x.parentsKey(c.Digest)
			p.SAdd(ctx, k, x.sh.Seal(cache.KindParents, k, []byte(m.String())))
			p.Expire(ctx, k, sharedTTL)
		}
		return nil
	})
	if x.sh.Health.Failed(err) {
		x.log.Debug("cannot record on redis; recorded in this replica only", "manifest", m, "err", err)
	}
}

// maxSharedRefs bounds a refs record read from Redis.
const maxSharedRefs = manifest.MaxRefs * 256

func (x *Shared) Children(m digest.Digest) ([]v1.Descriptor, bool) {
	if c, ok := x.mem.Children(m); ok {
		return c, true
	}
	key := x.refsKey(m)
	b := x.sh.Get(context.Background(), cache.KindRefs, key, maxSharedRefs)
	if b == nil {
		return nil, false
	}
	var kept []sharedChild
	if json.Unmarshal(b, &kept) != nil || len(kept) > manifest.MaxRefs {
		x.sh.Reject(cache.KindRefs, key, "a sealed record that does not read")
		return nil, false
	}
	out := make([]v1.Descriptor, 0, len(kept))
	for _, c := range kept {
		if c.Digest.Validate() != nil {
			x.sh.Reject(cache.KindRefs, key, "a sealed record with an invalid digest")
			return nil, false
		}
		out = append(out, v1.Descriptor{Digest: c.Digest, Size: c.Size, MediaType: internMediaType(c.MediaType)})
	}
	x.mem.Record(m, out) // learnt from another replica: kept here too
	return out, true
}

func (x *Shared) Parents(d digest.Digest) []digest.Digest {
	out := x.mem.Parents(d)
	for _, b := range x.sh.Members(context.Background(), cache.KindParents, x.parentsKey(d), len(digest.SHA256.FromString("").String()), maxSharedParents) {
		p, err := digest.Parse(string(b))
		if err != nil {
			continue
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// Generation is the local graph's: what this replica knew recorded.
func (x *Shared) Generation() uint64 { return x.mem.Generation() }

// Local is what this replica recorded itself.
func (x *Shared) Local() Graph { return x.mem }
