package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/trustproxy/trustproxy/config"
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
		up, err := newUpstream(cfg.Upstreams[i], cfg.Limits)
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

// maxTransports bounds the per-repository transports kept; an evicted one is
// made again (one more ping and token) when next needed.
const maxTransports = 10000

// upstream is one registry and the HTTP machinery to read from it.
type upstream struct {
	cfg     config.Upstream
	base    *url.URL
	reg     name.Registry
	auth    authn.Authenticator
	rt      http.RoundTripper
	timeout time.Duration

	transports *lru.Cache[string, http.RoundTripper] // by repository: tokens are scoped to one
}

func newUpstream(cfg config.Upstream, lim config.Limits) (*upstream, error) {
	base, err := url.Parse(strings.TrimSuffix(cfg.URL, "/"))
	if err != nil {
		return nil, fmt.Errorf("url: %w", err)
	}
	var opts []name.Option
	if base.Scheme == "http" {
		opts = append(opts, name.Insecure)
	}
	reg, err := name.NewRegistry(base.Host, opts...)
	if err != nil {
		return nil, fmt.Errorf("url host: %w", err)
	}
	rt, err := baseTransport(cfg.CAFile, lim.UpstreamTimeout)
	if err != nil {
		return nil, err
	}
	auth := authn.Anonymous
	if cfg.Username != "" {
		auth = &authn.Basic{Username: cfg.Username, Password: cfg.Password}
	}
	transports, err := lru.New[string, http.RoundTripper](maxTransports)
	if err != nil {
		return nil, err
	}
	return &upstream{cfg: cfg, base: base, reg: reg, auth: auth, rt: rt,
		timeout: lim.UpstreamTimeout, transports: transports}, nil
}

// baseTransport bounds every phase before the body: dial, TLS handshake and
// response headers. Bodies are bounded by their callers.
func baseTransport(caFile string, timeout time.Duration) (*http.Transport, error) {
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   timeout,
		ResponseHeaderTimeout: timeout,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   16,
		ForceAttemptHTTP2:     true,
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s: no PEM certificates", caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return tr, nil
}

// transport returns the authenticating transport for repo. The first call
// for a repository pings the registry and learns its auth challenge; the
// lock is not held meanwhile, so one slow upstream answer delays only its
// own repository.
func (u *upstream) transport(ctx context.Context, repo string) (http.RoundTripper, error) {
	if t, ok := u.transports.Get(repo); ok {
		return t, nil
	}
	ctx, cancel := context.WithTimeout(ctx, u.timeout)
	defer cancel()
	scope := u.reg.Repo(repo).Scope(transport.PullScope)
	t, err := transport.NewWithContext(ctx, u.reg, u.auth, u.rt, []string{scope})
	if err != nil {
		return nil, &upstreamError{codeUnavailable, fmt.Errorf("upstream %s unreachable: %w", u.cfg.Name, err)}
	}
	if prev, ok, _ := u.transports.PeekOrAdd(repo, t); ok {
		return prev, nil
	}
	return t, nil
}

// get sends GET <base>/v2/<repo>/<kind>/<ref>?<query>. A non-200 answer is
// an *upstreamError. The caller closes the body.
func (u *upstream) get(ctx context.Context, repo, kind, ref string, query url.Values, accept string) (*http.Response, error) {
	t, err := u.transport(ctx, repo)
	if err != nil {
		return nil, err
	}
	target := u.base.JoinPath("v2", repo, kind, ref)
	target.RawQuery = query.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target.String(), nil)
	if err != nil {
		return nil, err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	client := &http.Client{Transport: t, CheckRedirect: limitRedirects}
	resp, err := client.Do(req)
	if err != nil {
		return nil, &upstreamError{codeUnavailable, fmt.Errorf("upstream %s unreachable: %w", u.cfg.Name, err)}
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
	return nil, &upstreamError{code, fmt.Errorf("upstream %s answered %s for %s/%s/%s", u.cfg.Name, resp.Status, repo, kind, ref)}
}

// limitRedirects follows at most five redirects (blob storage uses one).
// net/http drops the Authorization header when a redirect leaves the host.
func limitRedirects(req *http.Request, via []*http.Request) error {
	if len(via) >= 5 {
		return errors.New("stopped after 5 redirects")
	}
	return nil
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
		return nil, &upstreamError{codeUnavailable, fmt.Errorf("read manifest %s from %s: %w", ref, u.cfg.Name, err)}
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
		return nil, &upstreamError{codeUnavailable, fmt.Errorf("read tags of %s from %s: %w", repo, u.cfg.Name, err)}
	}
	return list.Tags, nil
}
