package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/egress"
)

// manifestAccept is what trustproxy asks an upstream for: every manifest
// type it can verify and store.
var manifestAccept = strings.Join([]string{
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.oci.image.index.v1+json",
}, ", ")

// upstreams is the static set of configured registries. Requests choose one
// by name only; no URL is ever built from request input.
type upstreams struct {
	byName map[string]*upstream
	first  *upstream
}

func newUpstreams(cfg *config.Config) (*upstreams, error) {
	u := &upstreams{byName: map[string]*upstream{}}
	for i := range cfg.Upstreams {
		up, err := newUpstream(i, cfg.Upstreams[i], cfg.Limits)
		if err != nil {
			return nil, fmt.Errorf("upstreams[%d] (%s): %w", i, cfg.Upstreams[i].Name, err)
		}
		u.byName[up.cfg.Name] = up
		if u.first == nil {
			u.first = up
		}
	}
	if u.first == nil {
		return nil, errors.New("no upstream configured")
	}
	return u, nil
}

// pick returns the upstream a request addresses and the repository path at
// it. containerd names the registry in the ns query parameter; without one,
// a path prefix naming a configured upstream selects it; everything else
// goes to the first upstream. Docker Hub's one-segment names get "library/".
func (u *upstreams) pick(q url.Values, name string) (*upstream, string, error) {
	up := u.first
	if ns := q.Get("ns"); ns != "" {
		p, ok := u.byName[ns]
		if !ok {
			return nil, "", &requestError{codeNameUnknown, fmt.Sprintf("upstream %q (ns parameter) is not configured", ns)}
		}
		up = p
	} else if first, rest, ok := strings.Cut(name, "/"); ok {
		if p, ok := u.byName[first]; ok {
			up, name = p, rest
		}
	}
	if up.cfg.Name == "docker.io" && !strings.Contains(name, "/") {
		name = "library/" + name
	}
	return up, name, nil
}

// upstream is one registry and the client that reads from it.
type upstream struct {
	cfg     config.Upstream
	base    *url.URL
	client  *egress.Client
	timeout time.Duration
}

func newUpstream(i int, cfg config.Upstream, lim config.Limits) (*upstream, error) {
	base, err := url.Parse(strings.TrimSuffix(cfg.URL, "/"))
	if err != nil {
		return nil, fmt.Errorf("url: %w", err)
	}
	c, err := egress.New(egress.Configured(fmt.Sprintf("upstreams[%d]", i), cfg.Endpoint, cfg.RedirectHosts, lim.UpstreamTimeout))
	if err != nil {
		return nil, err
	}
	return &upstream{cfg: cfg, base: base, client: c, timeout: lim.UpstreamTimeout}, nil
}

// get sends GET <base>/v2/<repo>/<kind>/<ref>?<query>, with a pull token
// for repo when the registry asks for one. A non-200 answer is an
// *upstreamError. The caller closes the body.
func (u *upstream) get(ctx context.Context, repo, kind, ref string, query url.Values, accept string) (*http.Response, error) {
	return u.do(ctx, http.MethodGet, repo, kind, ref, query, accept)
}

// blobSize asks the upstream for the length of blob dgst of repo (HEAD).
func (u *upstream) blobSize(ctx context.Context, repo string, dgst digest.Digest) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, u.timeout)
	defer cancel()
	resp, err := u.do(ctx, http.MethodHead, repo, "blobs", dgst.String(), nil, "")
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	if resp.ContentLength < 0 {
		return 0, &upstreamError{code: codeUnavailable, err: fmt.Errorf("upstream %s gave no length for blob %s", u.cfg.Name, dgst)}
	}
	return resp.ContentLength, nil
}

func (u *upstream) do(ctx context.Context, method, repo, kind, ref string, query url.Values, accept string) (*http.Response, error) {
	target := u.base.JoinPath("v2", repo, kind, ref)
	target.RawQuery = query.Encode()
	req, err := http.NewRequestWithContext(ctx, method, target.String(), nil)
	if err != nil {
		return nil, err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := u.client.Do(req, "repository:"+repo+":pull")
	if rl, ok := errors.AsType[*egress.RateLimitError](err); ok {
		return nil, &upstreamError{code: codeTooManyRequests, retryAfter: rl.RetryAfter(), err: rl}
	}
	if err != nil {
		what := "unreachable"
		if errors.As(err, new(*egress.RealmError)) || errors.As(err, new(*egress.AddressError)) || errors.As(err, new(*egress.RedirectError)) {
			what = "refused" // the upstream asked for something trustproxy does not do
		}
		return nil, &upstreamError{code: codeUnavailable, err: fmt.Errorf("upstream %s %s: %w", u.cfg.Name, what, err)}
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	code := codeUnavailable
	if resp.StatusCode == http.StatusNotFound {
		code = codeManifestUnknown
		if kind == "blobs" {
			code = codeBlobUnknown
		}
	}
	return nil, &upstreamError{code: code, err: fmt.Errorf("upstream %s answered %s for %s/%s/%s", u.cfg.Name, resp.Status, repo, kind, ref)}
}

// fetchManifest reads the manifest ref (tag or digest) of repo from the
// upstream: at most limit bytes, else errTooLarge. Callers check the bytes.
func (u *upstream) fetchManifest(ctx context.Context, repo, ref string, limit int64) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, u.timeout)
	defer cancel()
	resp, err := u.get(ctx, repo, "manifests", ref, nil, manifestAccept)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.ContentLength > limit {
		return nil, errTooLarge
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, &upstreamError{code: codeUnavailable, err: fmt.Errorf("read manifest %s from %s: %w", ref, u.cfg.Name, err)}
	}
	if int64(len(body)) > limit {
		return nil, errTooLarge
	}
	return body, nil
}

var errTooLarge = errors.New("larger than allowed")

// maxTagsBody bounds an upstream's tags/list answer.
const maxTagsBody = 4 << 20

// tags returns the first page (up to maxTagsPage) of repo's tags at the upstream.
func (u *upstream) tags(ctx context.Context, repo string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, u.timeout)
	defer cancel()
	resp, err := u.get(ctx, repo, "tags", "list", url.Values{"n": {strconv.Itoa(maxTagsPage)}}, "")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var list struct {
		Tags []string `json:"tags"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxTagsBody)).Decode(&list); err != nil {
		return nil, &upstreamError{code: codeUnavailable, err: fmt.Errorf("read tags of %s from %s: %w", repo, u.cfg.Name, err)}
	}
	return list.Tags, nil
}
