package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/internal/trust"
)

// tree is everything a verified manifest refers to, transitively: child
// manifests of an index, and configs and layers of each image. It is keyed by
// content digest, so it never changes once built.
type tree map[digest.Digest]v1.Descriptor

// maxIndexDepth bounds nested indexes.
const maxIndexDepth = 3

// failedTreeTTL is how long a signed target whose tree could not be built
// (its manifest missing upstream, or not verifying) is skipped by
// authorize: anonymous requests for unknown digests must not turn into
// upstream fetches of every such target, each time.
const failedTreeTTL = 30 * time.Second

// maxFailedTrees bounds the failures remembered.
const maxFailedTrees = 4096

// failedTree is a target whose tree could not be built, and until when it
// is not tried again. transient holds the failure when it may pass (the
// upstream unreachable or rate limiting) rather than last (the manifest
// missing upstream, or not verifying).
type failedTree struct {
	until     time.Time
	transient *upstreamError
}

// authorize says whether dgst is referenced by a manifest verified in req's
// repository: some signed target of snap whose tree holds it. Trees already
// built are searched first; the rest are built (fetching manifests that
// storage lacks) until dgst is found. A target whose tree failed to build
// is not tried again for failedTreeTTL, so authorizing costs at most one
// upstream fetch per signed manifest per failedTreeTTL, however many
// requests ask. When dgst is not found but a target could not be walked
// for a reason that may pass, that failure is returned: the client is told
// to retry rather than that the digest is not referenced.
func (s *Server) authorize(ctx context.Context, req *request, snap *trust.Snapshot, dgst digest.Digest) (v1.Descriptor, bool, error) {
	seen := map[digest.Digest]bool{}
	var missing []trust.Target
	for _, t := range snap.Targets {
		if seen[t.Digest] {
			continue
		}
		seen[t.Digest] = true
		if tr, ok := s.trees.Get(req.gun + "@" + t.Digest.String()); ok {
			if d, ok := tr[dgst]; ok {
				return d, true, nil
			}
			continue
		}
		missing = append(missing, t)
	}
	slices.SortFunc(missing, func(a, b trust.Target) int { return cmp.Compare(a.Tag, b.Tag) })
	var transient *upstreamError
	for _, t := range missing {
		key := req.gun + "@" + t.Digest.String()
		if f, ok := s.failedTrees.Get(key); ok && time.Now().Before(f.until) {
			transient = cmp.Or(transient, f.transient)
			continue
		}
		tr, err := s.tree(ctx, req, v1.Descriptor{Digest: t.Digest, Size: t.Size}, 0)
		if err != nil {
			f := failedTree{until: time.Now().Add(failedTreeTTL)}
			if u, ok := errors.AsType[*upstreamError](err); ok && (u.code == codeUnavailable || u.code == codeTooManyRequests) {
				f.transient = u
				transient = cmp.Or(transient, u)
			}
			s.failedTrees.Add(key, f)
			s.log.Warn("cannot walk signed target", "repo", req.gun, "tag", t.Tag, "digest", t.Digest, "err", err,
				"retry_after", failedTreeTTL)
			continue
		}
		if d, ok := tr[dgst]; ok {
			return d, true, nil
		}
	}
	if transient != nil {
		return v1.Descriptor{}, false, &upstreamError{code: transient.code, retryAfter: transient.retryAfter,
			err: fmt.Errorf("cannot tell whether a signed manifest refers to %s, as some cannot be fetched now; retry: %w", dgst, transient.err)}
	}
	return v1.Descriptor{}, false, nil
}

// tree returns the reference tree of the manifest root, building and caching
// it. root itself is in the tree.
func (s *Server) tree(ctx context.Context, req *request, root v1.Descriptor, depth int) (tree, error) {
	key := req.gun + "@" + root.Digest.String()
	if tr, ok := s.trees.Get(key); ok {
		return tr, nil
	}
	if depth > maxIndexDepth {
		return nil, fmt.Errorf("indexes nested deeper than %d", maxIndexDepth)
	}
	m, _, err := s.manifest(ctx, req, root)
	if err != nil {
		return nil, err
	}
	if !m.index {
		return s.imageTree(req, m), nil
	}
	tr := tree{root.Digest: {Digest: root.Digest, Size: int64(len(m.body)), MediaType: m.mediaType}}
	for _, d := range m.refs {
		tr[d.Digest] = d
		child, err := s.tree(ctx, req, v1.Descriptor{Digest: d.Digest, Size: d.Size}, depth+1)
		if err != nil {
			return nil, fmt.Errorf("child %s: %w", d.Digest, err)
		}
		for k, v := range child {
			if k == d.Digest {
				v.Platform = d.Platform
			}
			tr[k] = v
		}
	}
	s.trees.Add(key, tr)
	return tr, nil
}

// imageTree caches and returns the tree of an image manifest, which needs
// nothing but the manifest itself.
func (s *Server) imageTree(req *request, m *verifiedManifest) tree {
	tr := tree{m.digest: {Digest: m.digest, Size: int64(len(m.body)), MediaType: m.mediaType}}
	for _, d := range m.refs {
		tr[d.Digest] = d
	}
	s.trees.Add(req.gun+"@"+m.digest.String(), tr)
	return tr
}
