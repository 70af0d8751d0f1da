package cosign

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// client reads what signatures are made of from one repository, each read
// bounded. go-containerregistry's remote package reads manifests up to
// 100 MiB; signatures need a few KiB, so the reads are made here, with the
// caller's client.
type client struct {
	up     Upstream
	limits Limits
}

// errTooLarge is a response longer than the limit it was read under.
var errTooLarge = errors.New("larger than the limit")

// errNotFound is a 404: the registry has no such manifest, blob or API.
var errNotFound = errors.New("not found")

// StatusError is an upstream answer that is no verdict: a status other
// than 200 and 404 (401, 403, 429, 5xx, ...).
type StatusError struct {
	URL    string
	Status int
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("GET %s: status %d", e.URL, e.Status)
}

func (c *client) url(kind, ref string, query url.Values) string {
	u := url.URL{Scheme: c.up.Repo.Scheme(), Host: c.up.Repo.RegistryStr(),
		Path: "/v2/" + c.up.Repo.RepositoryStr() + "/" + kind + "/" + ref, RawQuery: query.Encode()}
	return u.String()
}

// get reads the body at u, at most limit bytes: a Content-Length beyond it
// is refused before the body is read, and a body that runs past it is cut
// (errTooLarge). A 404 is errNotFound; other statuses but 200 are a
// *StatusError, with the response's headers for the caller to look at.
func (c *client) get(ctx context.Context, u, accept string, limit int64) ([]byte, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, nil, err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := c.up.Client.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("GET %s: %w", u, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, resp.Header, errNotFound
	case resp.StatusCode != http.StatusOK:
		return nil, resp.Header, &StatusError{URL: u, Status: resp.StatusCode}
	case resp.ContentLength > limit:
		return nil, resp.Header, fmt.Errorf("GET %s: %d bytes, %w of %d", u, resp.ContentLength, errTooLarge, limit)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, resp.Header, fmt.Errorf("GET %s: %w", u, err)
	}
	if int64(len(b)) > limit {
		return nil, resp.Header, fmt.Errorf("GET %s: %w of %d", u, errTooLarge, limit)
	}
	return b, resp.Header, nil
}

// fetch reads the manifest or blob (kind "manifests" or "blobs") that desc
// names, and checks the bytes are it: desc.Size and limit bound the read,
// the bytes must hash to desc.Digest and have its length. A descriptor
// claiming more than limit is refused before any request.
func (c *client) fetch(ctx context.Context, kind string, desc ocispec.Descriptor, limit int64) ([]byte, *finding, error) {
	what := strings.TrimSuffix(kind, "s")
	if desc.Size > limit {
		return nil, refusal(TooLarge, "the signature %s %s claims %d bytes, more than the %d read", what, desc.Digest, desc.Size, limit), nil
	}
	if desc.Size < 0 {
		return nil, refusal(Malformed, "the signature %s %s has a negative size", what, desc.Digest), nil
	}
	accept := ""
	if kind == "manifests" {
		accept = desc.MediaType
	}
	b, _, err := c.get(ctx, c.url(kind, desc.Digest.String(), nil), accept, desc.Size)
	switch {
	case errors.Is(err, errTooLarge):
		return nil, refusal(TooLarge, "the signature %s %s is longer than its descriptor's %d bytes", what, desc.Digest, desc.Size), nil
	case errors.Is(err, errNotFound):
		return nil, refusal(Malformed, "the signature %s %s is listed but missing upstream", what, desc.Digest), nil
	case err != nil:
		return nil, nil, err
	}
	if got := digest.FromBytes(b); got != desc.Digest || int64(len(b)) != desc.Size {
		return nil, refusal(Malformed, "the signature %s %s came as %d bytes hashing to %s", what, desc.Digest, len(b), got), nil
	}
	return b, nil, nil
}

// referrers lists the referrers of dgst of artifactType: from the
// referrers API, or, when the registry has none, from the referrers tag
// (sha256-<hex>). No referrers is an empty list.
func (c *client) referrers(ctx context.Context, dgst digest.Digest, artifactType string) ([]ocispec.Descriptor, *finding, error) {
	u := c.url("referrers", dgst.String(), url.Values{"artifactType": {artifactType}})
	b, h, err := c.get(ctx, u, ocispec.MediaTypeImageIndex, c.limits.ReferrersBytes)
	var status *StatusError
	api := err == nil && strings.HasPrefix(h.Get("Content-Type"), ocispec.MediaTypeImageIndex)
	// As go-containerregistry: 404, 400, 406 or a 200 that is no index mean
	// there is no referrers API; see the distribution spec's referrers tag schema.
	fallback := errors.Is(err, errNotFound) || (err == nil && !api) ||
		(errors.As(err, &status) && (status.Status == http.StatusBadRequest || status.Status == http.StatusNotAcceptable))
	if fallback {
		tag := strings.Replace(dgst.String(), ":", "-", 1)
		b, _, err = c.get(ctx, c.url("manifests", tag, nil), ocispec.MediaTypeImageIndex, c.limits.ReferrersBytes)
		if errors.Is(err, errNotFound) {
			return nil, nil, nil
		}
	}
	if errors.Is(err, errTooLarge) {
		return nil, refusal(TooLarge, "its referrers index is larger than %d bytes", c.limits.ReferrersBytes), nil
	}
	if err != nil {
		return nil, nil, err
	}
	idx, err := parseReferrers(b, c.limits.Referrers)
	if errors.Is(err, errTooMany) {
		return nil, refusal(TooLarge, "its referrers index lists more than %d entries", c.limits.Referrers), nil
	}
	if err != nil {
		return nil, refusal(Malformed, "its referrers index does not parse: %v", err), nil
	}
	var out []ocispec.Descriptor
	for _, d := range idx {
		if d.ArtifactType == artifactType {
			out = append(out, d)
		}
	}
	return out, nil, nil
}
