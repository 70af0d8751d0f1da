package refgraph

import (
	"fmt"
	"slices"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/internal/manifest"
)

// MaxDepth bounds nested indexes: a digest is found at most this many
// manifests below a signed target.
const MaxDepth = 3

// Signed says whether d is a signed target of the trust view asked about,
// and its signed length.
type Signed func(d digest.Digest) (size int64, ok bool)

// Find says whether d is listed under a signed target: it is one, or a
// manifest that one of them is, or lies under, lists it. It returns d's
// descriptor as that manifest lists it (a signed target's: its digest and
// signed length). Each recorded manifest is considered once, so the work is
// bounded by the graph however its manifests list one another; g's Local
// part is looked at first.
func Find(g Graph, signed Signed, d digest.Digest) (v1.Descriptor, bool) {
	if size, ok := signed(d); ok {
		return v1.Descriptor{Digest: d, Size: size}, true
	}
	if l := g.Local(); l != nil {
		if desc, ok := under(l, signed, d, 0, map[digest.Digest]int{}); ok {
			return desc, true
		}
	}
	return under(g, signed, d, 0, map[digest.Digest]int{})
}

// under looks for a parent of d that is a signed target, or a manifest
// under one, at most MaxDepth levels up. tried holds the manifests already
// tried, with the depth they were tried at: one tried at a depth as low or
// lower failed then and fails now.
func under(g Graph, signed Signed, d digest.Digest, depth int, tried map[digest.Digest]int) (v1.Descriptor, bool) {
	if depth > MaxDepth {
		return v1.Descriptor{}, false
	}
	for _, p := range g.Parents(d) {
		if _, ok := signed(p); !ok {
			if at, ok := tried[p]; ok && at <= depth+1 {
				continue
			}
			tried[p] = depth + 1
			// p must be a manifest where it is listed, not a layer whose
			// bytes happen to be recorded as a manifest elsewhere.
			if desc, ok := under(g, signed, p, depth+1, tried); !ok || !manifest.IsType(desc.MediaType) {
				continue
			}
		}
		children, _ := g.Children(p)
		if i := slices.IndexFunc(children, func(c v1.Descriptor) bool { return c.Digest == d }); i >= 0 {
			return children[i], true
		}
	}
	return v1.Descriptor{}, false
}

// Read reads the manifest want, from wherever the caller keeps manifests,
// records it in the graph, and returns what it lists.
type Read func(want v1.Descriptor) ([]v1.Descriptor, error)

// Record makes sure the manifest want and, for an index, its platform
// manifests (at most MaxDepth levels down) are recorded in g, reading
// those g lacks with read. seen holds the manifests this pass has visited:
// each is read and walked once.
func Record(g Graph, want v1.Descriptor, seen map[digest.Digest]bool, read Read) error {
	return record(g, want, 0, seen, read)
}

func record(g Graph, want v1.Descriptor, depth int, seen map[digest.Digest]bool, read Read) error {
	if depth > MaxDepth {
		return fmt.Errorf("indexes nested deeper than %d", MaxDepth)
	}
	if seen[want.Digest] {
		return nil
	}
	seen[want.Digest] = true
	children, ok := g.Children(want.Digest)
	if !ok {
		var err error
		if children, err = read(want); err != nil {
			return err
		}
	}
	for _, c := range children {
		if !manifest.IsType(c.MediaType) {
			continue
		}
		if err := record(g, v1.Descriptor{Digest: c.Digest, Size: c.Size}, depth+1, seen, read); err != nil {
			return fmt.Errorf("child %s: %w", c.Digest, err)
		}
	}
	return nil
}
