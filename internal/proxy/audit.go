package proxy

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/opencontainers/go-digest"
)

// serveUnverifiedManifest serves a manifest that did not verify, for a rule
// in audit mode (the refusal it would have been is already logged). The tag
// is resolved by the upstream; a digest must still match the bytes.
func (s *Server) serveUnverifiedManifest(w http.ResponseWriter, r *http.Request, req *request) error {
	ctx := r.Context()
	limit := s.cfg.Limits.ManifestBytes
	body, err := req.upstream.fetchManifest(ctx, req.repo, req.ref, limit)
	if errors.Is(err, errTooLarge) {
		return &upstreamError{code: codeUnavailable, err: fmt.Errorf("manifest %s from %s is over limits.manifest_bytes (%d)", req.ref, req.upstream.cfg.Name, limit)}
	}
	if err != nil {
		return err
	}
	dgst := digest.FromBytes(body)
	if req.dgst != "" && dgst != req.dgst {
		return &upstreamError{code: codeUnavailable, err: fmt.Errorf("upstream %s sent a manifest that hashes to %s, not %s", req.upstream.cfg.Name, dgst, req.dgst)}
	}
	m, err := parseManifest(dgst, body)
	if err != nil {
		return &upstreamError{code: codeUnavailable, err: fmt.Errorf("manifest %s from %s: %w", req.ref, req.upstream.cfg.Name, err)}
	}
	ms, err := s.manifestService(ctx, req.gun)
	if err == nil {
		err = storeManifest(ctx, ms, m)
	}
	if err != nil {
		s.log.Warn("cannot store audited manifest", "repo", req.gun, "digest", dgst, "err", err)
	}
	s.metrics.served.WithLabelValues("manifest", "upstream").Inc()
	writeManifest(w, r, m)
	return nil
}
