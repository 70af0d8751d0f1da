package proxy

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/internal/manifest"
	"github.com/trustproxy/trustproxy/internal/upstream"
)

// serveUnverifiedManifest serves a manifest that did not verify, for a rule
// in audit mode (the refusal it would have been is already logged). The tag
// is resolved by the upstream; a digest must still match the bytes. It is
// stored as a verified manifest is: storage failing is a *storageError.
func (s *Server) serveUnverifiedManifest(w http.ResponseWriter, r *http.Request, req *request) error {
	ctx := r.Context()
	from := req.from.Name()
	limit := s.limits.ManifestBytes
	body, err := req.from.Manifest(ctx, req.name.Path(), req.ref, limit)
	if errors.Is(err, upstream.ErrTooLarge) {
		return upstream.Unavailable(fmt.Errorf("manifest %s from %s is over limits.manifest_bytes (%d)", req.ref, from, limit))
	}
	if err != nil {
		return err
	}
	dgst := digest.FromBytes(body)
	if req.dgst != "" && dgst != req.dgst {
		return upstream.Unavailable(fmt.Errorf("upstream %s sent a manifest that hashes to %s, not %s", from, dgst, req.dgst))
	}
	m, err := manifest.Parse(dgst, body)
	if err != nil {
		return upstream.Unavailable(fmt.Errorf("manifest %s from %s: %w", req.ref, from, err))
	}
	ms, err := s.manifestService(ctx, req)
	if err != nil {
		return err
	}
	if err := storeManifest(ctx, ms, m); err != nil {
		if _, ok := errors.AsType[*storageError](err); ok {
			return err
		}
		return &Refusal{GUN: req.name.String(), Ref: req.ref, Reason: ReasonInvalidManifest,
			Detail: fmt.Sprintf("the upstream's manifest cannot be stored as it is, so it is not served: %v", err)}
	}
	s.metrics.served.WithLabelValues("manifest", "upstream").Inc()
	writeManifest(w, r, m)
	return nil
}
