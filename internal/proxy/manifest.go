package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/manifest/manifestlist"
	"github.com/distribution/distribution/v3/manifest/ocischema"
	"github.com/distribution/distribution/v3/manifest/schema2"
	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/internal/trust"
)

// The manifest types trustproxy verifies and stores; importing their packages
// registers them with distribution.UnmarshalManifest.
var (
	_ = schema2.SchemaVersion
	_ = manifestlist.SchemaVersion
	_ = ocischema.SchemaVersion
)

// verifiedManifest is a manifest whose bytes hash to a verified digest.
type verifiedManifest struct {
	digest    digest.Digest
	mediaType string
	body      []byte
	index     bool            // an image index or manifest list
	refs      []v1.Descriptor // child manifests (index) or config and layers (image)
}

// serveManifest answers GET and HEAD /v2/<name>/manifests/<ref>. A tag is
// resolved through the signed targets only, never through the upstream's
// tag; a digest must be a signed target or the child of a verified index.
func (s *Server) serveManifest(w http.ResponseWriter, r *http.Request, req *request) error {
	d, err := s.decide(r.Context(), req)
	if err != nil {
		return err
	}
	switch d.Verdict {
	case Denied:
		return d.Err()
	case Audited:
		if d.manifest == nil {
			return s.serveUnverifiedManifest(w, r, req)
		}
		// Verified, then refused by the scan gate: the verified bytes.
	}
	s.metrics.served.WithLabelValues("manifest", d.source).Inc()
	writeManifest(w, r, d.manifest)
	return nil
}

// writeManifest writes m's verified bytes with its verified media type.
func writeManifest(w http.ResponseWriter, r *http.Request, m *verifiedManifest) {
	h := w.Header()
	h.Set("Docker-Content-Digest", m.digest.String())
	h.Set("ETag", `"`+m.digest.String()+`"`)
	if inm := r.Header.Get("If-None-Match"); inm != "" && strings.Contains(inm, m.digest.String()) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h.Set("Content-Type", m.mediaType)
	h.Set("Content-Length", strconv.Itoa(len(m.body)))
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(m.body)
}

// manifest returns the manifest want, from storage or else from the
// upstream by digest, and records its children in the index. Stored and
// upstream bytes alike must hash to want.Digest and, when want.Size is
// known, have exactly that length; only then are upstream bytes stored.
// Concurrent requests for one manifest share one upstream fetch.
func (s *Server) manifest(ctx context.Context, req *request, want v1.Descriptor) (*verifiedManifest, string, error) {
	ms, err := s.manifestService(ctx, req.gun)
	if err != nil {
		return nil, "", err
	}
	if stored, err := ms.Get(ctx, want.Digest); err == nil {
		m, err := storedManifest(stored, want)
		if err == nil {
			s.index.record(m.digest, m.refs)
			return m, "cache", nil
		}
		// Storage may be a bucket others can write: its bytes are checked
		// like the upstream's, and never served unless they verify.
		s.metrics.unusable.WithLabelValues("manifest").Inc()
		s.log.Error("stored manifest unusable, fetching it again from the upstream; inspect the storage, which may have been altered",
			"repo", req.gun, "digest", want.Digest, "err", err)
	}
	v, err, _ := s.manifests.Do(req.gun+"@"+want.Digest.String(), func() (any, error) {
		return s.fetchManifest(context.WithoutCancel(ctx), req, ms, want)
	})
	if err != nil {
		return nil, "", err
	}
	m := v.(*verifiedManifest)
	s.index.record(m.digest, m.refs)
	return m, "upstream", nil
}

// storedManifest checks a manifest read from storage as if the upstream had
// sent it: its bytes must hash to want's digest and have want's size.
func storedManifest(stored distribution.Manifest, want v1.Descriptor) (*verifiedManifest, error) {
	_, body, err := stored.Payload()
	if err != nil {
		return nil, err
	}
	if got := digest.FromBytes(body); got != want.Digest {
		return nil, fmt.Errorf("the stored manifest hashes to %s, not to its digest", got)
	}
	if want.Size >= 0 && int64(len(body)) != want.Size {
		return nil, fmt.Errorf("the stored manifest is %d bytes, the signed target says %d", len(body), want.Size)
	}
	return parseManifest(want.Digest, body)
}

func (s *Server) fetchManifest(ctx context.Context, req *request, ms distribution.ManifestService, want v1.Descriptor) (*verifiedManifest, error) {
	limit := s.cfg.Limits.ManifestBytes
	if want.Size > limit {
		return nil, &trust.RefusalError{GUN: req.gun, Ref: want.Digest.String(), Reason: ReasonInvalidManifest,
			Detail: fmt.Sprintf("the signed manifest is %d bytes, over limits.manifest_bytes (%d)", want.Size, limit)}
	}
	if want.Size >= 0 {
		limit = want.Size
	}
	body, err := req.upstream.fetchManifest(ctx, req.repo, want.Digest.String(), limit)
	if errors.Is(err, errTooLarge) {
		s.metrics.upstream.WithLabelValues("manifest", "mismatch").Inc()
		return nil, &trust.RefusalError{GUN: req.gun, Ref: want.Digest.String(), Reason: ReasonDigestMismatch,
			Detail: fmt.Sprintf("the upstream sent more than the %d bytes the signed target allows", limit)}
	}
	if err != nil {
		s.metrics.upstream.WithLabelValues("manifest", "error").Inc()
		return nil, err
	}
	if got := digest.FromBytes(body); got != want.Digest || (want.Size >= 0 && int64(len(body)) != want.Size) {
		s.metrics.upstream.WithLabelValues("manifest", "mismatch").Inc()
		s.log.Warn("upstream manifest does not match its signed digest", "repo", req.gun, "want", want.Digest, "got", got, "size", len(body))
		return nil, &trust.RefusalError{GUN: req.gun, Ref: want.Digest.String(), Reason: ReasonDigestMismatch,
			Detail: fmt.Sprintf("the upstream's manifest hashes to %s (%d bytes), not to the signed digest; nothing was cached", got, len(body))}
	}
	m, err := parseManifest(want.Digest, body)
	if err != nil {
		return nil, &trust.RefusalError{GUN: req.gun, Ref: want.Digest.String(), Reason: ReasonInvalidManifest, Detail: err.Error()}
	}
	if err := storeManifest(ctx, ms, m); err != nil {
		return nil, &trust.RefusalError{GUN: req.gun, Ref: want.Digest.String(), Reason: ReasonInvalidManifest, Detail: err.Error()}
	}
	s.metrics.upstream.WithLabelValues("manifest", "ok").Inc()
	return m, nil
}

// manifestTypes are the media types parseManifest accepts.
var manifestTypes = map[string]bool{
	schema2.MediaTypeManifest:          false,
	manifestlist.MediaTypeManifestList: true,
	v1.MediaTypeImageManifest:          false,
	v1.MediaTypeImageIndex:             true,
}

func isManifestType(mt string) bool {
	_, ok := manifestTypes[mt]
	return ok
}

// maxManifestRefs bounds the descriptors a manifest may list: images have
// at most a few hundred layers, indexes a few dozen platforms.
const maxManifestRefs = 4096

// parseManifest reads what a verified manifest refers to. It refuses
// documents that could be read as two types (CVE-2021-41190): an index with
// layers or config, an image with manifests, or a mediaType that disagrees.
func parseManifest(dgst digest.Digest, body []byte) (*verifiedManifest, error) {
	var doc struct {
		SchemaVersion int             `json:"schemaVersion"`
		MediaType     string          `json:"mediaType"`
		Config        *v1.Descriptor  `json:"config"`
		Layers        []v1.Descriptor `json:"layers"`
		Manifests     []v1.Descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("manifest is not JSON: %w", err)
	}
	if doc.SchemaVersion != 2 {
		return nil, fmt.Errorf("manifest schemaVersion %d is not supported (only 2)", doc.SchemaVersion)
	}
	isIndex := doc.Manifests != nil
	isImage := doc.Config != nil || doc.Layers != nil
	if isIndex == isImage {
		return nil, errors.New("ambiguous manifest: it must have either manifests or config and layers")
	}
	mt := doc.MediaType
	if mt == "" {
		mt = v1.MediaTypeImageManifest
		if isIndex {
			mt = v1.MediaTypeImageIndex
		}
	}
	index, ok := manifestTypes[mt]
	if !ok {
		return nil, fmt.Errorf("manifest media type %q is not supported", mt)
	}
	if index != isIndex {
		return nil, fmt.Errorf("ambiguous manifest: mediaType %s disagrees with its fields", mt)
	}
	m := &verifiedManifest{digest: dgst, mediaType: mt, body: body, index: isIndex}
	if isIndex {
		m.refs = doc.Manifests
	} else {
		if doc.Config == nil {
			return nil, errors.New("image manifest has no config")
		}
		m.refs = append([]v1.Descriptor{*doc.Config}, doc.Layers...)
	}
	if len(m.refs) > maxManifestRefs {
		return nil, fmt.Errorf("manifest lists %d descriptors, more than the %d trustproxy accepts", len(m.refs), maxManifestRefs)
	}
	for _, d := range m.refs {
		if err := d.Digest.Validate(); err != nil || d.Digest.Algorithm() != digest.SHA256 {
			return nil, fmt.Errorf("manifest refers to invalid digest %q", d.Digest)
		}
		if d.Size < 0 {
			return nil, fmt.Errorf("manifest refers to %s with negative size", d.Digest)
		}
	}
	return m, nil
}

// manifestService opens gun's manifests in storage, stored byte for byte
// without checking that their blobs are present (they arrive later).
func (s *Server) manifestService(ctx context.Context, gun string) (distribution.ManifestService, error) {
	repo, err := s.repository(ctx, gun)
	if err != nil {
		return nil, err
	}
	return repo.Manifests(ctx, storage.SkipLayerVerification())
}

// storeManifest puts m into ms, which keeps its bytes, so its digest.
func storeManifest(ctx context.Context, ms distribution.ManifestService, m *verifiedManifest) error {
	dm, _, err := distribution.UnmarshalManifest(m.mediaType, m.body)
	if err != nil {
		return fmt.Errorf("read manifest %s: %w", m.digest, err)
	}
	d, err := ms.Put(ctx, dm)
	if err != nil {
		return fmt.Errorf("store manifest %s: %w", m.digest, err)
	}
	if d != m.digest {
		return fmt.Errorf("manifest %s was stored as %s", m.digest, d)
	}
	return nil
}
