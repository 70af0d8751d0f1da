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
// <prefix>parents:<child digest> is the set of manifests that list it. Keys
// expire after sharedIndexTTL unrecorded: what no replica needs anymore
// goes.
type sharedIndex struct {
	*memIndex
	rdb    redis.UniversalClient
	prefix string
	health *cache.RedisHealth
	log    *slog.Logger
}

// sharedIndexTTL is how long a record stays on Redis after it was last
// written.
const sharedIndexTTL = 30 * 24 * time.Hour

type sharedChild struct {
	Digest    digest.Digest `json:"d"`
	Size      int64         `json:"s"`
	MediaType string        `json:"m,omitempty"`
}

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
	if x.health.Skip() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), cache.RedisTimeout)
	defer cancel()
	_, err := x.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, x.prefix+"refs:"+m.String(), b, sharedIndexTTL)
		for _, c := range children {
			k := x.prefix + "parents:" + c.Digest.String()
			p.SAdd(ctx, k, m.String())
			p.Expire(ctx, k, sharedIndexTTL)
		}
		return nil
	})
	if x.health.Failed(err) {
		x.log.Debug("cannot record on redis; recorded in this replica only", "manifest", m, "err", err)
	}
}

func (x *sharedIndex) children(m digest.Digest) ([]v1.Descriptor, bool) {
	if c, ok := x.memIndex.children(m); ok {
		return c, true
	}
	if x.health.Skip() {
		return nil, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), cache.RedisTimeout)
	defer cancel()
	b, err := x.rdb.Get(ctx, x.prefix+"refs:"+m.String()).Bytes()
	if x.health.Failed(err) || err != nil {
		return nil, false
	}
	var kept []sharedChild
	if json.Unmarshal(b, &kept) != nil || len(kept) > maxManifestRefs {
		x.log.Warn("unreadable reference record on redis; ignored", "manifest", m)
		return nil, false
	}
	out := make([]v1.Descriptor, 0, len(kept))
	for _, c := range kept {
		if c.Digest.Validate() != nil {
			return nil, false
		}
		out = append(out, v1.Descriptor{Digest: c.Digest, Size: c.Size, MediaType: internMediaType(c.MediaType)})
	}
	x.memIndex.record(m, out) // learnt from another replica: kept here too
	return out, true
}

func (x *sharedIndex) parents(d digest.Digest) []digest.Digest {
	out := x.memIndex.parents(d)
	if x.health.Skip() {
		return out
	}
	ctx, cancel := context.WithTimeout(context.Background(), cache.RedisTimeout)
	defer cancel()
	shared, err := x.rdb.SMembers(ctx, x.prefix+"parents:"+d.String()).Result()
	if x.health.Failed(err) {
		return out
	}
	for _, s := range shared {
		p, err := digest.Parse(s)
		if err != nil {
			continue
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}
