package proxy

import (
	"fmt"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
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
