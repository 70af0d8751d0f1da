package proxy

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
)

// sharedIndex is the reference index of several replicas: what one replica
// verified, the others can look up. Every record goes to the replica's own
// memIndex and to Redis; a lookup is the union of both, so a replica that
// cannot reach Redis goes on with what it recorded itself (facts about
// content hold wherever they were learnt).
//
// On Redis: <prefix>refs:<manifest digest> holds the children as JSON, and
// <prefix>parents:<child digest> is the set of manifests that list it. Each
// value and each set member is sealed with the state key for its key name
// (cache.Shared): a record planted by whoever can write Redis, or one moved
// from another key, is ignored, so it cannot make an unsigned manifest or
// blob the "child" of a signed one. A genuine record replayed is a fact
// still. Keys expire after sharedIndexTTL unrecorded: what no replica needs
// anymore goes.
type sharedIndex struct {
	*memIndex
	*cache.Shared
	log *slog.Logger
}

// sharedIndexTTL is how long a record stays on Redis after it was last
// written.
const sharedIndexTTL = 30 * 24 * time.Hour

// maxSharedParents bounds the parents of one digest read from Redis: a
// set someone grew without bound costs a bounded read.
const maxSharedParents = 4096

type sharedChild struct {
	Digest    digest.Digest `json:"d"`
	Size      int64         `json:"s"`
	MediaType string        `json:"m,omitempty"`
}

func (x *sharedIndex) refsKey(m digest.Digest) string    { return x.Key("refs:" + m.String()) }
func (x *sharedIndex) parentsKey(d digest.Digest) string { return x.Key("parents:" + d.String()) }

func (x *sharedIndex) record(m digest.Digest, children []v1.Descriptor) {
	_, known := x.memIndex.children(m)
	x.memIndex.record(m, children)
	if known {
		return // recorded by this replica before, so on Redis too (or Redis was down)
	}
	kept := make([]sharedChild, len(children))
	for i, c := range children {
		kept[i] = sharedChild{Digest: c.Digest, Size: c.Size, MediaType: c.MediaType}
	}
	b, _ := json.Marshal(kept)
	if x.Health.Skip() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), cache.RedisTimeout)
	defer cancel()
	_, err := x.Redis.Pipelined(ctx, func(p redis.Pipeliner) error {
		k := x.refsKey(m)
		p.Set(ctx, k, x.Seal(cache.KindRefs, k, b), sharedIndexTTL)
		for _, c := range children {
			k := x.parentsKey(c.Digest)
			p.SAdd(ctx, k, x.Seal(cache.KindParents, k, []byte(m.String())))
			p.Expire(ctx, k, sharedIndexTTL)
		}
		return nil
	})
	if x.Health.Failed(err) {
		x.log.Debug("cannot record on redis; recorded in this replica only", "manifest", m, "err", err)
	}
}

// maxSharedRefs bounds a refs record read from Redis.
const maxSharedRefs = maxManifestRefs * 256

func (x *sharedIndex) children(m digest.Digest) ([]v1.Descriptor, bool) {
	if c, ok := x.memIndex.children(m); ok {
		return c, true
	}
	key := x.refsKey(m)
	b := x.Get(context.Background(), cache.KindRefs, key, maxSharedRefs)
	if b == nil {
		return nil, false
	}
	var kept []sharedChild
	if json.Unmarshal(b, &kept) != nil || len(kept) > maxManifestRefs {
		x.Reject(cache.KindRefs, key, "a sealed record that does not read")
		return nil, false
	}
	out := make([]v1.Descriptor, 0, len(kept))
	for _, c := range kept {
		if c.Digest.Validate() != nil {
			x.Reject(cache.KindRefs, key, "a sealed record with an invalid digest")
			return nil, false
		}
		out = append(out, v1.Descriptor{Digest: c.Digest, Size: c.Size, MediaType: internMediaType(c.MediaType)})
	}
	x.memIndex.record(m, out) // learnt from another replica: kept here too
	return out, true
}

func (x *sharedIndex) parents(d digest.Digest) []digest.Digest {
	out := x.memIndex.parents(d)
	for _, b := range x.Members(context.Background(), cache.KindParents, x.parentsKey(d), len(digest.SHA256.FromString("").String()), maxSharedParents) {
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
