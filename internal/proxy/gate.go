package proxy

import (
	"context"
	"fmt"
	"slices"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/internal/manifest"
	"github.com/trustproxy/trustproxy/internal/scan"
)

// scanStep is decide's last step for a verified manifest under a rule with
// a scan policy: an image manifest passes only when the gate says its scan
// does. An index is not scanned itself; each platform manifest is, when it
// is pulled, and their scans start when the index is first seen. The
// scanner's own pull (its credential names this digest) skips the gate
// until a report that arrived after the credential was minted fails the
// policy (scan.Gate.CheckCredential).
func (s *Server) scanStep(ctx context.Context, req *request, d *Decision, m *manifest.Manifest, rescan bool) error {
	p := d.Rule.Scan
	if p == nil || s.gate == nil {
		return nil
	}
	if m.Index {
		d.Scan = &scan.Verdict{Pass: true, Detail: "an index is not scanned itself; each platform manifest is, when pulled"}
		if d.source == "upstream" {
			for _, c := range m.Refs {
				if manifest.IsType(c.MediaType) && !manifest.IsIndexType(c.MediaType) {
					s.gate.Prefetch(scan.Subject{Repository: d.Repository, Digest: c.Digest, MediaType: c.MediaType}, p)
				}
			}
		}
		return nil
	}
	var v scan.Verdict
	if g := req.grant; g != nil && g.Digest == m.Digest {
		v = s.gate.CheckCredential(*g, p)
	} else {
		subject := scan.Subject{Repository: d.Repository, Digest: m.Digest, MediaType: m.MediaType}
		if rescan {
			if _, err := s.gate.Scan(ctx, subject); err != nil {
				s.log.Warn("scan on demand failed", "repo", d.Repository, "digest", m.Digest, "err", err)
			}
		}
		v = s.gate.Check(ctx, subject, p)
	}
	d.Scan = &v
	if !v.Pass {
		return &Refusal{GUN: d.Repository, Ref: req.ref, Reason: Reason(v.Reason), Detail: v.Detail}
	}
	return nil
}

// checkCredential is decide's first step: when req carries a scanner's
// pull credential, any use of it but the one it was minted for is refused
// (the manifest of its digest in its repository, and the blobs and
// platform manifests that manifest lists); the use it covers is noted in
// req.grant, for the scan step. Requests without one pass untouched.
func (s *Server) checkCredential(ctx context.Context, req *request) error {
	if s.gate == nil {
		return nil
	}
	g, ok, err := s.gate.Credentials().Check(req.authorization)
	if !ok {
		return nil
	}
	refuse := func(detail string) error {
		return &Refusal{GUN: req.name.String(), Ref: req.ref, Reason: ReasonScanCredential, Detail: detail}
	}
	if err != nil {
		return refuse(err.Error())
	}
	only := fmt.Sprintf("the scan credential is for %s@%s and what it refers to only", g.Repository, g.Digest)
	if req.name.String() != g.Repository || req.kind == kindTags || req.kind == kindTrustData {
		return refuse(only)
	}
	if req.dgst != g.Digest {
		if req.dgst == "" {
			return refuse(only)
		}
		covered, err := s.grantCovers(ctx, req, g)
		if err != nil {
			return err
		}
		if !covered {
			return refuse(only)
		}
	}
	req.grant = &g
	return nil
}

// grantCovers says whether req's digest is listed by the manifest g is
// for: from the reference graph, or else from the stored manifest (the
// graph may have forgotten it between the scanner's manifest pull and its
// layer pulls). A failure that may pass (retryable) is returned: the
// scanner retries rather than being refused.
func (s *Server) grantCovers(ctx context.Context, req *request, g scan.Grant) (bool, error) {
	listed := func(children []v1.Descriptor) bool {
		return slices.ContainsFunc(children, func(c v1.Descriptor) bool { return c.Digest == req.dgst })
	}
	if children, ok := s.graph.Children(g.Digest); ok {
		return listed(children), nil
	}
	if err := retryable(s.record(ctx, req, v1.Descriptor{Digest: g.Digest, Size: -1}, map[digest.Digest]bool{})); err != nil {
		return false, err
	}
	children, _ := s.graph.Children(g.Digest)
	return listed(children), nil
}
