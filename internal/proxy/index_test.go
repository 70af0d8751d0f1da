package proxy

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/internal/trust"
)

// The in-process index stays bounded: a forgotten manifest leaves no
// parent behind, and the generation says something was forgotten.
func TestMemIndexBounded(t *testing.T) {
	x := newMemIndex()
	layer := digest.FromString("shared layer")
	first := digest.FromString("manifest 0")
	for i := range maxIndexed + 10 {
		m := digest.FromString(fmt.Sprint("manifest ", i))
		x.record(m, []v1.Descriptor{{Digest: layer}, {Digest: digest.FromString(fmt.Sprint("own layer ", i))}})
	}
	if got := len(x.parents(layer)); got != maxIndexed {
		t.Fatalf("the shared layer has %d parents, want %d", got, maxIndexed)
	}
	if _, ok := x.children(first); ok {
		t.Fatal("the oldest manifest is still recorded")
	}
	if p := x.parents(digest.FromString("own layer 0")); len(p) != 0 {
		t.Fatalf("a forgotten manifest's layer still has parents %v", p)
	}
	if len(x.par) != maxIndexed+1 {
		t.Fatalf("parents holds %d digests, want %d", len(x.par), maxIndexed+1)
	}
	if x.generation() == 0 {
		t.Fatal("forgetting did not change the generation")
	}
}

// A digest is placed under a signed target only through manifests the
// target lists as manifests: a layer whose bytes were recorded as a
// manifest elsewhere (signed in another repository) lends its children
// nothing here.
func TestLookupOnlyThroughManifests(t *testing.T) {
	s := &Server{index: newMemIndex()}
	signed := digest.FromString("signed image")
	layer := digest.FromString("a layer that is also a manifest")
	platform := digest.FromString("platform manifest")
	hidden := digest.FromString("blob the layer-manifest lists")
	good := digest.FromString("blob of the platform manifest")
	s.index.record(signed, []v1.Descriptor{
		{Digest: layer, MediaType: v1.MediaTypeImageLayerGzip},
		{Digest: platform, MediaType: v1.MediaTypeImageManifest},
	})
	s.index.record(layer, []v1.Descriptor{{Digest: hidden, MediaType: v1.MediaTypeImageLayer}})
	s.index.record(platform, []v1.Descriptor{{Digest: good, MediaType: v1.MediaTypeImageLayer}})
	snap := &trust.Snapshot{Targets: map[string]trust.Target{"v1": {Tag: "v1", Digest: signed}}}
	if _, ok := s.lookup(snap, hidden); ok {
		t.Error("a blob listed by a layer was placed under the signed target")
	}
	if _, ok := s.lookup(snap, good); !ok {
		t.Error("a blob of a platform manifest was not placed under the signed target")
	}
	if _, ok := s.lookup(snap, layer); !ok {
		t.Error("the signed target's own layer was not placed under it")
	}
}

// The index is bounded by the children it holds too: manifests listing
// thousands of descriptors each evict the oldest.
func TestMemIndexChildrenBudget(t *testing.T) {
	x := newMemIndex()
	for m := range 2 * maxIndexedChildren / maxManifestRefs {
		children := make([]v1.Descriptor, maxManifestRefs)
		for i := range children {
			children[i] = v1.Descriptor{Digest: digest.FromString(fmt.Sprint(m, "/", i)), MediaType: v1.MediaTypeImageLayerGzip}
		}
		x.record(digest.FromString(fmt.Sprint("manifest ", m)), children)
	}
	if x.nchildren > maxIndexedChildren || len(x.par) > maxIndexedChildren {
		t.Fatalf("the index holds %d children and %d parent lists, want at most %d", x.nchildren, len(x.par), maxIndexedChildren)
	}
	if _, ok := x.children(digest.FromString("manifest 0")); ok {
		t.Fatal("the oldest manifest is still recorded")
	}
}

// countingIndex counts the index calls a lookup or a recording pass makes.
type countingIndex struct {
	*memIndex
	parentCalls, childCalls atomic.Int64
}

func (c *countingIndex) parents(d digest.Digest) []digest.Digest {
	c.parentCalls.Add(1)
	return c.memIndex.parents(d)
}

func (c *countingIndex) children(m digest.Digest) ([]v1.Descriptor, bool) {
	c.childCalls.Add(1)
	return c.memIndex.children(m)
}

// lattice records, as another repository's signed targets could, n indexes
// S listing n indexes R listing n indexes Q listing n image manifests P,
// each P listing layer: 4n manifests with n^4 paths from S to the layer.
func lattice(x refIndex, n int, layer digest.Digest) {
	level := func(name string, i int) digest.Digest { return digest.FromString(fmt.Sprint(name, i)) }
	list := func(name string, mt string) []v1.Descriptor {
		out := make([]v1.Descriptor, n)
		for i := range n {
			out[i] = v1.Descriptor{Digest: level(name, i), MediaType: mt}
		}
		return out
	}
	for i := range n {
		x.record(level("P", i), []v1.Descriptor{{Digest: level("config", i), MediaType: v1.MediaTypeImageConfig}, {Digest: layer, MediaType: v1.MediaTypeImageLayerGzip}})
		x.record(level("Q", i), list("P", v1.MediaTypeImageManifest))
		x.record(level("R", i), list("Q", v1.MediaTypeImageIndex))
		x.record(level("S", i), list("R", v1.MediaTypeImageIndex))
	}
}

// One repository's manifests cannot make lookups elsewhere expensive: a
// lookup considers each recorded manifest once, however many paths lead
// through it.
func TestLookupWorkBoundedByIndexSize(t *testing.T) {
	for _, n := range []int{10, 20, 40} {
		x := &countingIndex{memIndex: newMemIndex()}
		s := &Server{index: x}
		layer := digest.FromString("a popular layer")
		lattice(x, n, layer)
		victim := &trust.Snapshot{Targets: map[string]trust.Target{"v1": {Tag: "v1", Digest: digest.FromString("victim image")}}}
		if _, ok := s.lookup(victim, layer); ok {
			t.Fatal("placed under a target the victim does not sign")
		}
		if c := x.parentCalls.Load(); c > int64(2*4*n) {
			t.Errorf("n=%d: one lookup made %d parents() calls for %d recorded manifests", n, c, 4*n)
		}
		signer := &trust.Snapshot{Targets: map[string]trust.Target{"s": {Tag: "s", Digest: digest.FromString("S3")}}}
		if _, ok := s.lookup(signer, layer); !ok {
			t.Fatalf("n=%d: the layer is not placed under a signed index three levels up", n)
		}
	}
}

// A recording pass reads and walks each manifest once.
func TestRecordWorkBoundedByIndexSize(t *testing.T) {
	const n = 30
	x := &countingIndex{memIndex: newMemIndex()}
	lattice(x, n, digest.FromString("a popular layer"))
	s := &Server{index: x}
	seen := map[digest.Digest]bool{}
	for i := range n {
		if err := s.record(t.Context(), &request{gun: "docker.io/x/y"}, v1.Descriptor{Digest: digest.FromString(fmt.Sprint("S", i))}, 0, seen); err != nil {
			t.Fatal(err)
		}
	}
	if c := x.childCalls.Load(); c > int64(4*n) {
		t.Errorf("recording %d signed indexes (%d manifests) made %d children() calls", n, 4*n, c)
	}
}
