package proxy

import (
	"slices"
	"sync"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// refIndex records what verified manifests refer to, so that "may this
// digest be served?" is a lookup: its parents, then whether one of them is
// a signed target (or inside one). Everything in it is a fact about
// content, keyed by digest, true in every repository and forever; the
// repository's trust view decides which parents count.
//
// The shape is two maps that a shared store holds as they are: refs, a
// manifest digest to its children's descriptors, and parents, a child
// digest to the set of manifests that list it.
type refIndex interface {
	// record stores the children of the verified manifest m.
	record(m digest.Digest, children []v1.Descriptor)
	// children returns what m refers to, and whether m is recorded.
	children(m digest.Digest) ([]v1.Descriptor, bool)
	// parents returns the recorded manifests that refer to d.
	parents(d digest.Digest) []digest.Digest
	// generation changes whenever a recorded manifest is forgotten, so
	// that what was known to be recorded is checked again.
	generation() uint64
}

// memIndex is the in-process refIndex. It keeps the children of at most
// maxIndexed manifests; parents holds only what those refer to, so it is
// bounded with them. An evicted manifest is recorded again from storage
// the next time it is needed.
type memIndex struct {
	refs *lru.Cache[digest.Digest, []v1.Descriptor]

	mu  sync.Mutex
	par map[digest.Digest][]digest.Digest
	gen uint64 // bumped when a manifest is evicted: what was complete may no longer be
}

// maxIndexed bounds the manifests whose children are held in memory.
const maxIndexed = 16384

func newMemIndex() *memIndex {
	x := &memIndex{par: map[digest.Digest][]digest.Digest{}}
	x.refs, _ = lru.NewWithEvict(maxIndexed, x.evicted)
	return x
}

func (x *memIndex) record(m digest.Digest, children []v1.Descriptor) {
	if x.refs.Contains(m) {
		return
	}
	x.mu.Lock()
	for _, c := range children {
		if !slices.Contains(x.par[c.Digest], m) {
			x.par[c.Digest] = append(x.par[c.Digest], m)
		}
	}
	x.mu.Unlock()
	x.refs.Add(m, children)
}

// evicted drops m from the parents of its children.
func (x *memIndex) evicted(m digest.Digest, children []v1.Descriptor) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.gen++
	for _, c := range children {
		p := slices.DeleteFunc(x.par[c.Digest], func(d digest.Digest) bool { return d == m })
		if len(p) == 0 {
			delete(x.par, c.Digest)
		} else {
			x.par[c.Digest] = p
		}
	}
}

func (x *memIndex) children(m digest.Digest) ([]v1.Descriptor, bool) {
	return x.refs.Get(m)
}

func (x *memIndex) parents(d digest.Digest) []digest.Digest {
	x.mu.Lock()
	defer x.mu.Unlock()
	return slices.Clone(x.par[d])
}

func (x *memIndex) generation() uint64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.gen
}
