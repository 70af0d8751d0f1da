package egress

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trustproxy/trustproxy/config"
)

// server is an httptest server on 127.0.0.1 that counts the connections it
// accepts and records the Authorization header of each request.
type server struct {
	*httptest.Server
	conns atomic.Int64
	mu    sync.Mutex
	auth  []string
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func newServer(t *testing.T, h http.HandlerFunc, tls bool) *server {
	t.Helper()
	s := &server{}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.auth = append(s.auth, r.Header.Get("Authorization"))
		s.mu.Unlock()
		h(w, r)
	}))
	s.Listener = countingListener{Listener: s.Listener, n: &s.conns}
	if tls {
		s.StartTLS()
	} else {
		s.Start()
	}
	t.Cleanup(s.Close)
	return s
}

func (s *server) authHeaders() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.auth...)
}

// port is the server's port; "localhost:"+port reaches it by a name.
func (s *server) port() string {
	_, p, _ := net.SplitHostPort(s.Listener.Addr().String())
	return p
}

func newClient(t *testing.T, e Endpoint) *Client {
	t.Helper()
	if e.Field == "" {
		e.Field = "upstreams[0]"
	}
	if e.Timeout == 0 {
		e.Timeout = 5 * time.Second
	}
	c, err := New(e)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func get(t *testing.T, c *Client, url string) (*http.Response, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req, "repository:library/app:pull")
	if err == nil {
		t.Cleanup(func() { resp.Body.Close() })
	}
	return resp, err
}

// registry answers 401 with challenge until it sees want as Authorization.
func registry(challenge, want string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != want {
			w.Header().Set("WWW-Authenticate", challenge)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, "content")
	}
}

// tokenServer hands out "tok" to requests with the basic credentials
// user:pass, and records each query.
func tokenServer(t *testing.T, queries *[]string) *server {
	var mu sync.Mutex
	return newServer(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		*queries = append(*queries, r.URL.RawQuery)
		mu.Unlock()
		if u, p, ok := r.BasicAuth(); !ok || u != "user" || p != "pass" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, `{"token":"tok","expires_in":300}`)
	}, false)
}

// TestUnlistedRealmGetsNothing: a registry whose challenge names a realm off
// the allow-list (a name, localhost, that go-containerregistry would accept,
// and an http:// one) gets a refusal; the realm sees no connection at all.
func TestUnlistedRealmGetsNothing(t *testing.T) {
	var queries []string
	capture := tokenServer(t, &queries)
	for _, realm := range []string{
		"http://localhost:" + capture.port() + "/token",
		"https://localhost:" + capture.port() + "/token",
		capture.URL + "/token", // a private IP literal, but not listed
		"ftp://" + capture.Listener.Addr().String(),
		"",
	} {
		t.Run(realm, func(t *testing.T) {
			reg := newServer(t, registry(`Bearer realm="`+realm+`",service="registry"`, "Bearer tok"), false)
			c := newClient(t, Endpoint{URL: reg.URL, Username: "user", Password: "pass"})
			_, err := get(t, c, reg.URL+"/v2/library/app/manifests/v1")
			var re *RealmError
			if !errors.As(err, &re) || re.Realm != realm || !strings.Contains(err.Error(), "upstreams[0].token_realms") {
				t.Fatalf("got %v, want a *RealmError naming %q and the config field", err, realm)
			}
			if n := capture.conns.Load(); n != 0 {
				t.Fatalf("the unlisted realm received %d connections", n)
			}
		})
	}
}

// TestListedRealmGetsCredentials: a realm on the allow-list, here on a
// private IP literal (which go-containerregistry refuses outright), gets
// the credentials; the registry then gets only the bearer token.
func TestListedRealmGetsCredentials(t *testing.T) {
	var queries []string
	tokens := tokenServer(t, &queries)
	reg := newServer(t, registry(`Bearer realm="`+tokens.URL+`/token",service="registry.test"`, "Bearer tok"), false)
	c := newClient(t, Endpoint{URL: reg.URL, Username: "user", Password: "pass", TokenRealms: []string{tokens.URL}})
	for range 3 {
		resp, err := get(t, c, reg.URL+"/v2/library/app/manifests/v1")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("got %v %v", resp, err)
		}
	}
	want := []string{"scope=repository%3Alibrary%2Fapp%3Apull&service=registry.test"}
	if diff := cmp.Diff(want, queries); diff != "" {
		t.Errorf("token requests (-want +got):\n%s", diff)
	}
	for _, h := range reg.authHeaders() {
		if h != "" && h != "Bearer tok" {
			t.Errorf("the registry was sent %q", h)
		}
	}
}

func TestBasicCredentialsOnlyToOwnOrigin(t *testing.T) {
	other := newServer(t, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "blob") }, false)
	reg := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "user" || p != "pass" {
			w.Header().Set("WWW-Authenticate", `Basic realm="registry"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		http.Redirect(w, r, "http://localhost:"+other.port()+"/blob", http.StatusTemporaryRedirect)
	}, false)
	c := newClient(t, Endpoint{URL: reg.URL, Username: "user", Password: "pass", RedirectHosts: []string{"localhost:" + other.port()}})
	resp, err := get(t, c, reg.URL+"/v2/library/app/blobs/sha256:abc")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("got %v %v", resp, err)
	}
	if got := other.authHeaders(); len(got) != 1 || got[0] != "" {
		t.Fatalf("the redirect target was sent Authorization %q", got)
	}
}

// TestRedirectToPrivateAddressRefused: an upstream redirecting to a name
// that resolves to loopback (as 169.254.169.254 or an internal service
// would) is refused after resolution, and nothing connects there.
func TestRedirectToPrivateAddressRefused(t *testing.T) {
	target := newServer(t, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "secret") }, false)
	for _, loc := range []string{
		"http://localhost:" + target.port() + "/latest/meta-data/",
		target.URL + "/x",
		"http://[::ffff:127.0.0.1]:" + target.port() + "/x",
	} {
		t.Run(loc, func(t *testing.T) {
			reg := newServer(t, func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, loc, http.StatusFound)
			}, false)
			c := newClient(t, Endpoint{URL: reg.URL})
			_, err := get(t, c, reg.URL+"/v2/library/app/blobs/sha256:abc")
			var ae *AddressError
			if !errors.As(err, &ae) || !strings.Contains(err.Error(), "redirect_hosts") {
				t.Fatalf("got %v, want an *AddressError", err)
			}
			if n := target.conns.Load(); n != 0 {
				t.Fatalf("the redirect target received %d connections", n)
			}
		})
	}
}

func TestRedirectDowngradeRefused(t *testing.T) {
	plain := newServer(t, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "x") }, false)
	reg := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, plain.URL+"/x", http.StatusFound)
	}, true)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: reg.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, Endpoint{URL: reg.URL, CAFile: ca, RedirectHosts: []string{plain.Listener.Addr().String()}})
	_, err := get(t, c, reg.URL+"/v2/")
	var re *RedirectError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "from https to http") {
		t.Fatalf("got %v, want a *RedirectError", err)
	}
	if n := plain.conns.Load(); n != 0 {
		t.Fatalf("the http target received %d connections", n)
	}
}

// TestRetryAfterRespected: after a 429, requests wait out its Retry-After
// without reaching the server.
func TestRetryAfterRespected(t *testing.T) {
	var hits atomic.Int64
	reg := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusTooManyRequests)
	}, false)
	c := newClient(t, Endpoint{URL: reg.URL})
	for range 10 {
		_, err := get(t, c, reg.URL+"/v2/library/app/manifests/v1")
		var rl *RateLimitError
		if !errors.As(err, &rl) || rl.RetryAfter() < time.Second {
			t.Fatalf("got %v, want a *RateLimitError", err)
		}
	}
	if n := hits.Load(); n != 1 {
		t.Fatalf("the server was asked %d times within its Retry-After, want 1", n)
	}
	time.Sleep(1100 * time.Millisecond)
	_, _ = get(t, c, reg.URL+"/v2/library/app/manifests/v1")
	if n := hits.Load(); n != 2 {
		t.Fatalf("after Retry-After the server was asked %d times in all, want 2", n)
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", defaultRetryAfter},
		{"2", 2 * time.Second},
		{" 30 ", 30 * time.Second},
		{"0", time.Second},
		{"-5", time.Second},
		{"99999999999", MaxRetryAfter},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), time.Second},
		{"soon", defaultRetryAfter},
	}
	for _, tt := range tests {
		if got := retryAfter(tt.in, now); got != tt.want {
			t.Errorf("retryAfter(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestPublic(t *testing.T) {
	for addr, want := range map[string]bool{
		"8.8.8.8": true, "2a00:1450::1": true, "151.101.1.1": true,
		"127.0.0.1": false, "::1": false, "10.1.2.3": false, "172.16.0.1": false, "192.168.1.1": false,
		"169.254.169.254": false, "fd00:ec2::254": false, "fe80::1": false, "100.64.0.1": false,
		"0.0.0.0": false, "::": false, "224.0.0.1": false, "255.255.255.255": false, "::ffff:10.0.0.1": false,
		"64:ff9b::a00:1": false, "240.0.0.1": false,
	} {
		if got := public(netip.MustParseAddr(addr)); got != want {
			t.Errorf("public(%s) = %v, want %v", addr, got, want)
		}
	}
}

func TestParseChallenges(t *testing.T) {
	tests := []struct {
		in   []string
		want []challenge
	}{
		{[]string{`Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"`},
			[]challenge{{"Bearer", map[string]string{"realm": "https://auth.docker.io/token", "service": "registry.docker.io", "scope": "repository:library/alpine:pull"}}}},
		{[]string{`Basic realm="Registry Realm"`, `bearer REALM=https://x/t , service = "a\"b"`},
			[]challenge{{"Basic", map[string]string{"realm": "Registry Realm"}}, {"bearer", map[string]string{"realm": "https://x/t", "service": `a"b`}}}},
		{[]string{`Basic realm="a", Bearer realm="b"`},
			[]challenge{{"Basic", map[string]string{"realm": "a"}}, {"Bearer", map[string]string{"realm": "b"}}}},
		{[]string{`=x, "y", Bearer realm="unterminated`},
			[]challenge{{"Bearer", map[string]string{"realm": "unterminated"}}}},
		{[]string{`Bearer realm="first",realm="second"`},
			[]challenge{{"Bearer", map[string]string{"realm": "first"}}}},
	}
	for _, tt := range tests {
		got := parseChallenges(tt.in)
		if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(challenge{})); diff != "" {
			t.Errorf("parseChallenges(%q) (-want +got):\n%s", tt.in, diff)
		}
	}
}

// FuzzParseChallenges: a server's WWW-Authenticate header never panics the
// parser, and what it returns is bounded by the input.
func FuzzParseChallenges(f *testing.F) {
	f.Add(`Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"`)
	f.Add(`Basic realm="Registry Realm"`)
	f.Add(`Bearer realm="a\"b", error="insufficient_scope"`)
	f.Fuzz(func(t *testing.T, h string) {
		for _, ch := range parseChallenges([]string{h, h}) {
			if ch.scheme == "" || len(ch.params) > len(h) {
				t.Fatalf("challenge %+v from %q", ch, h)
			}
		}
	})
}

// FuzzRetryAfter: whatever a server writes in Retry-After, the pause is
// between a second and MaxRetryAfter (or the default).
func FuzzRetryAfter(f *testing.F) {
	for _, s := range []string{"", "2", "-1", "99999999999999999999", "Wed, 02 Dec 2026 00:00:00 GMT", "soon"} {
		f.Add(s)
	}
	now := time.Now()
	f.Fuzz(func(t *testing.T, v string) {
		if d := retryAfter(v, now); d < time.Second || d > MaxRetryAfter {
			t.Fatalf("retryAfter(%q) = %v", v, d)
		}
	})
}

// TestTokenFetchBounded: a token realm (the registry's own origin, always
// allowed) that sends headers and never finishes the body holds no request
// beyond its context, and the fetch itself ends at the endpoint's timeout.
func TestTokenFetchBounded(t *testing.T) {
	release := make(chan struct{})
	var reg *server
	reg = newServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			w.WriteHeader(http.StatusOK)
			fmt.Fprint(w, `{"tok`)
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+reg.URL+`/token",service="r"`)
		w.WriteHeader(http.StatusUnauthorized)
	}, false)
	t.Cleanup(func() { close(release) })
	c := newClient(t, Endpoint{URL: reg.URL, Username: "u", Password: "p", Timeout: time.Second})
	call := func(timeout time.Duration) chan error {
		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, reg.URL+"/v2/library/app/manifests/v1", nil)
			resp, err := c.Do(req, "repository:library/app:pull")
			if err == nil {
				resp.Body.Close()
			}
			done <- err
		}()
		return done
	}
	for i, ch := range []chan error{call(300 * time.Millisecond), call(300 * time.Millisecond), call(time.Minute)} {
		select {
		case err := <-ch:
			if err == nil {
				t.Errorf("call %d succeeded without a token", i)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("call %d still blocked after 5s (its context or the 1s endpoint timeout should have ended it)", i)
		}
	}
}

// TestRedirectThroughProxy: behind an HTTP proxy (here on loopback, as a
// private proxy usually is) the dial reaches the proxy, so the redirect
// target is checked by name instead: a public target goes through, a
// private one is refused before anything is sent.
func TestRedirectThroughProxy(t *testing.T) {
	proxy := newServer(t, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "via proxy") }, false)
	t.Setenv("HTTP_PROXY", proxy.URL)
	t.Setenv("NO_PROXY", "")
	for target, public := range map[string]bool{"http://93.184.215.14/blob": true, "http://10.1.2.3/blob": false} {
		reg := newServer(t, func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, target, http.StatusFound) }, false)
		c := newClient(t, Endpoint{URL: reg.URL}) // 127.0.0.1: never proxied
		before := proxy.conns.Load()
		resp, err := get(t, c, reg.URL+"/v2/library/app/blobs/sha256:abc")
		var ae *AddressError
		switch {
		case public && (err != nil || resp.StatusCode != 200):
			t.Errorf("redirect to public %s through the proxy: %v", target, err)
		case !public && !errors.As(err, &ae):
			t.Errorf("redirect to private %s through the proxy: %v, want an *AddressError", target, err)
		case !public && proxy.conns.Load() != before:
			t.Errorf("the proxy was asked for private %s", target)
		}
	}
}

// TestWarmFetchesTokenAhead: once the server is known to want bearer
// tokens, Warm gets the token of a new scope in the background, and a
// request for that scope goes out with it, never answered 401. Before the
// scheme is known, and while a token is held, Warm sends nothing.
func TestWarmFetchesTokenAhead(t *testing.T) {
	var queries []string
	tokens := tokenServer(t, &queries)
	reg := newServer(t, registry(`Bearer realm="`+tokens.URL+`/token",service="registry.test"`, "Bearer tok"), false)
	c := newClient(t, Endpoint{URL: reg.URL, Username: "user", Password: "pass", TokenRealms: []string{tokens.URL}})
	c.Warm("repository:library/other:pull")
	time.Sleep(50 * time.Millisecond)
	if len(queries) != 0 {
		t.Fatalf("Warm before any challenge asked for tokens: %v", queries)
	}
	if resp, err := get(t, c, reg.URL+"/v2/library/app/manifests/v1"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("got %v %v", resp, err)
	}
	c.Warm("repository:library/other:pull")
	c.Warm("repository:library/app:pull") // held: nothing to do
	deadline := time.Now().Add(5 * time.Second)
	for c.tokens.Len() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	before := len(reg.authHeaders())
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, reg.URL+"/v2/library/other/manifests/v1", nil)
	resp, err := c.Do(req, "repository:library/other:pull")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("got %v %v", resp, err)
	}
	resp.Body.Close()
	if sent := reg.authHeaders()[before:]; len(sent) != 1 || sent[0] != "Bearer tok" {
		t.Errorf("the request after Warm went out as %q, want once with the token", sent)
	}
	if len(queries) != 2 {
		t.Errorf("token requests: %v, want one per scope", queries)
	}
}

// TestConfigured: every setting of a config.Endpoint reaches the Endpoint,
// a field added to one needing its twin in the other.
func TestConfigured(t *testing.T) {
	e := config.Endpoint{URL: "https://notary.example", CAFile: "ca.pem", Username: "u", Password: "p", TokenRealms: []string{"https://auth.example"}}
	got := Configured("upstreams[1].notary", e, []string{"s3.internal:9000"}, 3*time.Second)
	want := Endpoint{Field: "upstreams[1].notary", URL: "https://notary.example", CAFile: "ca.pem", Username: "u", Password: "p",
		TokenRealms: []string{"https://auth.example"}, RedirectHosts: []string{"s3.internal:9000"}, Timeout: 3 * time.Second}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Configured (-want +got):\n%s", diff)
	}
	ev, gv := reflect.ValueOf(e), reflect.ValueOf(got)
	for i := range ev.NumField() {
		name := ev.Type().Field(i).Name
		if f := gv.FieldByName(name); !f.IsValid() || !reflect.DeepEqual(f.Interface(), ev.Field(i).Interface()) {
			t.Errorf("config.Endpoint.%s does not reach Endpoint.%s", name, name)
		}
	}
}

// FuzzReadTokenAnswer: a token service's answer gives a token of printable ASCII
// that lives from a moment to a day, or an error; never a panic.
func FuzzReadTokenAnswer(f *testing.F) {
	for _, s := range []string{
		`{"token":"abc","expires_in":300}`, `{"access_token":"x.y.z"}`, `{"token":""}`,
		`{"token":"a\r\nX-Evil: 1"}`, `{"token":"t","expires_in":-5}`, `{"token":"t","expires_in":99999999999}`, `[]`, ``,
	} {
		f.Add(s)
	}
	now := time.Now()
	f.Fuzz(func(t *testing.T, body string) {
		tok, err := readTokenAnswer(strings.NewReader(body), now)
		if err != nil {
			return
		}
		if tok.value == "" || strings.ContainsFunc(tok.value, func(r rune) bool { return r < 0x21 || r > 0x7e }) {
			t.Fatalf("token %q from %q", tok.value, body)
		}
		if life := tok.until.Sub(now); life <= 0 || life > 24*time.Hour {
			t.Fatalf("token lives %v from %q", life, body)
		}
	})
}

// TestPublicClient: a client for hosts that a certificate names (a CRL
// distribution point, an OCSP responder) connects to no private address
// unless the host is listed, directly or through a redirect, and never
// sends credentials.
func TestPublicClient(t *testing.T) {
	var auth atomic.Value
	crl := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		auth.Store(r.Header.Get("Authorization"))
		fmt.Fprint(w, "crl")
	}, false)
	hop := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, crl.URL+"/ca.crl", http.StatusFound)
	}, false)
	const field = "trust.notation.revocation_hosts"
	fetch := func(allow []string, u string) (string, error) {
		hc, err := Public(field, allow, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		req.Header.Set("Authorization", "Basic c2VjcmV0")
		resp, err := hc.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b), nil
	}

	_, err := fetch(nil, crl.URL+"/ca.crl")
	if ae, ok := errors.AsType[*AddressError](err); !ok || !ae.Public || !strings.Contains(err.Error(), field) {
		t.Fatalf("an unlisted loopback responder: got %v, want an *AddressError naming %s", err, field)
	}
	_, err = fetch([]string{hop.Listener.Addr().String()}, hop.URL+"/ca.crl")
	if _, ok := errors.AsType[*AddressError](err); !ok {
		t.Fatalf("a listed host redirecting to an unlisted loopback one: got %v, want an *AddressError", err)
	}
	if n := crl.conns.Load(); n != 0 {
		t.Fatalf("the unlisted server received %d connections", n)
	}
	got, err := fetch([]string{crl.Listener.Addr().String()}, crl.URL+"/ca.crl")
	if err != nil || got != "crl" {
		t.Fatalf("a listed responder: got %q, %v", got, err)
	}
	if a, _ := auth.Load().(string); a != "" {
		t.Fatalf("the responder was sent Authorization %q", a)
	}
}
