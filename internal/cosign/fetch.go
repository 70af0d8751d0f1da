package cosign

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/internal/referrers"
)

// client reads what signatures are made of from one repository, each read
// bounded (internal/referrers). go-containerregistry's remote package reads
// manifests up to 100 MiB; signatures need a few KiB, so the reads are
// made there, with the caller's client.
type client struct {
	rc     referrers.Client
	limits Limits
}

func newClient(up Upstream, limits Limits) *client {
	return &client{rc: referrers.Client{Repo: up.Repo, Doer: up.Client}, limits: limits}
}

var (
	errTooLarge = referrers.ErrTooLarge // a response longer than the limit it was read under
	errNotFound = referrers.ErrNotFound // a 404: the registry has no such manifest, blob or API
)

// StatusError is an upstream answer that is no verdict: a status other
// than 200 and 404 (401, 403, 429, 5xx, ...).
type StatusError = referrers.StatusError

func (c *client) url(kind, ref string, query url.Values) string { return c.rc.URL(kind, ref, query) }

func (c *client) get(ctx context.Context, u, accept string, limit int64) ([]byte, http.Header, error) {
	return c.rc.Get(ctx, u, accept, limit)
}

// fetch reads the manifest or blob (kind "manifests" or "blobs") that desc
// names, checked against desc (referrers.Client.Fetch): a descriptor
// claiming more than limit is refused before any request.
func (c *client) fetch(ctx context.Context, kind string, desc ocispec.Descriptor, limit int64) ([]byte, *finding, error) {
	what := strings.TrimSuffix(kind, "s")
	b, err := c.rc.Fetch(ctx, kind, desc, limit)
	switch {
	case err == nil:
		return b, nil, nil
	case errors.Is(err, errTooLarge) && desc.Size > limit:
		return nil, refusal(TooLarge, "the signature %s %s claims %d bytes, more than the %d read", what, desc.Digest, desc.Size, limit), nil
	case errors.Is(err, errTooLarge):
		return nil, refusal(TooLarge, "the signature %s %s is longer than its descriptor's %d bytes", what, desc.Digest, desc.Size), nil
	case errors.Is(err, errNotFound):
		return nil, refusal(Malformed, "the signature %s %s is listed but missing upstream", what, desc.Digest), nil
	case errors.Is(err, referrers.ErrMismatch):
		return nil, refusal(Malformed, "the signature %s %v", what, err), nil
	}
	return nil, nil, err
}

// referrers lists the referrers of dgst of artifactType
// (referrers.Client.List). No referrers is an empty list.
func (c *client) referrers(ctx context.Context, dgst digest.Digest, artifactType string) ([]ocispec.Descriptor, *finding, error) {
	out, err := c.rc.List(ctx, dgst, artifactType, c.limits.ReferrersBytes, c.limits.Referrers)
	var parse *referrers.ParseError
	switch {
	case errors.Is(err, errTooLarge):
		return nil, refusal(TooLarge, "its referrers index is larger than %d bytes", c.limits.ReferrersBytes), nil
	case errors.Is(err, referrers.ErrTooMany):
		return nil, refusal(TooLarge, "its referrers index lists more than %d entries", c.limits.Referrers), nil
	case errors.As(err, &parse):
		return nil, refusal(Malformed, "its referrers index does not parse: %v", parse.Err), nil
	case err != nil:
		return nil, nil, err
	}
	return out, nil, nil
}
