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

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Limits bound one listing. A zero field takes its default.
type Limits struct {
	Bytes   int64 // the answers' bytes, all pages together: DefaultBytes
	Entries int   // the entries, all pages together: DefaultEntries
}

// The default limits: a referrers entry is some 300 bytes.
const (
	DefaultBytes   = 1 << 20
	DefaultEntries = 1000
)

func (l Limits) withDefaults() Limits {
	if l.Bytes <= 0 {
		l.Bytes = DefaultBytes
	}
	if l.Entries <= 0 {
		l.Entries = DefaultEntries
	}
	return l
}

var (
	// ErrTooLarge is an answer longer than the limit it was read under.
	ErrTooLarge = errors.New("larger than the limit")
	// ErrTooMany is a list of more entries than Limits.Entries.
	ErrTooMany = errors.New("more entries than the limit")
	// ErrNotFound is a 404: the registry has no such manifest, blob or API.
	ErrNotFound = errors.New("not found")
	// ErrMismatch is content that does not hash to, or is not as long as,
	// the descriptor that named it (or a descriptor with a negative size).
	ErrMismatch = errors.New("content does not match its descriptor")
)

// A MalformedError is an answer that is no referrers index.
type MalformedError struct{ Err error }

func (e *MalformedError) Error() string {
	return "the referrers index does not parse: " + e.Err.Error()
}
func (e *MalformedError) Unwrap() error { return e.Err }

// StatusError is a registry answer that is no verdict: a status other
// than 200 and 404 (401, 403, 429, 5xx, ...).
type StatusError struct {
	URL    string
	Status int
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("GET %s: status %d", e.URL, e.Status)
}

// A Doer sends one request and follows redirects as its owner allows
// (an *http.Client).
type Doer interface {
	Do(req *http.Request) (*http.Response, error)
}

// Repository is where a registry keeps one repository: scheme and host of
// its /v2/ API, and the repository's path there.
type Repository struct {
	Scheme, Host, Path string
}

// URL is the address of kind ("manifests", "blobs", "referrers") ref in r.
func (r Repository) URL(kind, ref string, query url.Values) string {
	u := url.URL{Scheme: r.Scheme, Host: r.Host, Path: "/v2/" + r.Path + "/" + kind + "/" + ref, RawQuery: query.Encode()}
	return u.String()
}

// Get reads the body at u with client, at most limit bytes: a
// Content-Length beyond it is refused before the body is read, and a body
// that runs past it is cut (ErrTooLarge). A 404 is ErrNotFound; other
// statuses but 200 are a *StatusError. The response's headers come back
// with every answer.
func Get(ctx context.Context, client Doer, u, accept string, limit int64) ([]byte, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, nil, err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := client.Do(req)
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

// Fetch reads the manifest or blob (kind "manifests" or "blobs") of repo
// that desc names and checks the bytes are it. A descriptor claiming more
// than limit is refused (ErrTooLarge) before any request, a negative size
// is ErrMismatch; the read stops at desc.Size bytes (ErrTooLarge past it),
// and the bytes must hash to desc.Digest (ErrMismatch).
func Fetch(ctx context.Context, client Doer, repo Repository, kind string, desc ocispec.Descriptor, limit int64) ([]byte, error) {
	if desc.Size > limit {
		return nil, fmt.Errorf("%s claims %d bytes: %w of %d", desc.Digest, desc.Size, ErrTooLarge, limit)
	}
	if desc.Size < 0 {
		return nil, fmt.Errorf("%s has a negative size: %w", desc.Digest, ErrMismatch)
	}
	if !ValidDigest(desc.Digest) {
		return nil, fmt.Errorf("%q is no sha256 digest: %w", desc.Digest, ErrMismatch)
	}
	accept := ""
	if kind == "manifests" {
		accept = desc.MediaType
	}
	b, _, err := Get(ctx, client, repo.URL(kind, desc.Digest.String(), nil), accept, desc.Size)
	if err != nil {
		return nil, err
	}
	if got := digest.FromBytes(b); got != desc.Digest || int64(len(b)) != desc.Size {
		return nil, fmt.Errorf("%s came as %d bytes hashing to %s: %w", desc.Digest, len(b), got, ErrMismatch)
	}
	return b, nil
}

// ValidDigest says whether d is a well-formed sha256 digest.
func ValidDigest(d digest.Digest) bool {
	return d.Validate() == nil && d.Algorithm() == digest.SHA256
}

// TagOf is the referrers tag of d: sha256-<hex>.
func TagOf(d digest.Digest) string { return strings.Replace(d.String(), ":", "-", 1) }

// List reads the referrers of dgst in repo, of artifactType when it is not
// "": from the referrers API, or, when the registry has none, from the
// referrers tag. No referrers is an empty list. The filter is applied here
// too, whether or not the registry applied it. Errors: ErrTooLarge,
// ErrTooMany, a *MalformedError (the registry's answer is no index), a
// *StatusError or a transport error (no answer).
func List(ctx context.Context, client Doer, repo Repository, dgst digest.Digest, artifactType string, lim Limits) ([]ocispec.Descriptor, error) {
	lim = lim.withDefaults()
	var q url.Values
	if artifactType != "" {
		q = url.Values{"artifactType": {artifactType}}
	}
	u := repo.URL("referrers", dgst.String(), q)
	b, h, err := Get(ctx, client, u, ocispec.MediaTypeImageIndex, lim.Bytes)
	api := err == nil && strings.HasPrefix(h.Get("Content-Type"), ocispec.MediaTypeImageIndex)
	// As go-containerregistry: 404, 400, 406 or a 200 that is no index mean
	// there is no referrers API; see the distribution spec's referrers tag schema.
	status, isStatus := errors.AsType[*StatusError](err)
	fallback := errors.Is(err, ErrNotFound) || (err == nil && !api) ||
		(isStatus && (status.Status == http.StatusBadRequest || status.Status == http.StatusNotAcceptable))
	if fallback {
		b, h, err = Get(ctx, client, repo.URL("manifests", TagOf(dgst), nil), ocispec.MediaTypeImageIndex, lim.Bytes)
		if errors.Is(err, ErrNotFound) {
			return nil, nil
		}
	}
	if err != nil {
		return nil, err
	}
	budget := lim.Bytes - int64(len(b))
	all, err := Parse(b, lim.Entries)
	if err != nil {
		return nil, err
	}
	// Pages: only the API paginates.
	for pages := 1; api; pages++ {
		next := nextPage(u, h.Get("Link"))
		if next == "" {
			break
		}
		if budget <= 0 {
			return nil, fmt.Errorf("%d pages of referrers: %w of %d bytes", pages, ErrTooLarge, lim.Bytes)
		}
		b, h, err = Get(ctx, client, next, ocispec.MediaTypeImageIndex, budget)
		if err != nil {
			return nil, err
		}
		budget -= int64(len(b))
		page, err := Parse(b, lim.Entries-len(all))
		if err != nil {
			return nil, err
		}
		all, u = append(all, page...), next
	}
	if artifactType == "" {
		return all, nil
	}
	out := all[:0]
	for _, d := range all {
		if d.ArtifactType == artifactType {
			out = append(out, d)
		}
	}
	return out, nil
}

// nextPage is the rel="next" target of link resolved against u, when it is
// on u's scheme and host; else "".
func nextPage(u, link string) string {
	for part := range strings.SplitSeq(link, ",") {
		target, params, ok := strings.Cut(strings.TrimSpace(part), ";")
		if !ok || !strings.Contains(strings.ReplaceAll(params, " ", ""), `rel="next"`) {
			continue
		}
		target = strings.TrimSpace(target)
		if !strings.HasPrefix(target, "<") || !strings.HasSuffix(target, ">") {
			return ""
		}
		base, err := url.Parse(u)
		if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
			return ""
		}
		ref, err := url.Parse(target[1 : len(target)-1])
		if err != nil {
			return ""
		}
		next := base.ResolveReference(ref).String()
		// The link is followed as the string it serialises to, so the
		// origin is checked on that string parsed again.
		again, err := url.Parse(next)
		if err != nil || again.Scheme != base.Scheme || again.Host != base.Host {
			return ""
		}
		return next
	}
	return ""
}

// Parse reads an OCI image index of referrers (the referrers API's answer,
// or the referrers tag's manifest): at most max entries (ErrTooMany).
// Entries without a valid sha256 digest or with a negative size are
// dropped: they name nothing that could be fetched. Anything else that is
// no index is a *MalformedError.
func Parse(b []byte, max int) ([]ocispec.Descriptor, error) {
	var doc struct {
		SchemaVersion int                  `json:"schemaVersion"`
		MediaType     string               `json:"mediaType"`
		Manifests     []ocispec.Descriptor `json:"manifests"`
		Config        json.RawMessage      `json:"config"`
		Layers        json.RawMessage      `json:"layers"`
	}
	malformed := func(format string, a ...any) error { return &MalformedError{fmt.Errorf(format, a...)} }
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, malformed("not JSON: %w", err)
	}
	if doc.SchemaVersion != 2 {
		return nil, malformed("schemaVersion %d, not 2", doc.SchemaVersion)
	}
	if doc.MediaType != ocispec.MediaTypeImageIndex && doc.MediaType != "" {
		return nil, malformed("media type %q is not an OCI index", doc.MediaType)
	}
	if doc.Config != nil || doc.Layers != nil {
		return nil, malformed("an index with config or layers is ambiguous")
	}
	if len(doc.Manifests) > max {
		return nil, fmt.Errorf("%d entries: %w (%d)", len(doc.Manifests), ErrTooMany, max)
	}
	out := doc.Manifests[:0]
	for _, d := range doc.Manifests {
		if d.Digest.Validate() == nil && d.Digest.Algorithm() == digest.SHA256 && d.Size >= 0 {
			out = append(out, d)
		}
	}
	return out, nil
}
