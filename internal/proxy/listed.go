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

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/refgraph"
	"github.com/trustproxy/trustproxy/internal/trust"
	"github.com/trustproxy/trustproxy/internal/upstream"
)

// recordRetry is how long after a recording pass that left some signed
// target unrecorded (its manifest missing upstream, or not verifying) the
// next pass for the same trust view may run: anonymous requests for
// unknown digests must not turn into upstream fetches of every such
// target, each time.
const recordRetry = 30 * time.Second

// maxRecorded bounds the repositories whose recording pass is remembered.
const maxRecorded = 4096

// recorded is the last recording pass of a repository's trust view, at
// graph generation gen. When complete, every signed target was recorded
// and a digest the graph cannot place under one of them is refused without
// looking further; else no pass runs again for the view before until, and
// transient holds a failure that may pass (the upstream unreachable or
// rate limiting, storage failing: retryable), which the client is told to
// retry.
type recorded struct {
	view      *trust.View
	gen       uint64
	pass      uint64 // Server.recordPasses when it ended
	complete  bool
	until     time.Time
	transient error
}

// find says whether dgst is listed in req's repository: it is a signed
// target of view, or a manifest that one of them is, or lies under, lists
// it. It returns dgst's descriptor as that manifest lists it.
//
// The answer is a lookup in the reference graph. Only when the lookup fails
// and view's targets are not all recorded yet are they recorded: from
// storage (after a restart), else from the upstream by their signed
// digests. One such pass runs per trust view per recordRetry, so finding
// costs at most one upstream fetch per signed manifest in that time,
// however many requests ask. When dgst is not found but a target could not
// be recorded for a reason that may pass, that failure is returned: the
// client is told to retry rather than that the digest is not listed.
//
// Under a rule whose sources list cosign or notation, a digest they verified (the
// verified set, unexpired, judged by the same rule) counts as signed too:
// alone under require: any, with Notary's signed target under require:
// all. cosign has no list of signed digests to record on a miss: a blob
// of a manifest this deployment has not verified within reverify_ttl is
// not found until the manifest is asked for again. view is nil when the
// rule does not list Notary or Notary refused the repository.
func (s *Server) find(ctx context.Context, req *request, view *trust.View, dgst digest.Digest) (v1.Descriptor, bool, error) {
	rule := req.pol.cfg.Trust.RuleFor(req.name.String())
	signed := func(d digest.Digest) (int64, bool) {
		var ts []trust.Target
		if view != nil {
			ts = view.ByDigest(d)
		}
		if rule == nil || rule.NotaryOnly() {
			if len(ts) > 0 {
				return ts[0].Size, true
			}
			return 0, false
		}
		// The digest sources' verified sets: cosign's, Notation's.
		var digestOK []bool
		for _, ds := range []struct {
			src config.Source
			set *verifiedSet
		}{{config.SourceCosign, s.cosign.verified}, {config.SourceNotation, s.notation.verified}} {
			if rule.Has(ds.src) {
				_, ok := ds.set.get(ctx, req.name, rule, &req.pol.cfg.Trust, d)
				digestOK = append(digestOK, ok)
			}
		}
		switch {
		case rule.Require == config.RequireAll:
			if (rule.Has(config.SourceNotary) && len(ts) == 0) || slices.Contains(digestOK, false) {
				return 0, false
			}
			if len(ts) > 0 {
				return ts[0].Size, true
			}
			return -1, true
		case len(ts) > 0:
			return ts[0].Size, true
		case slices.Contains(digestOK, true):
			return -1, true
		}
		return 0, false
	}
	passes := s.recordPasses.Load() // the recording passes this lookup sees
	if d, ok := refgraph.Find(s.graph, signed, dgst); ok {
		return d, true, nil
	}
	if s.afterMiss != nil {
		s.afterMiss()
	}
	if view == nil || (rule != nil && rule.Require == config.RequireAll && !rule.NotaryOnly()) {
		// Nothing to record: cosign lists no signed digests, and under
		// require: all a Notary target alone does not verify.
		return v1.Descriptor{}, false, nil
	}
	gen := s.graph.Generation()
	gun := req.name.String()
	last, ok := s.recorded.Get(gun)
	if !ok || last.view != view || last.gen != gen || (!last.complete && time.Now().After(last.until)) {
		last = s.recordTargets(ctx, req, view)
		last.gen, last.pass = gen, s.recordPasses.Add(1)
		s.recorded.Add(gun, last)
		if d, ok := refgraph.Find(s.graph, signed, dgst); ok {
			return d, true, nil
		}
	} else if last.pass > passes {
		// Another request's pass ended after the lookup above began:
		// what it recorded may be what that lookup missed.
		if d, ok := refgraph.Find(s.graph, signed, dgst); ok {
			return d, true, nil
		}
	}
	if t := last.transient; t != nil {
		why := fmt.Errorf("cannot tell whether a signed manifest refers to %s, as some cannot be read now; retry: %w", dgst, t)
		if u, ok := t.(*upstream.Error); ok {
			return v1.Descriptor{}, false, &upstream.Error{Code: u.Code, RetryAfter: u.RetryAfter, Err: why}
		}
		return v1.Descriptor{}, false, &storageError{why}
	}
	return v1.Descriptor{}, false, nil
}

// recordTargets records the manifests of view's signed targets that the
// graph lacks, each manifest once.
func (s *Server) recordTargets(ctx context.Context, req *request, view *trust.View) recorded {
	targets := slices.Collect(maps.Values(view.Targets))
	slices.SortFunc(targets, func(a, b trust.Target) int { return cmp.Compare(a.Tag, b.Tag) })
	pass := recorded{view: view, complete: true}
	seen := map[digest.Digest]bool{}
	failed := 0
	for _, t := range targets {
		err := s.record(ctx, req, v1.Descriptor{Digest: t.Digest, Size: t.Size}, seen)
		if err == nil {
			continue
		}
		pass.complete = false
		if t := retryable(err); t != nil && pass.transient == nil {
			pass.transient = t
		}
		if failed++; failed <= 3 {
			s.log.Warn("cannot record what a signed target refers to", "repo", req.name.String(), "tag", t.Tag, "digest", t.Digest, "err", err,
				"retry_after", recordRetry)
		}
	}
	if failed > 3 {
		s.log.Warn("cannot record what more signed targets refer to", "repo", req.name.String(), "count", failed-3, "retry_after", recordRetry)
	}
	pass.until = time.Now().Add(recordRetry)
	return pass
}

// record makes sure the manifest want and, for an index, its platform
// manifests are in the reference graph, reading those it lacks from storage
// or the upstream (s.manifest, which records what it reads). seen holds the
// manifests this pass has visited: each is read and walked once.
func (s *Server) record(ctx context.Context, req *request, want v1.Descriptor, seen map[digest.Digest]bool) error {
	return refgraph.Record(s.graph, want, seen, func(want v1.Descriptor) ([]v1.Descriptor, error) {
		m, _, err := s.manifest(ctx, req, want)
		if err != nil {
			return nil, err
		}
		return m.Refs, nil
	})
}

// retryable is the failure in err that may pass, an *upstream.Error of an
// upstream unreachable or rate limiting, or a *storageError; nil when err
// has none.
func retryable(err error) error {
	if u, ok := errors.AsType[*upstream.Error](err); ok && u.Transient() {
		return u
	}
	if s, ok := errors.AsType[*storageError](err); ok {
		return s
	}
	return nil
}
