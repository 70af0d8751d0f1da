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
// bounded. go-containerregistry's remote package reads manifests up to
// 100 MiB; signatures need a few KiB, so the reads are made here, with the
// caller's client.
type client struct {
	up     Upstream
	limits Limits
}

// The errors of a bounded read (internal/referrers): a response longer
// than its limit, a 404.
var (
	errTooLarge = referrers.ErrTooLarge
	errNotFound = referrers.ErrNotFound
)

// StatusError is an upstream answer that is no verdict: a status other
// than 200 and 404 (401, 403, 429, 5xx, ...).
type StatusError = referrers.StatusError

func (c *client) repo() referrers.Repository {
	return referrers.Repository{Scheme: c.up.Repo.Scheme(), Host: c.up.Repo.RegistryStr(), Path: c.up.Repo.RepositoryStr()}
}

func (c *client) url(kind, ref string, query url.Values) string {
	return c.repo().URL(kind, ref, query)
}

// get reads the body at u, at most limit bytes (referrers.Get).
func (c *client) get(ctx context.Context, u, accept string, limit int64) ([]byte, http.Header, error) {
	return referrers.Get(ctx, c.up.Client, u, accept, limit)
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
	b, err := referrers.Fetch(ctx, c.up.Client, c.repo(), kind, desc, limit)
	switch {
	case errors.Is(err, errTooLarge):
		return nil, refusal(TooLarge, "the signature %s %s is longer than its descriptor's %d bytes", what, desc.Digest, desc.Size), nil
	case errors.Is(err, errNotFound):
		return nil, refusal(Malformed, "the signature %s %s is listed but missing upstream", what, desc.Digest), nil
	case errors.Is(err, referrers.ErrMismatch):
		return nil, refusal(Malformed, "the signature %s: %v", what, err), nil
	case err != nil:
		return nil, nil, err
	}
	return b, nil, nil
}

// referrers lists the referrers of dgst of artifactType: from the
// referrers API, or, when the registry has none, from the referrers tag
// (sha256-<hex>), as internal/referrers reads them. No referrers is an
// empty list.
func (c *client) referrers(ctx context.Context, dgst digest.Digest, artifactType string) ([]ocispec.Descriptor, *finding, error) {
	lim := referrers.Limits{Bytes: c.limits.ReferrersBytes, Entries: c.limits.Referrers}
	out, err := referrers.List(ctx, c.up.Client, c.repo(), dgst, artifactType, lim)
	if _, ok := errors.AsType[*referrers.MalformedError](err); ok {
		return nil, refusal(Malformed, "its referrers index does not parse: %v", errors.Unwrap(err)), nil
	}
	switch {
	case errors.Is(err, referrers.ErrTooLarge):
		return nil, refusal(TooLarge, "its referrers index is larger than %d bytes", c.limits.ReferrersBytes), nil
	case errors.Is(err, referrers.ErrTooMany):
		return nil, refusal(TooLarge, "its referrers index lists more than %d entries", c.limits.Referrers), nil
	case err != nil:
		return nil, nil, err
	}
	return out, nil, nil
}
