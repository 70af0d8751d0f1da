package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/egress"
	"github.com/trustproxy/trustproxy/internal/gun"
	"github.com/trustproxy/trustproxy/internal/manifest"
)

// Set is the static set of configured registries.
type Set struct {
	byName map[string]*Registry
	first  *Registry
}

// Metrics count what trustproxy asks of its upstream registries.
type Metrics struct {
	requests *prometheus.CounterVec // trustproxy_upstream_requests_total{upstream,kind,status}
	bytes    *prometheus.CounterVec // trustproxy_upstream_bytes_total{upstream,kind}
}

// NewMetrics registers the upstream metrics on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustproxy_upstream_requests_total",
			Help: "Requests to upstream registries, by upstream, kind (manifests, blobs, tags) and status (the HTTP status, or error when none came).",
		}, []string{"upstream", "kind", "status"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustproxy_upstream_bytes_total",
			Help: "Bytes read from upstream registries' response bodies, by upstream and kind.",
		}, []string{"upstream", "kind"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.bytes} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// NewSet opens a client for each of cfg's upstreams; m counts their
// requests (nil: not counted).
func NewSet(cfg *config.Config, m *Metrics) (*Set, error) {
	u := &Set{byName: map[string]*Registry{}}
	for i := range cfg.Upstreams {
		up, err := newRegistry(i, cfg.Upstreams[i], cfg.Limits, m)
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

// Names are the configured registries' names, sorted.
func (u *Set) Names() []string { return slices.Sorted(maps.Keys(u.byName)) }

// Named is the configured registry of that name, or nil.
func (u *Set) Named(name string) *Registry { return u.byName[name] }

// A NotConfiguredError is a request for an upstream that is not configured.
type NotConfiguredError struct{ Name string }

func (e *NotConfiguredError) Error() string {
	return fmt.Sprintf("upstream %q (ns parameter) is not configured", e.Name)
}

// Route returns the registry a request for the repository name addresses,
// and the repository's GUN. containerd names the registry in the ns query
// parameter (q may be nil); without one, a path prefix naming a configured
// upstream selects it; everything else goes to the first upstream. Docker
// Hub's one-segment names get "library/". A name that is not in the
// reference grammar once routed is refused.
func (u *Set) Route(q url.Values, name string) (*Registry, gun.Name, error) {
	up := u.first
	if ns := q.Get("ns"); ns != "" {
		p, ok := u.byName[ns]
		if !ok {
			return nil, gun.Name{}, &NotConfiguredError{ns}
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
	n, err := gun.New(up.cfg.Name, name)
	if err != nil {
		return nil, gun.Name{}, err
	}
	return up, n, nil
}

// Registry is one configured registry and the client that reads from it.
type Registry struct {
	cfg     config.Upstream
	base    *url.URL
	client  *egress.Client
	timeout time.Duration
	metrics *Metrics
}

func newRegistry(i int, cfg config.Upstream, lim config.Limits, m *Metrics) (*Registry, error) {
	base, err := url.Parse(strings.TrimSuffix(cfg.URL, "/"))
	if err != nil {
		return nil, fmt.Errorf("url: %w", err)
	}
	c, err := egress.New(egress.Configured(fmt.Sprintf("upstreams[%d]", i), cfg.Endpoint, cfg.RedirectHosts, lim.UpstreamTimeout))
	if err != nil {
		return nil, err
	}
	return &Registry{cfg: cfg, base: base, client: c, timeout: lim.UpstreamTimeout, metrics: m}, nil
}

// Name is the registry's configured name, the first part of its GUNs.
func (u *Registry) Name() string { return u.cfg.Name }

// URL is where a request for repo's kind/ref goes: the registry's base URL
// joined with the path, which must not clean anything away.
func (u *Registry) URL(repo, kind, ref string) *url.URL {
	return u.base.JoinPath("v2", repo, kind, ref)
}

// Warm asks for a token for scope in the background, when the registry
// wants tokens: the request that needs it next finds it ready.
func (u *Registry) Warm(scope string) { u.client.Warm(scope) }

// An Error is a failure to get content from a registry, as the client is
// told of it: Code is 404 MANIFEST_UNKNOWN or BLOB_UNKNOWN when the
// registry has no such content, 429 TOOMANYREQUESTS (with RetryAfter when
// the registry said), else 503 UNAVAILABLE.
type Error struct {
	Code       errcode.ErrorCode
	RetryAfter time.Duration
	Err        error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Transient says whether the failure may pass: the registry unreachable or
// rate limiting, not a 404.
func (e *Error) Transient() bool {
	return e.Code == errcode.ErrorCodeUnavailable || e.Code == errcode.ErrorCodeTooManyRequests
}

// Unavailable is an *Error of code UNAVAILABLE.
func Unavailable(err error) *Error { return &Error{Code: errcode.ErrorCodeUnavailable, Err: err} }

// Get sends GET <base>/v2/<repo>/<kind>/<ref>?<query>, with a pull token
// for repo when the registry asks for one. A non-200 answer is an *Error.
// The caller closes the body.
func (u *Registry) Get(ctx context.Context, repo, kind, ref string, query url.Values, accept string) (*http.Response, error) {
	return u.do(ctx, http.MethodGet, repo, kind, ref, query, accept)
}

// BlobSize asks the registry for the length of blob dgst of repo (HEAD).
func (u *Registry) BlobSize(ctx context.Context, repo string, dgst digest.Digest) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, u.timeout)
	defer cancel()
	resp, err := u.do(ctx, http.MethodHead, repo, "blobs", dgst.String(), nil, "")
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	if resp.ContentLength < 0 {
		return 0, Unavailable(fmt.Errorf("upstream %s gave no length for blob %s", u.cfg.Name, dgst))
	}
	return resp.ContentLength, nil
}

func (u *Registry) do(ctx context.Context, method, repo, kind, ref string, query url.Values, accept string) (*http.Response, error) {
	target := u.URL(repo, kind, ref)
	target.RawQuery = query.Encode()
	req, err := http.NewRequestWithContext(ctx, method, target.String(), nil)
	if err != nil {
		return nil, err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := u.client.Do(req, "repository:"+repo+":pull")
	u.count(kind, resp)
	if rl, ok := errors.AsType[*egress.RateLimitError](err); ok {
		return nil, &Error{Code: errcode.ErrorCodeTooManyRequests, RetryAfter: rl.RetryAfter(), Err: rl}
	}
	if err != nil {
		what := "unreachable"
		if errors.As(err, new(*egress.RealmError)) || errors.As(err, new(*egress.AddressError)) || errors.As(err, new(*egress.RedirectError)) {
			what = "refused" // the upstream asked for something trustproxy does not do
		}
		return nil, Unavailable(fmt.Errorf("upstream %s %s: %w", u.cfg.Name, what, err))
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	code := errcode.ErrorCodeUnavailable
	if resp.StatusCode == http.StatusNotFound {
		code = errcode.ErrorCodeManifestUnknown
		if kind == "blobs" {
			code = errcode.ErrorCodeBlobUnknown
		}
	}
	return nil, &Error{Code: code, Err: fmt.Errorf("upstream %s answered %s for %s/%s/%s", u.cfg.Name, resp.Status, repo, kind, ref)}
}

// count counts a request for kind and its answer (nil: none came), and
// has resp's body count the bytes read from it.
func (u *Registry) count(kind string, resp *http.Response) {
	if u.metrics == nil {
		return
	}
	status := "error"
	if resp != nil {
		status = strconv.Itoa(resp.StatusCode)
		resp.Body = &countedBody{ReadCloser: resp.Body, bytes: u.metrics.bytes.WithLabelValues(u.cfg.Name, kind)}
	}
	u.metrics.requests.WithLabelValues(u.cfg.Name, kind, status).Inc()
}

// countedBody adds what is read from a response body to a counter.
type countedBody struct {
	io.ReadCloser
	bytes prometheus.Counter
}

func (b *countedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.bytes.Add(float64(n))
	return n, err
}

// ErrTooLarge is a manifest over the limit it was fetched with.
var ErrTooLarge = errors.New("larger than allowed")

// Manifest reads the manifest ref (tag or digest) of repo from the
// registry: at most limit bytes, else ErrTooLarge. Callers check the bytes.
func (u *Registry) Manifest(ctx context.Context, repo, ref string, limit int64) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, u.timeout)
	defer cancel()
	resp, err := u.Get(ctx, repo, "manifests", ref, nil, manifest.Accept)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.ContentLength > limit {
		return nil, ErrTooLarge
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, Unavailable(fmt.Errorf("read manifest %s from %s: %w", ref, u.cfg.Name, err))
	}
	if int64(len(body)) > limit {
		return nil, ErrTooLarge
	}
	return body, nil
}

// maxTagsBody bounds a registry's tags/list answer.
const maxTagsBody = 4 << 20

// Tags returns the first page, up to n, of repo's tags at the registry.
func (u *Registry) Tags(ctx context.Context, repo string, n int) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, u.timeout)
	defer cancel()
	resp, err := u.Get(ctx, repo, "tags", "list", url.Values{"n": {strconv.Itoa(n)}}, "")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var list struct {
		Tags []string `json:"tags"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxTagsBody)).Decode(&list); err != nil {
		return nil, Unavailable(fmt.Errorf("read tags of %s from %s: %w", repo, u.cfg.Name, err))
	}
	return list.Tags, nil
}

// ResolveTag asks the registry which manifest digest tag of repo names
// now: HEAD, whose Docker-Content-Digest answers; when the registry gives
// none (or an unusable one), GET, and the digest of the bytes (at most
// limit). What it returns is only the upstream's word: the caller verifies
// the digest before serving anything by it.
func (u *Registry) ResolveTag(ctx context.Context, repo, tag string, limit int64) (digest.Digest, error) {
	ctx, cancel := context.WithTimeout(ctx, u.timeout)
	defer cancel()
	resp, err := u.do(ctx, http.MethodHead, repo, "manifests", tag, nil, manifest.Accept)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if d, err := digest.Parse(resp.Header.Get("Docker-Content-Digest")); err == nil && d.Algorithm() == digest.SHA256 {
		return d, nil
	}
	body, err := u.Manifest(ctx, repo, tag, limit)
	if err != nil {
		return "", err
	}
	return digest.FromBytes(body), nil
}

// Client returns the registry's client bound to repo's pull scope, for
// readers that build their own requests (cosign's signature reads): a
// request is sent to the registry's base URL whatever scheme and host it
// names (only its path and query are taken), with the registry's
// credentials, token realms, redirect policy and address guard.
func (u *Registry) Client(repo string) *RepoClient {
	return &RepoClient{u: u, scope: "repository:" + repo + ":pull"}
}

// RepoClient is a Registry's client for one repository (Registry.Client).
type RepoClient struct {
	u     *Registry
	scope string
}

// Do sends req to the registry. A 429 is an answer here, not an error: the
// reader decides what it means.
func (c *RepoClient) Do(req *http.Request) (*http.Response, error) {
	r := req.Clone(req.Context())
	r.URL.Scheme, r.URL.Host, r.Host = c.u.base.Scheme, c.u.base.Host, ""
	r.URL.Path = strings.TrimSuffix(c.u.base.Path, "/") + req.URL.Path
	r.URL.RawPath = ""
	resp, err := c.u.client.Do(r, c.scope)
	c.u.count("signatures", resp)
	if rl, ok := errors.AsType[*egress.RateLimitError](err); ok {
		return nil, &Error{Code: errcode.ErrorCodeTooManyRequests, RetryAfter: rl.RetryAfter(), Err: rl}
	}
	return resp, err
}
