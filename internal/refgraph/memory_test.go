package refgraph

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/internal/manifest"
)

// The in-process graph stays bounded: a forgotten manifest leaves no
// parent behind, and the generation says something was forgotten.
func TestMemoryBounded(t *testing.T) {
	x := NewMemory()
	layer := digest.FromString("shared layer")
	first := digest.FromString("manifest 0")
	for i := range maxRecorded + 10 {
		m := digest.FromString(fmt.Sprint("manifest ", i))
		x.Record(m, []v1.Descriptor{{Digest: layer}, {Digest: digest.FromString(fmt.Sprint("own layer ", i))}})
	}
	if got := len(x.Parents(layer)); got != maxRecorded {
		t.Fatalf("the shared layer has %d parents, want %d", got, maxRecorded)
	}
	if _, ok := x.Children(first); ok {
		t.Fatal("the oldest manifest is still recorded")
	}
	if p := x.Parents(digest.FromString("own layer 0")); len(p) != 0 {
		t.Fatalf("a forgotten manifest's layer still has parents %v", p)
	}
	if len(x.par) != maxRecorded+1 {
		t.Fatalf("parents holds %d digests, want %d", len(x.par), maxRecorded+1)
	}
	if x.Generation() == 0 {
		t.Fatal("forgetting did not change the generation")
	}
}

// A digest is placed under a signed target only through manifests the
// target lists as manifests: a layer whose bytes were recorded as a
// manifest elsewhere (signed in another repository) lends its children
// nothing here.
func TestLookupOnlyThroughManifests(t *testing.T) {
	x := NewMemory()
	signed := digest.FromString("signed image")
	layer := digest.FromString("a layer that is also a manifest")
	platform := digest.FromString("platform manifest")
	hidden := digest.FromString("blob the layer-manifest lists")
	good := digest.FromString("blob of the platform manifest")
	x.Record(signed, []v1.Descriptor{
		{Digest: layer, MediaType: v1.MediaTypeImageLayerGzip},
		{Digest: platform, MediaType: v1.MediaTypeImageManifest},
	})
	x.Record(layer, []v1.Descriptor{{Digest: hidden, MediaType: v1.MediaTypeImageLayer}})
	x.Record(platform, []v1.Descriptor{{Digest: good, MediaType: v1.MediaTypeImageLayer}})
	snap := signs(signed)
	if _, ok := Find(x, snap, hidden); ok {
		t.Error("a blob listed by a layer was placed under the signed target")
	}
	if _, ok := Find(x, snap, good); !ok {
		t.Error("a blob of a platform manifest was not placed under the signed target")
	}
	if _, ok := Find(x, snap, layer); !ok {
		t.Error("the signed target's own layer was not placed under it")
	}
}

// The graph is bounded by the children it holds too: manifests listing
// thousands of descriptors each evict the oldest.
func TestMemoryChildrenBudget(t *testing.T) {
	x := NewMemory()
	for m := range 2 * maxRecordedChildren / manifest.MaxRefs {
		children := make([]v1.Descriptor, manifest.MaxRefs)
		for i := range children {
			children[i] = v1.Descriptor{Digest: digest.FromString(fmt.Sprint(m, "/", i)), MediaType: v1.MediaTypeImageLayerGzip}
		}
		x.Record(digest.FromString(fmt.Sprint("manifest ", m)), children)
	}
	if x.nchildren > maxRecordedChildren || len(x.par) > maxRecordedChildren {
		t.Fatalf("the graph holds %d children and %d parent lists, want at most %d", x.nchildren, len(x.par), maxRecordedChildren)
	}
	if _, ok := x.Children(digest.FromString("manifest 0")); ok {
		t.Fatal("the oldest manifest is still recorded")
	}
}

// signs is a trust view whose signed targets are ds.
func signs(ds ...digest.Digest) Signed {
	return func(d digest.Digest) (int64, bool) {
		for _, s := range ds {
			if s == d {
				return 0, true
			}
		}
		return 0, false
	}
}

// countingGraph counts the graph calls a lookup or a recording pass makes.
type countingGraph struct {
	*Memory
	parentCalls, childCalls atomic.Int64
}

func (c *countingGraph) Parents(d digest.Digest) []digest.Digest {
	c.parentCalls.Add(1)
	return c.Memory.Parents(d)
}

func (c *countingGraph) Children(m digest.Digest) ([]v1.Descriptor, bool) {
	c.childCalls.Add(1)
	return c.Memory.Children(m)
}

// lattice records, as another repository's signed targets could, n indexes
// S listing n indexes R listing n indexes Q listing n image manifests P,
// each P listing layer: 4n manifests with n^4 paths from S to the layer.
func lattice(x Graph, n int, layer digest.Digest) {
	level := func(name string, i int) digest.Digest { return digest.FromString(fmt.Sprint(name, i)) }
	list := func(name string, mt string) []v1.Descriptor {
		out := make([]v1.Descriptor, n)
		for i := range n {
			out[i] = v1.Descriptor{Digest: level(name, i), MediaType: mt}
		}
		return out
	}
	for i := range n {
		x.Record(level("P", i), []v1.Descriptor{{Digest: level("config", i), MediaType: v1.MediaTypeImageConfig}, {Digest: layer, MediaType: v1.MediaTypeImageLayerGzip}})
		x.Record(level("Q", i), list("P", v1.MediaTypeImageManifest))
		x.Record(level("R", i), list("Q", v1.MediaTypeImageIndex))
		x.Record(level("S", i), list("R", v1.MediaTypeImageIndex))
	}
}

// One repository's manifests cannot make lookups elsewhere expensive: a
// lookup considers each recorded manifest once, however many paths lead
// through it.
func TestFindWorkBoundedByGraphSize(t *testing.T) {
	for _, n := range []int{10, 20, 40} {
		x := &countingGraph{Memory: NewMemory()}
		layer := digest.FromString("a popular layer")
		lattice(x, n, layer)
		victim := signs(digest.FromString("victim image"))
		if _, ok := Find(x, victim, layer); ok {
			t.Fatal("placed under a target the victim does not sign")
		}
		if c := x.parentCalls.Load(); c > int64(2*4*n) {
			t.Errorf("n=%d: one lookup made %d parents() calls for %d recorded manifests", n, c, 4*n)
		}
		signer := signs(digest.FromString("S3"))
		if _, ok := Find(x, signer, layer); !ok {
			t.Fatalf("n=%d: the layer is not placed under a signed index three levels up", n)
		}
	}
}

// A recording pass reads and walks each manifest once.
func TestRecordWorkBoundedByGraphSize(t *testing.T) {
	const n = 30
	x := &countingGraph{Memory: NewMemory()}
	lattice(x, n, digest.FromString("a popular layer"))
	seen := map[digest.Digest]bool{}
	read := func(want v1.Descriptor) ([]v1.Descriptor, error) {
		return nil, fmt.Errorf("%s is not recorded", want.Digest)
	}
	for i := range n {
		if err := Record(x, v1.Descriptor{Digest: digest.FromString(fmt.Sprint("S", i))}, seen, read); err != nil {
			t.Fatal(err)
		}
	}
	if c := x.childCalls.Load(); c > int64(4*n) {
		t.Errorf("recording %d signed indexes (%d manifests) made %d children() calls", n, 4*n, c)
	}
}
