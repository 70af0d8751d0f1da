package refgraph

import (
	"slices"
	"sync"

	"github.com/distribution/distribution/v3/manifest/manifestlist"
	"github.com/distribution/distribution/v3/manifest/schema2"
	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// A Graph records what verified manifests list. Its shape is two maps that
// a shared store holds as they are: refs, a manifest digest to its
// children's descriptors (digest, size, media type), and parents, a child
// digest to the set of manifests that list it.
type Graph interface {
	// Record stores the children of the verified manifest m.
	Record(m digest.Digest, children []v1.Descriptor)
	// Children returns what m lists, and whether m is recorded.
	Children(m digest.Digest) ([]v1.Descriptor, bool)
	// Parents returns the recorded manifests that list d.
	Parents(d digest.Digest) []digest.Digest
	// Generation changes whenever a recorded manifest is forgotten, so
	// that what was known to be recorded is checked again.
	Generation() uint64
	// Local is the part of the graph this process recorded itself, which
	// Find looks at first (a warm replica answers without asking Redis);
	// nil when the whole graph is local.
	Local() Graph
}

// Memory is the in-process Graph. It holds at most maxRecorded
// manifests and maxRecordedChildren children in all, forgetting the least
// recently used manifest first; parents holds only what those refer to,
// so it is bounded with them. A forgotten manifest is recorded again from
// storage the next time it is needed.
type Memory struct {
	mu        sync.Mutex
	refs      *simplelru.LRU[digest.Digest, []v1.Descriptor]
	par       map[digest.Digest][]digest.Digest
	nchildren int    // held in refs, in all
	gen       uint64 // bumped when a manifest is forgotten
}

const (
	// maxRecorded bounds the manifests whose children are held in memory.
	maxRecorded = 16384
	// maxRecordedChildren bounds the children held in memory, in all: a
	// manifest may list up to manifest.MaxRefs.
	maxRecordedChildren = 1 << 18
)

// NewMemory returns an empty in-process Graph.
func NewMemory() *Memory {
	x := &Memory{par: map[digest.Digest][]digest.Digest{}}
	x.refs, _ = simplelru.NewLRU(maxRecorded, x.forget)
	return x
}

func (x *Memory) Record(m digest.Digest, children []v1.Descriptor) {
	kept := make([]v1.Descriptor, len(children))
	for i, c := range children {
		kept[i] = v1.Descriptor{Digest: c.Digest, Size: c.Size, MediaType: internMediaType(c.MediaType)}
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.refs.Contains(m) {
		return
	}
	for x.nchildren+len(kept) > maxRecordedChildren && x.refs.Len() > 0 {
		x.refs.RemoveOldest()
	}
	for _, c := range kept {
		if !slices.Contains(x.par[c.Digest], m) {
			x.par[c.Digest] = append(x.par[c.Digest], m)
		}
	}
	x.nchildren += len(kept)
	x.refs.Add(m, kept)
}

// forget drops m from the parents of its children. The LRU calls it, with
// x.mu held, when m is evicted.
func (x *Memory) forget(m digest.Digest, children []v1.Descriptor) {
	x.gen++
	x.nchildren -= len(children)
	for _, c := range children {
		p := slices.DeleteFunc(x.par[c.Digest], func(d digest.Digest) bool { return d == m })
		if len(p) == 0 {
			delete(x.par, c.Digest)
		} else {
			x.par[c.Digest] = p
		}
	}
}

func (x *Memory) Children(m digest.Digest) ([]v1.Descriptor, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.refs.Get(m)
}

func (x *Memory) Parents(d digest.Digest) []digest.Digest {
	x.mu.Lock()
	defer x.mu.Unlock()
	return slices.Clone(x.par[d])
}

func (x *Memory) Generation() uint64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.gen
}

// Local is nil: the whole of a Memory is local.
func (x *Memory) Local() Graph { return nil }

// internMediaType returns a media type manifests usually list as the one
// shared string, so that recorded children do not each hold a copy.
func internMediaType(mt string) string {
	if c, ok := commonMediaTypes[mt]; ok {
		return c
	}
	return mt
}

var commonMediaTypes = func() map[string]string {
	m := map[string]string{}
	for _, t := range []string{
		v1.MediaTypeImageManifest, v1.MediaTypeImageIndex, v1.MediaTypeImageConfig,
		v1.MediaTypeImageLayer, v1.MediaTypeImageLayerGzip, v1.MediaTypeImageLayerZstd,
		schema2.MediaTypeManifest, manifestlist.MediaTypeManifestList, schema2.MediaTypeImageConfig,
		schema2.MediaTypeLayer, schema2.MediaTypeForeignLayer,
	} {
		m[t] = t
	}
	return m
}()
