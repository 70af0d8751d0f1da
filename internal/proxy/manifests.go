package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/storage"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/internal/manifest"
	"github.com/trustproxy/trustproxy/internal/upstream"
)

// serveManifest answers GET and HEAD /v2/<name>/manifests/<ref>. A tag is
// resolved through the signed targets only, never through the upstream's
// tag; a digest must be a signed target or the child of a verified index.
func (s *Server) serveManifest(w http.ResponseWriter, r *http.Request, req *request) error {
	d, err := s.decide(r.Context(), req, decideOptions{})
	if err != nil {
		return err
	}
	if d.Verdict == Audited && d.manifest == nil {
		return s.serveUnverifiedManifest(w, r, req)
	}
	// Served, or verified and then refused by the scan gate under an audit
	// rule: the verified bytes. The pull is recorded before they are sent,
	// so that a collection that re-reads the records after this finds it.
	if s.pulls != nil {
		s.pulls.Record(r.Context(), req.name, d.manifest.Digest)
	}
	s.metrics.served.WithLabelValues("manifest", d.source).Inc()
	writeManifest(w, r, d.manifest)
	return nil
}

// writeManifest writes m's verified bytes with its verified media type.
func writeManifest(w http.ResponseWriter, r *http.Request, m *manifest.Manifest) {
	h := w.Header()
	h.Set("Docker-Content-Digest", m.Digest.String())
	h.Set("ETag", `"`+m.Digest.String()+`"`)
	if inm := r.Header.Get("If-None-Match"); inm != "" && strings.Contains(inm, m.Digest.String()) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h.Set("Content-Type", m.MediaType)
	h.Set("Content-Length", strconv.Itoa(len(m.Body)))
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(m.Body)
}

// manifest returns the manifest want, from storage or else from the
// upstream by digest, and records what it lists in the reference graph.
// Stored and upstream bytes alike must be want (manifest.Verify); only
// then are upstream bytes stored. Concurrent requests for one manifest
// share one upstream fetch.
func (s *Server) manifest(ctx context.Context, req *request, want v1.Descriptor) (*manifest.Manifest, string, error) {
	ms, err := s.manifestService(ctx, req)
	if err != nil {
		return nil, "", err
	}
	if stored, err := ms.Get(ctx, want.Digest); err == nil {
		m, err := storedManifest(stored, want)
		if err == nil {
			s.graph.Record(m.Digest, m.Refs)
			return m, "cache", nil
		}
		// Storage may be a bucket others can write: its bytes are checked
		// like the upstream's, and never served unless they verify.
		s.metrics.unusable.WithLabelValues("manifest").Inc()
		s.log.Error("stored manifest unusable, fetching it again from the upstream; inspect the storage, which may have been altered",
			"repo", req.name.String(), "digest", want.Digest, "err", err)
	}
	v, err, _ := s.manifests.Do(req.name.At(want.Digest), func() (any, error) {
		return s.fetchManifest(context.WithoutCancel(ctx), req, ms, want)
	})
	if err != nil {
		return nil, "", err
	}
	m := v.(*manifest.Manifest)
	s.graph.Record(m.Digest, m.Refs)
	return m, "upstream", nil
}

// storedManifest checks a manifest read from storage as if the upstream had
// sent it.
func storedManifest(stored distribution.Manifest, want v1.Descriptor) (*manifest.Manifest, error) {
	_, body, err := stored.Payload()
	if err != nil {
		return nil, err
	}
	return manifest.Verify(body, want)
}

// fetchManifest fetches the manifest want from the upstream by digest,
// verifies it and stores it.
func (s *Server) fetchManifest(ctx context.Context, req *request, ms distribution.ManifestService, want v1.Descriptor) (*manifest.Manifest, error) {
	refuse := func(reason Reason, detail string) error {
		return &Refusal{GUN: req.name.String(), Ref: want.Digest.String(), Reason: reason, Detail: detail}
	}
	limit := s.limits.ManifestBytes
	if want.Size > limit {
		return nil, refuse(ReasonInvalidManifest, fmt.Sprintf("the signed manifest is %d bytes, over limits.manifest_bytes (%d)", want.Size, limit))
	}
	if want.Size >= 0 {
		limit = want.Size
	}
	body, err := req.from.Manifest(ctx, req.name.Path(), want.Digest.String(), limit)
	if errors.Is(err, upstream.ErrTooLarge) {
		s.metrics.upstream.WithLabelValues("manifest", "mismatch").Inc()
		return nil, refuse(ReasonDigestMismatch, fmt.Sprintf("the upstream sent more than the %d bytes the signed target allows", limit))
	}
	if err != nil {
		s.metrics.upstream.WithLabelValues("manifest", "error").Inc()
		return nil, err
	}
	m, err := manifest.Verify(body, want)
	if mm, ok := errors.AsType[*manifest.MismatchError](err); ok {
		s.metrics.upstream.WithLabelValues("manifest", "mismatch").Inc()
		s.log.Warn("upstream manifest does not match its signed digest", "repo", req.name.String(), "want", want.Digest, "got", mm.Got, "size", mm.Size)
		return nil, refuse(ReasonDigestMismatch, fmt.Sprintf("the upstream's manifest hashes to %s (%d bytes), not to the signed digest; nothing was cached", mm.Got, mm.Size))
	}
	if err != nil {
		return nil, refuse(ReasonInvalidManifest, err.Error())
	}
	if err := storeManifest(ctx, ms, m); err != nil {
		if _, ok := errors.AsType[*storageError](err); ok {
			return nil, err
		}
		return nil, refuse(ReasonInvalidManifest, err.Error())
	}
	s.metrics.upstream.WithLabelValues("manifest", "ok").Inc()
	return m, nil
}

// manifestService opens the manifests of req's repository in storage,
// stored byte for byte without checking that their blobs are present (they
// arrive later).
func (s *Server) manifestService(ctx context.Context, req *request) (distribution.ManifestService, error) {
	repo, err := s.repository(ctx, req)
	if err != nil {
		return nil, err
	}
	return repo.Manifests(ctx, storage.SkipLayerVerification())
}

// storeManifest puts m into ms, which keeps its bytes, so its digest. A
// manifest distribution cannot read is refused (invalid_manifest); storage
// failing is a *storageError, which the client is told to retry.
func storeManifest(ctx context.Context, ms distribution.ManifestService, m *manifest.Manifest) error {
	dm, _, err := distribution.UnmarshalManifest(m.MediaType, m.Body)
	if err != nil {
		return fmt.Errorf("read manifest %s: %w", m.Digest, err)
	}
	d, err := ms.Put(ctx, dm)
	if err != nil {
		return &storageError{fmt.Errorf("store manifest %s: %w", m.Digest, err)}
	}
	if d != m.Digest {
		return fmt.Errorf("manifest %s was stored as %s", m.Digest, d)
	}
	return nil
}
