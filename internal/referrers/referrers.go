package referrers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// A Doer sends one request and follows redirects as its owner allows.
type Doer interface {
	Do(req *http.Request) (*http.Response, error)
}

// A Client reads from one repository (its registry's scheme and host come
// from Repo) with the caller's Doer.
type Client struct {
	Repo name.Repository
	Doer Doer
}

var (
	// ErrTooLarge is a response, a descriptor or an index beyond its limit.
	ErrTooLarge = errors.New("larger than the limit")
	// ErrTooMany is an index listing more entries than its limit.
	ErrTooMany = errors.New("too many entries")
	// ErrNotFound is a 404: the registry has no such manifest, blob or API.
	ErrNotFound = errors.New("not found")
	// ErrMismatch is content that does not hash to, or is not as long as,
	// the descriptor that named it (or a descriptor with a negative size).
	ErrMismatch = errors.New("content does not match its descriptor")
)

// StatusError is an upstream answer that is no verdict: a status other
// than 200 and 404 (401, 403, 429, 5xx, ...).
type StatusError struct {
	URL    string
	Status int
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("GET %s: status %d", e.URL, e.Status)
}

// A ParseError is an index that does not parse as an OCI index.
type ParseError struct{ Err error }

func (e *ParseError) Error() string { return "referrers index: " + e.Err.Error() }
func (e *ParseError) Unwrap() error { return e.Err }

// URL is the registry API URL of kind ("manifests", "blobs", "referrers")
// and ref in c's repository.
func (c Client) URL(kind, ref string, query url.Values) string {
	u := url.URL{Scheme: c.Repo.Scheme(), Host: c.Repo.RegistryStr(),
		Path: "/v2/" + c.Repo.RepositoryStr() + "/" + kind + "/" + ref, RawQuery: query.Encode()}
	return u.String()
}

// Get reads the body at u, at most limit bytes: a Content-Length beyond it
// is refused before the body is read, and a body that runs past it is cut
// (ErrTooLarge). A 404 is ErrNotFound; other statuses but 200 are a
// *StatusError, with the response's headers for the caller to look at.
func (c Client) Get(ctx context.Context, u, accept string, limit int64) ([]byte, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, nil, err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := c.Doer.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("GET %s: %w", u, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, resp.Header, ErrNotFound
	case resp.StatusCode != http.StatusOK:
		return nil, resp.Header, &StatusError{URL: u, Status: resp.StatusCode}
	case resp.ContentLength > limit:
		return nil, resp.Header, fmt.Errorf("GET %s: %d bytes, %w of %d", u, resp.ContentLength, ErrTooLarge, limit)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, resp.Header, fmt.Errorf("GET %s: %w", u, err)
	}
	if int64(len(b)) > limit {
		return nil, resp.Header, fmt.Errorf("GET %s: %w of %d", u, ErrTooLarge, limit)
	}
	return b, resp.Header, nil
}

// Fetch reads the manifest or blob (kind "manifests" or "blobs") that desc
// names and checks the bytes are it. A descriptor claiming more than limit
// is refused (ErrTooLarge) before any request, a negative size is
// ErrMismatch; the read stops at desc.Size bytes, and the bytes must hash
// to desc.Digest (ErrMismatch).
func (c Client) Fetch(ctx context.Context, kind string, desc ocispec.Descriptor, limit int64) ([]byte, error) {
	if desc.Size > limit {
		return nil, fmt.Errorf("%s claims %d bytes: %w of %d", desc.Digest, desc.Size, ErrTooLarge, limit)
	}
	if desc.Size < 0 {
		return nil, fmt.Errorf("%s has a negative size: %w", desc.Digest, ErrMismatch)
	}
	accept := ""
	if kind == "manifests" {
		accept = desc.MediaType
	}
	b, _, err := c.Get(ctx, c.URL(kind, desc.Digest.String(), nil), accept, desc.Size)
	if err != nil {
		return nil, err
	}
	if got := digest.FromBytes(b); got != desc.Digest || int64(len(b)) != desc.Size {
		return nil, fmt.Errorf("%s came as %d bytes hashing to %s: %w", desc.Digest, len(b), got, ErrMismatch)
	}
	return b, nil
}

// Tag is the referrers tag schema's tag of d: sha256-<hex>.
func Tag(d digest.Digest) string { return strings.Replace(d.String(), ":", "-", 1) }

// List returns the referrers of dgst of artifactType: from the referrers
// API or, when the registry has none, the referrers tag. No referrers is
// an empty list. An index beyond maxBytes is ErrTooLarge, beyond
// maxEntries ErrTooMany, one that does not parse a *ParseError.
func (c Client) List(ctx context.Context, dgst digest.Digest, artifactType string, maxBytes int64, maxEntries int) ([]ocispec.Descriptor, error) {
	u := c.URL("referrers", dgst.String(), url.Values{"artifactType": {artifactType}})
	b, h, err := c.Get(ctx, u, ocispec.MediaTypeImageIndex, maxBytes)
	var status *StatusError
	api := err == nil && strings.HasPrefix(h.Get("Content-Type"), ocispec.MediaTypeImageIndex)
	// As go-containerregistry: 404, 400, 406 or a 200 that is no index mean
	// there is no referrers API; see the distribution spec's referrers tag schema.
	fallback := errors.Is(err, ErrNotFound) || (err == nil && !api) ||
		(errors.As(err, &status) && (status.Status == http.StatusBadRequest || status.Status == http.StatusNotAcceptable))
	if fallback {
		b, _, err = c.Get(ctx, c.URL("manifests", Tag(dgst), nil), ocispec.MediaTypeImageIndex, maxBytes)
		if errors.Is(err, ErrNotFound) {
			return nil, nil
		}
	}
	if err != nil {
		return nil, err
	}
	idx, err := Parse(b, maxEntries)
	if err != nil {
		return nil, err
	}
	var out []ocispec.Descriptor
	for _, d := range idx {
		if d.ArtifactType == artifactType {
			out = append(out, d)
		}
	}
	return out, nil
}

// Parse reads an OCI image index of referrers (the referrers API's answer,
// or the referrers tag's manifest): at most max entries (ErrTooMany).
// Entries without a valid sha256 digest or with a negative size are
// dropped: they name nothing that could be fetched. Other faults are a
// *ParseError.
func Parse(b []byte, max int) ([]ocispec.Descriptor, error) {
	var doc struct {
		SchemaVersion int                  `json:"schemaVersion"`
		MediaType     string               `json:"mediaType"`
		Manifests     []ocispec.Descriptor `json:"manifests"`
		Config        json.RawMessage      `json:"config"`
		Layers        json.RawMessage      `json:"layers"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, &ParseError{fmt.Errorf("not JSON: %w", err)}
	}
	if doc.SchemaVersion != 2 {
		return nil, &ParseError{fmt.Errorf("schemaVersion %d, not 2", doc.SchemaVersion)}
	}
	if doc.MediaType != ocispec.MediaTypeImageIndex && doc.MediaType != "" {
		return nil, &ParseError{fmt.Errorf("media type %q is not an OCI index", doc.MediaType)}
	}
	if doc.Config != nil || doc.Layers != nil {
		return nil, &ParseError{errors.New("an index with config or layers is ambiguous")}
	}
	if len(doc.Manifests) > max {
		return nil, fmt.Errorf("%d entries: %w (%d)", len(doc.Manifests), ErrTooMany, max)
	}
	out := doc.Manifests[:0]
	for _, d := range doc.Manifests {
		if ValidDigest(d.Digest) && d.Size >= 0 {
			out = append(out, d)
		}
	}
	return out, nil
}

// ValidDigest says whether d is a well-formed sha256 digest.
func ValidDigest(d digest.Digest) bool {
	return d.Validate() == nil && d.Algorithm() == digest.SHA256
}
