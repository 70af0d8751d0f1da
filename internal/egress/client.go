package egress

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
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/net/http/httpproxy"
	"golang.org/x/sync/singleflight"

	"github.com/trustproxy/trustproxy/config"
)

// Endpoint is one configured server and what it may make trustproxy do.
type Endpoint struct {
	// Field is the endpoint's config path, for messages: upstreams[0] or
	// upstreams[0].notary.
	Field string
	// URL is the server's base URL: its origin receives credentials.
	URL                string
	CAFile             string // PEM CA certificates trusted besides the system's
	Username, Password string
	// PasswordFile holds the password of Username instead of Password; it
	// is read again when it changes.
	PasswordFile string
	// DockerConfig is a docker CLI config.json whose auths, credHelpers or
	// credsStore give the credentials for URL's host, resolved when used.
	DockerConfig string
	// TokenRealms are further origins (scheme://host[:port]) that may be
	// sent token requests with the credentials.
	TokenRealms []string
	// RedirectHosts are hosts (host or host:port) a redirect may lead to even
	// when they resolve to non-public addresses.
	RedirectHosts []string
	// Timeout bounds dial, TLS handshake and the wait for response headers.
	Timeout time.Duration
}

// Configured returns the Endpoint of the server e configures: field is its
// path in the configuration, for messages (upstreams[0],
// upstreams[0].notary), and timeout bounds its requests. redirectHosts are
// a registry's redirect_hosts; a Notary server has none (nil). It is the one
// place the configuration of a server becomes an Endpoint.
func Configured(field string, e config.Endpoint, redirectHosts []string, timeout time.Duration) Endpoint {
	return Endpoint{
		Field: field, URL: e.URL, CAFile: e.CAFile,
		Username: e.Username, Password: e.Password, PasswordFile: e.PasswordFile,
		DockerConfig: e.DockerConfig, TokenRealms: e.TokenRealms,
		RedirectHosts: redirectHosts, Timeout: timeout,
	}
}

// MaxRetryAfter caps how long a 429's Retry-After keeps trustproxy from
// asking a server again, so that a server's mistake does not lock it out
// for long; without a usable Retry-After the pause is defaultRetryAfter.
const (
	MaxRetryAfter     = time.Hour
	defaultRetryAfter = 10 * time.Second
)

// maxTokens bounds the bearer tokens kept per endpoint (one per scope); an
// evicted one costs one token request when next needed.
const maxTokens = 10000

// maxTokenBody bounds a token service's answer.
const maxTokenBody = 64 << 10

// maxRedirects bounds the redirects Do follows (blob storage uses one).
const maxRedirects = 5

// Client talks to one Endpoint. It is safe for concurrent use.
type Client struct {
	field      string
	origin     string           // "" for a Public client: every host it reaches is named by data
	creds      credentialSource // nil: anonymous
	realms     map[string]bool  // allowed token realm origins, the endpoint's own included
	redirectOK map[string]bool  // lower-case host or host:port
	transport  *http.Transport

	mu      sync.Mutex
	scheme  string // auth scheme the server asked for: "", "basic" or "bearer"
	realm   string
	service string
	limited map[string]time.Time // origin -> no requests before
	timeout time.Duration        // a token request, body included

	tokens  *lru.Cache[string, token] // by scope
	fetch   singleflight.Group
	warming chan struct{} // Warm's token requests under way
}

type token struct {
	value string
	until time.Time
}

// New returns the client of e.
func New(e Endpoint) (*Client, error) {
	base, err := url.Parse(strings.TrimSuffix(e.URL, "/"))
	if err != nil || (base.Scheme != "https" && base.Scheme != "http") || base.Host == "" {
		return nil, fmt.Errorf("%s.url %q is not an http(s) URL", e.Field, e.URL)
	}
	return build(e, originOf(base))
}

// Public returns a client for servers that data names rather than the
// configuration: a certificate's CRL distribution points and OCSP
// responders. It sends no credentials, follows redirects as Do does, and
// connects only to public addresses, except to the hosts listed in allow,
// the setting field (an *AddressError otherwise); timeout bounds each
// request, body included.
func Public(field string, allow []string, timeout time.Duration) (*http.Client, error) {
	c, err := build(Endpoint{Field: field, RedirectHosts: allow, Timeout: timeout}, "")
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: c.RoundTripper(""), CheckRedirect: c.checkRedirect, Timeout: timeout}, nil
}

// build is the client of e, whose origin (scheme://host:port; "" for none)
// receives its credentials.
func build(e Endpoint, origin string) (*Client, error) {
	var err error
	c := &Client{
		field:      e.Field,
		origin:     origin,
		creds:      credentialsOf(e),
		realms:     map[string]bool{origin: true},
		redirectOK: map[string]bool{},
		limited:    map[string]time.Time{},
		timeout:    e.Timeout,
		warming:    make(chan struct{}, maxWarming),
	}
	for _, r := range e.TokenRealms {
		u, err := url.Parse(r)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return nil, fmt.Errorf("%s.token_realms: %q is not an origin such as https://auth.docker.io", e.Field, r)
		}
		c.realms[originOf(u)] = true
	}
	for _, h := range e.RedirectHosts {
		c.redirectOK[strings.ToLower(h)] = true
	}
	if c.tokens, err = lru.New[string, token](maxTokens); err != nil {
		return nil, err
	}
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if e.CAFile != "" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		pem, err := os.ReadFile(e.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%s.ca_file: %w", e.Field, err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s.ca_file %s holds no PEM certificate", e.Field, e.CAFile)
		}
		tlsConf.RootCAs = pool
	}
	step := min(10*time.Second, e.Timeout)
	dialer := &net.Dialer{Timeout: step, KeepAlive: 30 * time.Second, ControlContext: checkAddress}
	// The proxy environment (HTTPS_PROXY, NO_PROXY, ...) is read here, per
	// client, rather than once per process as http.ProxyFromEnvironment does.
	proxy := httpproxy.FromEnvironment().ProxyFunc()
	c.transport = &http.Transport{
		Proxy:                  func(r *http.Request) (*url.URL, error) { return proxy(r.URL) },
		DialContext:            dialer.DialContext,
		TLSClientConfig:        tlsConf,
		TLSHandshakeTimeout:    step,
		ResponseHeaderTimeout:  e.Timeout,
		MaxResponseHeaderBytes: 64 << 10,
		IdleConnTimeout:        90 * time.Second,
		MaxIdleConnsPerHost:    16,
		ForceAttemptHTTP2:      true,
	}
	return c, nil
}

// Do sends req, authenticated for scope (e.g. repository:library/alpine:pull)
// when it goes to the endpoint's origin, and follows redirects as the package
// doc says. A non-2xx answer is returned as it is, except 429 (a
// *RateLimitError) and a challenge naming a refused realm (a *RealmError).
func (c *Client) Do(req *http.Request, scope string) (*http.Response, error) {
	hc := &http.Client{Transport: c.RoundTripper(scope), CheckRedirect: c.checkRedirect}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, ownError(err)
	}
	return resp, nil
}

// ownError returns the error of this package inside err, which says what
// happened better than the *url.Error and *net.OpError around it; else err.
func ownError(err error) error {
	var (
		realm    *RealmError
		limit    *RateLimitError
		addr     *AddressError
		redirect *RedirectError
	)
	switch {
	case errors.As(err, &realm):
		return realm
	case errors.As(err, &limit):
		return limit
	case errors.As(err, &addr):
		return addr
	case errors.As(err, &redirect):
		return redirect
	}
	return err
}

// RoundTripper returns a RoundTripper that authenticates requests to the
// endpoint's origin for scope and follows no redirects, for callers that
// send their own requests (notary's HTTPStore).
func (c *Client) RoundTripper(scope string) http.RoundTripper {
	return &authTransport{c: c, scope: scope}
}

// CloseIdleConnections closes the client's idle connections.
func (c *Client) CloseIdleConnections() { c.transport.CloseIdleConnections() }

type authTransport struct {
	c     *Client
	scope string
}

func (t *authTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	return t.c.roundTrip(req, t.scope)
}

func (c *Client) roundTrip(req *http.Request, scope string) (*http.Response, error) {
	o := originOf(req.URL)
	if err := c.rateLimited(o); err != nil {
		return nil, err
	}
	resp, err := c.send(req, scope)
	if err != nil {
		return nil, err
	}
	if err := c.noteRateLimit(o, resp); err != nil {
		return nil, err
	}
	if o != c.origin || resp.StatusCode != http.StatusUnauthorized {
		return resp, nil
	}
	retry, err := c.authenticate(req.Context(), resp, scope)
	if err != nil {
		discard(resp)
		return nil, err
	}
	if !retry {
		return resp, nil
	}
	discard(resp)
	if resp, err = c.send(req, scope); err != nil {
		return nil, err
	}
	if err := c.noteRateLimit(o, resp); err != nil {
		return nil, err
	}
	return resp, nil
}

// send sends a copy of req: with credentials when it goes to the endpoint's
// origin, and with the address check when it goes to a host that is neither
// configured nor listed in redirect_hosts.
func (c *Client) send(req *http.Request, scope string) (*http.Response, error) {
	r := req.Clone(req.Context())
	o := originOf(r.URL)
	if o == c.origin {
		if err := c.authorize(r, scope); err != nil {
			return nil, err
		}
	} else {
		// Never credentials anywhere else, whatever the caller set.
		r.Header.Del("Authorization")
		r.Header.Del("Cookie")
	}
	if !c.realms[o] && !c.redirectOK[strings.ToLower(r.URL.Host)] && !c.redirectOK[strings.ToLower(r.URL.Hostname())] {
		g := &guard{field: c.field, host: r.URL.Hostname(), public: c.origin == ""}
		if p, err := c.transport.Proxy(r); err == nil && p != nil {
			// The dial goes to the proxy (which may well be private), so
			// check the name here; the proxy resolves it again.
			if err := g.resolve(r.Context()); err != nil {
				return nil, err
			}
		} else {
			r = r.WithContext(context.WithValue(r.Context(), guardKey{}, g))
		}
	}
	return c.transport.RoundTrip(r)
}

// authorize adds what the server asked for: Basic credentials, or the bearer
// token of scope if one is held. Its error is a credential source's that
// failed (an unreadable password file, a failing credential helper).
func (c *Client) authorize(r *http.Request, scope string) error {
	c.mu.Lock()
	scheme := c.scheme
	c.mu.Unlock()
	switch scheme {
	case "basic":
		user, pass, err := c.credentials(r.Context())
		if err != nil {
			return err
		}
		if user != "" || pass != "" {
			r.SetBasicAuth(user, pass)
		}
	case "bearer":
		if t, ok := c.tokens.Get(scope); ok && time.Now().Before(t.until) {
			r.Header.Set("Authorization", "Bearer "+t.value)
		}
	}
	return nil
}

// credentials resolves the endpoint's credentials now; ("", "") when it
// has none.
func (c *Client) credentials(ctx context.Context) (string, string, error) {
	if c.creds == nil {
		return "", "", nil
	}
	return c.creds.get(ctx)
}

// credentialsRefused tells the source that what it gave was refused.
func (c *Client) credentialsRefused() {
	if c.creds != nil {
		c.creds.refused()
	}
}

// authenticate answers the server's 401: it learns the challenge and, for a
// bearer challenge naming an allowed realm, gets a token for scope. It says
// whether the request should be sent again.
func (c *Client) authenticate(ctx context.Context, resp *http.Response, scope string) (bool, error) {
	var basic, bearer *challenge
	for _, ch := range parseChallenges(resp.Header.Values("WWW-Authenticate")) {
		switch strings.ToLower(ch.scheme) {
		case "bearer":
			if bearer == nil {
				bearer = &ch
			}
		case "basic":
			if basic == nil {
				basic = &ch
			}
		}
	}
	switch {
	case bearer != nil:
		realm := bearer.params["realm"]
		if err := c.checkRealm(realm); err != nil {
			return false, err
		}
		c.mu.Lock()
		c.scheme, c.realm, c.service = "bearer", realm, bearer.params["service"]
		c.mu.Unlock()
		// The token this request carried was refused: get a new one. One
		// another request fetched meanwhile is used as it is.
		if t, ok := c.tokens.Get(scope); ok && resp.Request != nil && resp.Request.Header.Get("Authorization") == "Bearer "+t.value {
			c.tokens.Remove(scope)
		}
		if _, err := c.token(ctx, scope); err != nil {
			return false, err
		}
		return true, nil
	case basic != nil && c.creds != nil:
		c.mu.Lock()
		c.scheme = "basic"
		c.mu.Unlock()
		// Send again only if the credentials were not sent yet; sent and
		// refused, the source is asked afresh next time.
		if resp.Request != nil && resp.Request.Header.Get("Authorization") != "" {
			c.credentialsRefused()
			return false, nil
		}
		return true, nil
	}
	return false, nil
}

// checkRealm says why realm may not be sent token requests, or nil.
func (c *Client) checkRealm(realm string) error {
	u, err := url.Parse(realm)
	switch {
	case realm == "":
		return &RealmError{Field: c.field, Realm: realm, Why: "the challenge names no realm"}
	case err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http"):
		return &RealmError{Field: c.field, Realm: realm, Why: "not an http(s) URL"}
	case u.User != nil:
		return &RealmError{Field: c.field, Realm: realm, Why: "it carries credentials of its own"}
	case !c.realms[originOf(u)]:
		return &RealmError{Field: c.field, Realm: realm, Why: "its origin " + originOf(u) + " is not allowed"}
	}
	return nil
}

// Warm asks for the bearer token of scope in the background when the server
// is known to want one and none is held, so that a request for scope made a
// moment later goes out with it rather than being answered 401 first. It
// sends nothing otherwise.
//
// At most maxWarming run at once (more are dropped: the request itself will
// ask), and none while the realm is rate limiting.
func (c *Client) Warm(scope string) {
	c.mu.Lock()
	bearer, realm := c.scheme == "bearer", c.realm
	c.mu.Unlock()
	if !bearer {
		return
	}
	if u, err := url.Parse(realm); err != nil || c.rateLimited(originOf(u)) != nil {
		return
	}
	if t, ok := c.tokens.Get(scope); ok && time.Now().Before(t.until) {
		return
	}
	select {
	case c.warming <- struct{}{}:
	default:
		return
	}
	go func() {
		defer func() { <-c.warming }()
		_, _ = c.token(context.Background(), scope) // bounded by the endpoint's timeout
	}()
}

// maxWarming bounds the token requests Warm has under way at once.
const maxWarming = 8

// token returns the bearer token of scope, asking the realm once however
// many requests need it at the same time. The request, body included, is
// bounded by the endpoint's timeout; a caller whose context ends stops
// waiting for it.
func (c *Client) token(ctx context.Context, scope string) (string, error) {
	if t, ok := c.tokens.Get(scope); ok && time.Now().Before(t.until) {
		return t.value, nil
	}
	for retried := false; ; retried = true {
		ch := c.fetch.DoChan(scope, func() (any, error) {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
			defer cancel()
			t, err := c.fetchToken(ctx, scope)
			if err == nil {
				c.tokens.Add(scope, t)
			}
			return t, err
		})
		select {
		case res := <-ch:
			// A failed fetch shared with others may have begun long before
			// this caller asked (and timed out as it joined): it is tried
			// once more, so no caller inherits an old fetch's failure.
			if res.Err != nil && res.Shared && !retried {
				c.fetch.Forget(scope)
				continue
			}
			if res.Err != nil {
				return "", res.Err
			}
			return res.Val.(token).value, nil
		case <-ctx.Done():
			return "", fmt.Errorf("%s: waiting for a token: %w", c.field, context.Cause(ctx))
		}
	}
}

func (c *Client) fetchToken(ctx context.Context, scope string) (token, error) {
	c.mu.Lock()
	realm, service := c.realm, c.service
	c.mu.Unlock()
	u, err := url.Parse(realm)
	if err != nil {
		return token{}, err
	}
	q := u.Query()
	if service != "" {
		q.Set("service", service)
	}
	if scope != "" {
		q.Set("scope", scope)
	}
	u.RawQuery = q.Encode()
	o := originOf(u)
	if err := c.rateLimited(o); err != nil {
		return token{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return token{}, err
	}
	user, pass, err := c.credentials(ctx)
	if err != nil {
		return token{}, err
	}
	if user != "" || pass != "" {
		req.SetBasicAuth(user, pass) // checkRealm allowed this origin
	}
	resp, err := c.transport.RoundTrip(req)
	if err != nil {
		return token{}, fmt.Errorf("%s: token realm %s: %w", c.field, o, err)
	}
	defer discard(resp)
	if err := c.noteRateLimit(o, resp); err != nil {
		return token{}, err
	}
	if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
		c.credentialsRefused()
	}
	if resp.StatusCode != http.StatusOK {
		return token{}, fmt.Errorf("%s: token realm %s answered %s for scope %q; check the credentials", c.field, o, resp.Status, scope)
	}
	t, err := readTokenAnswer(io.LimitReader(resp.Body, maxTokenBody), time.Now())
	if err != nil {
		return token{}, fmt.Errorf("%s: token realm %s: %w", c.field, o, err)
	}
	return t, nil
}

// readTokenAnswer reads a token service's answer (the Docker token spec's
// token or OAuth2's access_token, and expires_in) received at now. A token
// is sent back in an Authorization header, so one that holds anything but
// printable ASCII is refused. It is used until nine tenths of its life,
// which is at most a day (the spec's default: 60 seconds).
func readTokenAnswer(r io.Reader, now time.Time) (token, error) {
	var body struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	if err := json.NewDecoder(r).Decode(&body); err != nil {
		return token{}, fmt.Errorf("unreadable answer: %w", err)
	}
	t := token{value: body.Token}
	if t.value == "" {
		t.value = body.AccessToken
	}
	if t.value == "" {
		return token{}, errors.New("answered no token")
	}
	for i := 0; i < len(t.value); i++ {
		if c := t.value[i]; c < 0x21 || c > 0x7e {
			return token{}, fmt.Errorf("answered a token holding byte %#x, which no Authorization header may carry", c)
		}
	}
	life := 60 * time.Second
	if body.ExpiresIn > 0 {
		life = time.Duration(min(body.ExpiresIn, 24*3600)) * time.Second
	}
	t.until = now.Add(life * 9 / 10)
	return t, nil
}

// rateLimited returns a *RateLimitError while origin's Retry-After lasts.
func (c *Client) rateLimited(origin string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	until, ok := c.limited[origin]
	if !ok {
		return nil
	}
	if time.Now().Before(until) {
		return &RateLimitError{Field: c.field, Origin: origin, Until: until}
	}
	delete(c.limited, origin)
	return nil
}

// noteRateLimit turns a 429 from a configured origin into a *RateLimitError
// and remembers its Retry-After; resp is then closed.
func (c *Client) noteRateLimit(origin string, resp *http.Response) error {
	if resp.StatusCode != http.StatusTooManyRequests || !c.realms[origin] {
		return nil
	}
	discard(resp)
	until := time.Now().Add(retryAfter(resp.Header.Get("Retry-After"), time.Now()))
	c.mu.Lock()
	c.limited[origin] = until
	c.mu.Unlock()
	return &RateLimitError{Field: c.field, Origin: origin, Until: until}
}

// retryAfter reads a Retry-After value (seconds or an HTTP date), capped at
// MaxRetryAfter; defaultRetryAfter when it is missing or unreadable.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return defaultRetryAfter
	}
	var d time.Duration
	if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
		d = time.Duration(min(max(n, 0), int64(MaxRetryAfter/time.Second))) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	} else {
		return defaultRetryAfter
	}
	return min(max(d, time.Second), MaxRetryAfter)
}

// checkRedirect is Do's redirect policy.
func (c *Client) checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return &RedirectError{Field: c.field, Why: fmt.Sprintf("more than %d redirects", maxRedirects)}
	}
	if prev := via[len(via)-1]; prev.URL.Scheme == "https" && req.URL.Scheme != "https" {
		return &RedirectError{Field: c.field, Why: fmt.Sprintf("from https to %s (%s)", req.URL.Scheme, req.URL.Redacted())}
	}
	return nil
}

// originOf is u's scheme://host:port, lower-cased, with the default port
// written out.
func originOf(u *url.URL) string {
	scheme := strings.ToLower(u.Scheme)
	port := u.Port()
	if port == "" {
		port = "443"
		if scheme == "http" {
			port = "80"
		}
	}
	return scheme + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

// discard drains a little of resp's body, so the connection can be reused,
// and closes it.
func discard(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}
