package proxy

import (
	"fmt"
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
