package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/internal/trust"
)

// maxIndexDepth bounds nested indexes.
const maxIndexDepth = 3

// recordRetry is how long after a recording pass that left some signed
// target unrecorded (its manifest missing upstream, or not verifying) the
// next pass for the same trust view may run: anonymous requests for
// unknown digests must not turn into upstream fetches of every such
// target, each time.
const recordRetry = 30 * time.Second

// maxRecorded bounds the repositories whose recording pass is remembered.
const maxRecorded = 4096

// recorded is the last recording pass of a repository's trust view snap,
// at index generation gen. When complete, every signed target was recorded
// and a digest the index cannot place under one of them is refused without
// looking further; else no pass runs again for snap before until, and
// transient holds a failure that may pass (the upstream unreachable or
// rate limiting), which the client is told to retry.
type recorded struct {
	snap      *trust.Snapshot
	gen       uint64
	complete  bool
	until     time.Time
	transient *upstreamError
}

// authorize says whether dgst may be served in req's repository: it is a
// signed target of snap, or a manifest that one of them is, or is inside,
// refers to it. It returns dgst's descriptor as that manifest lists it.
//
// The answer is a lookup in the index. Only when the lookup fails and
// snap's targets are not all recorded yet are they recorded: from storage
// (after a restart), else from the upstream by their signed digests. One
// such pass runs per trust view per recordRetry, so authorizing costs at
// most one upstream fetch per signed manifest in that time, however many
// requests ask. When dgst is not found but a target could not be recorded
// for a reason that may pass, that failure is returned: the client is told
// to retry rather than that the digest is not referenced.
func (s *Server) authorize(ctx context.Context, req *request, snap *trust.Snapshot, dgst digest.Digest) (v1.Descriptor, bool, error) {
	if d, ok := s.lookup(snap, dgst); ok {
		return d, true, nil
	}
	gen := s.index.generation()
	last, ok := s.recorded.Get(req.gun)
	if !ok || last.snap != snap || last.gen != gen || (!last.complete && time.Now().After(last.until)) {
		last = s.recordTargets(ctx, req, snap)
		last.gen = gen
		s.recorded.Add(req.gun, last)
		if d, ok := s.lookup(snap, dgst); ok {
			return d, true, nil
		}
	}
	if t := last.transient; t != nil {
		return v1.Descriptor{}, false, &upstreamError{code: t.code, retryAfter: t.retryAfter,
			err: fmt.Errorf("cannot tell whether a signed manifest refers to %s, as some cannot be fetched now; retry: %w", dgst, t.err)}
	}
	return v1.Descriptor{}, false, nil
}

// lookup finds dgst in the index as a signed target of snap or under one.
// Each recorded manifest is considered once, so the work is bounded by the
// index, however its manifests list one another.
// With a shared index, what this replica recorded itself is looked at
// first: a warm replica answers without asking Redis.
func (s *Server) lookup(snap *trust.Snapshot, dgst digest.Digest) (v1.Descriptor, bool) {
	if ts := snap.ByDigest(dgst); len(ts) > 0 {
		return v1.Descriptor{Digest: dgst, Size: ts[0].Size}, true
	}
	if shared, ok := s.index.(*sharedIndex); ok {
		if d, ok := lookupUnder(shared.memIndex, snap, dgst, 0, map[digest.Digest]int{}); ok {
			return d, true
		}
	}
	return lookupUnder(s.index, snap, dgst, 0, map[digest.Digest]int{})
}

// lookupUnder looks for a parent of dgst that is a signed target of snap,
// or a manifest under one, at most maxIndexDepth levels up. tried holds the
// manifests already tried, with the depth they were tried at: one tried
// at a depth as low or lower failed then and fails now.
func lookupUnder(index refIndex, snap *trust.Snapshot, dgst digest.Digest, depth int, tried map[digest.Digest]int) (v1.Descriptor, bool) {
	if depth > maxIndexDepth {
		return v1.Descriptor{}, false
	}
	for _, p := range index.parents(dgst) {
		if len(snap.ByDigest(p)) == 0 {
			if at, ok := tried[p]; ok && at <= depth+1 {
				continue
			}
			tried[p] = depth + 1
			// p must be a manifest where it is listed, not a layer whose
			// bytes happen to be recorded as a manifest elsewhere.
			if d, ok := lookupUnder(index, snap, p, depth+1, tried); !ok || !isManifestType(d.MediaType) {
				continue
			}
		}
		children, _ := index.children(p)
		if i := slices.IndexFunc(children, func(c v1.Descriptor) bool { return c.Digest == dgst }); i >= 0 {
			return children[i], true
		}
	}
	return v1.Descriptor{}, false
}

// recordTargets records the manifests of snap's signed targets that the
// index lacks, each manifest once.
func (s *Server) recordTargets(ctx context.Context, req *request, snap *trust.Snapshot) recorded {
	targets := slices.Collect(maps.Values(snap.Targets))
	slices.SortFunc(targets, func(a, b trust.Target) int { return cmp.Compare(a.Tag, b.Tag) })
	pass := recorded{snap: snap, complete: true}
	seen := map[digest.Digest]bool{}
	failed := 0
	for _, t := range targets {
		err := s.record(ctx, req, v1.Descriptor{Digest: t.Digest, Size: t.Size}, 0, seen)
		if err == nil {
			continue
		}
		pass.complete = false
		if u, ok := errors.AsType[*upstreamError](err); ok && (u.code == codeUnavailable || u.code == codeTooManyRequests) {
			pass.transient = cmp.Or(pass.transient, u)
		}
		if failed++; failed <= 3 {
			s.log.Warn("cannot record what a signed target refers to", "repo", req.gun, "tag", t.Tag, "digest", t.Digest, "err", err,
				"retry_after", recordRetry)
		}
	}
	if failed > 3 {
		s.log.Warn("cannot record what more signed targets refer to", "repo", req.gun, "count", failed-3, "retry_after", recordRetry)
	}
	pass.until = time.Now().Add(recordRetry)
	return pass
}

// record puts the manifest want and, for an index, its platform manifests
// into the index, reading them from storage or the upstream (s.manifest,
// which records what it reads). seen holds the manifests this pass has
// visited: each is read and walked once.
func (s *Server) record(ctx context.Context, req *request, want v1.Descriptor, depth int, seen map[digest.Digest]bool) error {
	if depth > maxIndexDepth {
		return fmt.Errorf("indexes nested deeper than %d", maxIndexDepth)
	}
	if seen[want.Digest] {
		return nil
	}
	seen[want.Digest] = true
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
		if err := s.record(ctx, req, v1.Descriptor{Digest: c.Digest, Size: c.Size}, depth+1, seen); err != nil {
			return fmt.Errorf("child %s: %w", c.Digest, err)
		}
	}
	return nil
}
