// Package gun names a repository as Docker Content Trust does: the
// configured upstream it is pulled from, then its path there
// (docker.io/library/alpine). A Name is built once, where a request is
// routed to its upstream, and handed on whole: no one splits a GUN again to
// find its upstream.
package gun

import (
	"fmt"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// A Name is a repository at one configured upstream. The zero Name names
// nothing.
type Name struct {
	upstream, path string
}

// New names the repository path at the upstream named upstream. The GUN
// must follow the reference grammar.
func New(upstream, path string) (Name, error) {
	n := Name{upstream: upstream, path: path}
	if _, err := reference.WithName(n.String()); err != nil {
		return Name{}, fmt.Errorf("invalid repository name %q: %v", path, err)
	}
	return n, nil
}

// String is the GUN: upstream/path.
func (n Name) String() string {
	if n.upstream == "" {
		return ""
	}
	return n.upstream + "/" + n.path
}

// Upstream is the name of the configured upstream the repository is at.
func (n Name) Upstream() string { return n.upstream }

// Path is the repository's path at its upstream, e.g. library/alpine.
func (n Name) Path() string { return n.path }

// At is the key of content d in the repository: GUN@digest.
func (n Name) At(d digest.Digest) string { return n.String() + "@" + d.String() }
