package proxy

import (
	"context"
	"fmt"
	"io"
	"net/http"

	"github.com/opencontainers/go-digest"
)

// serveUnverifiedManifest serves a manifest that did not verify, for a rule
// in audit mode (the refusal it would have been is already logged). The tag
// is resolved by the upstream; a digest must still match the bytes.
func (s *Server) serveUnverifiedManifest(w http.ResponseWriter, r *http.Request, req *request) error {
	ctx := r.Context()
	reqCtx, cancel := context.WithTimeout(ctx, s.cfg.Limits.UpstreamTimeout)
	defer cancel()
	resp, err := req.upstream.get(reqCtx, req.repo, "manifests", req.ref, nil, manifestAccept)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	limit := s.cfg.Limits.ManifestBytes
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return &upstreamError{codeUnavailable, fmt.Errorf("read manifest %s from %s: %w", req.ref, req.upstream.cfg.Name, err)}
	}
	if int64(len(body)) > limit {
		return &upstreamError{codeUnavailable, fmt.Errorf("manifest %s from %s is over limits.manifest_bytes (%d)", req.ref, req.upstream.cfg.Name, limit)}
	}
	dgst := digest.FromBytes(body)
	if req.dgst != "" && dgst != req.dgst {
		return &upstreamError{codeUnavailable, fmt.Errorf("upstream %s sent a manifest that hashes to %s, not %s", req.upstream.cfg.Name, dgst, req.dgst)}
	}
	m, err := parseManifest(dgst, body)
	if err != nil {
		return &upstreamError{codeUnavailable, fmt.Errorf("manifest %s from %s: %w", req.ref, req.upstream.cfg.Name, err)}
	}
	if ms, err := s.manifestService(ctx, req.gun); err != nil {
		s.log.Warn("cannot store audited manifest", "repo", req.gun, "digest", dgst, "err", err)
	} else if err := storeManifest(ctx, ms, m); err != nil {
		s.log.Warn("cannot store audited manifest", "repo", req.gun, "digest", dgst, "err", err)
	}
	s.metrics.served.WithLabelValues("manifest", "upstream").Inc()
	writeManifest(w, r, m)
	return nil
}
