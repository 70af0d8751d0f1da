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

// maxIndexDepth bounds nested indexes.
const maxIndexDepth = 3

// failedTargetTTL is how long a signed target that could not be recorded
// (its manifest missing upstream, or not verifying) is skipped: anonymous
// requests for unknown digests must not turn into upstream fetches of every
// such target, each time.
const failedTargetTTL = 30 * time.Second

// maxFailedTargets bounds the failures remembered, and the repositories
// remembered as fully recorded.
const maxFailedTargets = 4096

// failedTarget is a target that could not be recorded, and until when it
// is not tried again. transient holds the failure when it may pass (the
// upstream unreachable or rate limiting) rather than last (the manifest
// missing upstream, or not verifying).
type failedTarget struct {
	until     time.Time
	transient *upstreamError
}

// recorded says that every signed target of snap was in the index at
// generation gen: a digest the index cannot place under one of them is
// refused without looking further.
type recorded struct {
	snap *trust.Snapshot
	gen  uint64
}

// authorize says whether dgst may be served in req's repository: it is a
// signed target of snap, or a manifest that one of them is, or is inside,
// refers to it. It returns dgst's descriptor as that manifest lists it.
//
// The answer is a lookup in the index. Only when the lookup fails and
// snap's targets are not all recorded yet are they recorded: from storage
// (after a restart), else from the upstream by their signed digests. A
// target that fails to record is not tried again for failedTargetTTL, so
// authorizing costs at most one upstream fetch per signed manifest per
// failedTargetTTL, however many requests ask. When dgst is not found but
// a target could not be recorded for a reason that may pass, that failure
// is returned: the client is told to retry rather than that the digest is
// not referenced.
func (s *Server) authorize(ctx context.Context, req *request, snap *trust.Snapshot, dgst digest.Digest) (v1.Descriptor, bool, error) {
	if d, ok := s.lookup(snap, dgst); ok {
		return d, true, nil
	}
	gen := s.index.generation()
	if c, ok := s.recorded.Get(req.gun); ok && c.snap == snap && c.gen == gen {
		return v1.Descriptor{}, false, nil
	}
	transient, complete := s.recordTargets(ctx, req, snap)
	if complete {
		s.recorded.Add(req.gun, recorded{snap: snap, gen: gen})
	}
	if d, ok := s.lookup(snap, dgst); ok {
		return d, true, nil
	}
	if transient != nil {
		return v1.Descriptor{}, false, &upstreamError{code: transient.code, retryAfter: transient.retryAfter,
			err: fmt.Errorf("cannot tell whether a signed manifest refers to %s, as some cannot be fetched now; retry: %w", dgst, transient.err)}
	}
	return v1.Descriptor{}, false, nil
}

// lookup finds dgst in the index as a signed target of snap or under one.
func (s *Server) lookup(snap *trust.Snapshot, dgst digest.Digest) (v1.Descriptor, bool) {
	if ts := snap.ByDigest(dgst); len(ts) > 0 {
		return v1.Descriptor{Digest: dgst, Size: ts[0].Size}, true
	}
	return s.lookupUnder(snap, dgst, 0)
}

func (s *Server) lookupUnder(snap *trust.Snapshot, dgst digest.Digest, depth int) (v1.Descriptor, bool) {
	if depth > maxIndexDepth {
		return v1.Descriptor{}, false
	}
	for _, p := range s.index.parents(dgst) {
		if len(snap.ByDigest(p)) == 0 {
			// p must be a manifest where it is listed, not a layer whose
			// bytes happen to be recorded as a manifest elsewhere.
			if d, ok := s.lookupUnder(snap, p, depth+1); !ok || !isManifestType(d.MediaType) {
				continue
			}
		}
		children, _ := s.index.children(p)
		if i := slices.IndexFunc(children, func(c v1.Descriptor) bool { return c.Digest == dgst }); i >= 0 {
			return children[i], true
		}
	}
	return v1.Descriptor{}, false
}

// recordTargets records the manifests of snap's signed targets that the
// index lacks. complete says every one is recorded; transient is the
// first failure that may pass.
func (s *Server) recordTargets(ctx context.Context, req *request, snap *trust.Snapshot) (transient *upstreamError, complete bool) {
	targets := slices.Collect(func(yield func(trust.Target) bool) {
		for _, t := range snap.Targets {
			if !yield(t) {
				return
			}
		}
	})
	slices.SortFunc(targets, func(a, b trust.Target) int { return cmp.Compare(a.Tag, b.Tag) })
	complete = true
	seen := map[digest.Digest]bool{}
	for _, t := range targets {
		if seen[t.Digest] {
			continue
		}
		seen[t.Digest] = true
		key := req.gun + "@" + t.Digest.String()
		if f, ok := s.failedTargets.Get(key); ok && time.Now().Before(f.until) {
			transient = cmp.Or(transient, f.transient)
			complete = false
			continue
		}
		err := s.record(ctx, req, v1.Descriptor{Digest: t.Digest, Size: t.Size}, 0)
		if err == nil {
			continue
		}
		complete = false
		f := failedTarget{until: time.Now().Add(failedTargetTTL)}
		if u, ok := errors.AsType[*upstreamError](err); ok && (u.code == codeUnavailable || u.code == codeTooManyRequests) {
			f.transient = u
			transient = cmp.Or(transient, u)
		}
		s.failedTargets.Add(key, f)
		s.log.Warn("cannot record what a signed target refers to", "repo", req.gun, "tag", t.Tag, "digest", t.Digest, "err", err,
			"retry_after", failedTargetTTL)
	}
	return transient, complete
}

// record puts the manifest want and, for an index, its platform manifests
// into the index, reading them from storage or the upstream (s.manifest,
// which records what it reads).
func (s *Server) record(ctx context.Context, req *request, want v1.Descriptor, depth int) error {
	if depth > maxIndexDepth {
		return fmt.Errorf("indexes nested deeper than %d", maxIndexDepth)
	}
	children, ok := s.index.children(want.Digest)
	if !ok {
		m, _, err := s.manifest(ctx, req, want)
		if err != nil {
			return err
		}
		children = m.refs
	}
	for _, c := range children {
		if !isManifestType(c.MediaType) {
			continue
		}
		if err := s.record(ctx, req, v1.Descriptor{Digest: c.Digest, Size: c.Size}, depth+1); err != nil {
			return fmt.Errorf("child %s: %w", c.Digest, err)
		}
	}
	return nil
}
