package proxy_test

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

// The credentials trustproxy uses in these tests: a password that shows up
// wherever it leaks.
const (
	tokenUser = "trustproxy-ci"
	tokenPass = "Zq7-hunter2-s3cret-Xp"
)

// tokenWorld is a world whose registry and notary-server both want tokens
// from one token service, ts (distinct services, so distinct audiences).
type tokenWorld struct {
	*world
	ts *testenv.TokenServer
}

func newTokenWorld(t *testing.T) *tokenWorld {
	t.Helper()
	ts := testenv.NewTokenServer(t)
	return &tokenWorld{
		world: &world{
			Env: &testenv.Env{
				Registry: testenv.NewRegistry(t, testenv.TokenAuth(ts)),
				Notary:   testenv.StartNotary(t, testenv.NotaryTokenAuth(ts)),
			},
			alice:   testenv.NewKey(t, "alice"),
			mallory: testenv.NewKey(t, "mallory"),
			roots:   map[string]string{},
		},
		ts: ts,
	}
}

// config is w.config with the token service's origin in token_realms of both
// endpoints, and the YAML lines up (the upstream's) and notary (its Notary
// server's) added, e.g. "username: u" and "password_file: /p".
func (w *tokenWorld) config(t *testing.T, up, notary []string) string {
	t.Helper()
	cfg := w.world.config(t, t.TempDir(), "")
	realms := "token_realms: [" + w.ts.Origin() + "]"
	lines := func(ls []string, indent string) string {
		var b strings.Builder
		for _, l := range append([]string{realms}, ls...) {
			b.WriteString(indent + l + "\n")
		}
		return b.String()
	}
	upAt := "    url: " + w.Registry.URL() + "\n"
	notaryAt := "      ca_file: " + w.Notary.CAFile() + "\n"
	if !strings.Contains(cfg, upAt) || !strings.Contains(cfg, notaryAt) {
		t.Fatalf("world config changed shape:\n%s", cfg)
	}
	cfg = strings.Replace(cfg, upAt, upAt+lines(up, "    "), 1)
	return strings.Replace(cfg, notaryAt, notaryAt+lines(notary, "      "), 1)
}

// TestTokenAuthAnonymousPull: a registry and notary-server with token auth
// whose token service lets anyone pull library/public: trustproxy, with no
// credentials, gets anonymous tokens and serves the signed image. The
// repository the token service keeps to known users is refused, with a
// reason naming what to do.
func TestTokenAuthAnonymousPull(t *testing.T) {
	w := newTokenWorld(t)
	w.ts.AllowAnonymous("library/public", "docker.io/library/public")
	w.initRepo(t, "docker.io/library/public", w.alice)
	w.initRepo(t, gun, w.alice)
	signed := w.pushSigned(t, "library/public", "v1", "anonymous v1")
	w.pushSigned(t, "library/app", "v1", "private v1")

	p := start(t, w.config(t, nil, nil))
	if got := p.mustPull(t, "library/public:v1"); got != signed {
		t.Fatalf("served %s, want %s", got, signed)
	}
	if n := w.ts.Requests(""); n == 0 {
		t.Error("trustproxy asked the token service for no anonymous token")
	}
	if _, err := p.pull(t, "library/app:v1"); err == nil {
		t.Fatal("an anonymous trustproxy served library/app, which the token service keeps to known users")
	}
	d := p.decision(t, gun, "v1")
	if msg := fmt.Sprint(d["message"]); d["verdict"] != "denied" || !strings.Contains(msg, "401") || !strings.Contains(msg, "credentials") {
		t.Fatalf("decision for library/app:v1: %v", d)
	}
}

// TestTokenAuthCredentialSources: each source of credentials (password,
// password_file, docker_config with auths, docker_config with a credential
// helper) gets trustproxy tokens for a repository the token service keeps to
// known users, from the registry and from notary-server.
func TestTokenAuthCredentialSources(t *testing.T) {
	tests := []struct {
		name string
		// creds returns the YAML lines of the upstream and of its Notary server.
		creds func(t *testing.T, w *tokenWorld) (up, notary []string)
	}{
		{
			name: "password",
			creds: func(t *testing.T, w *tokenWorld) ([]string, []string) {
				l := []string{"username: " + tokenUser, "password: " + tokenPass}
				return l, l
			},
		},
		{
			name: "password_file",
			creds: func(t *testing.T, w *tokenWorld) ([]string, []string) {
				f := filepath.Join(t.TempDir(), "password")
				if err := os.WriteFile(f, []byte(tokenPass+"\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				l := []string{"username: " + tokenUser, "password_file: " + f}
				return l, l
			},
		},
		{
			name: "docker_config auths",
			creds: func(t *testing.T, w *tokenWorld) ([]string, []string) {
				c := testenv.Cred{Username: tokenUser, Secret: tokenPass}
				f := testenv.DockerConfig(t, map[string]testenv.Cred{
					w.Registry.Host(): c,
					strings.TrimPrefix(w.Notary.URL(), "https://"): c,
				}, nil, "")
				return []string{"docker_config: " + f}, []string{"docker_config: " + f}
			},
		},
		{
			name: "docker_config credHelpers",
			creds: func(t *testing.T, w *tokenWorld) ([]string, []string) {
				c := testenv.Cred{Username: tokenUser, Secret: tokenPass}
				notaryHost := strings.TrimPrefix(w.Notary.URL(), "https://")
				testenv.NewCredentialHelper(t, "testenv", map[string]testenv.Cred{w.Registry.Host(): c, notaryHost: c})
				f := testenv.DockerConfig(t, nil, map[string]string{w.Registry.Host(): "testenv", notaryHost: "testenv"}, "")
				return []string{"docker_config: " + f}, []string{"docker_config: " + f}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newTokenWorld(t)
			w.ts.AddUser(tokenUser, tokenPass)
			w.initRepo(t, gun, w.alice)
			signed := w.pushSigned(t, "library/app", "v1", "credentials v1")
			up, notary := tt.creds(t, w)
			p := start(t, w.config(t, up, notary))
			if got := p.mustPull(t, "library/app:v1"); got != signed {
				t.Fatalf("served %s, want %s", got, signed)
			}
			if w.ts.RequestsFor(tokenUser, "repository:library/app:pull") == 0 ||
				w.ts.RequestsFor(tokenUser, "repository:"+gun+":pull") == 0 {
				t.Errorf("no token requests as %s for the registry and the Notary server", tokenUser)
			}
		})
	}
}

// TestTokenAuthPasswordFileRotates: the password file is read again when it
// changes: once the token service and the file have a new password, the next
// token request carries it, with no restart.
func TestTokenAuthPasswordFileRotates(t *testing.T) {
	w := newTokenWorld(t)
	w.ts.AddUser(tokenUser, tokenPass)
	w.initRepo(t, gun, w.alice)
	w.initRepo(t, "docker.io/library/other", w.alice)
	w.pushSigned(t, "library/app", "v1", "rotate v1")
	signed := w.pushSigned(t, "library/other", "v1", "rotate other v1")
	f := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(f, []byte(tokenPass+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	creds := []string{"username: " + tokenUser, "password_file: " + f}
	p := start(t, w.config(t, creds, creds))
	p.mustPull(t, "library/app:v1")

	const rotated = "rotated-" + tokenPass
	w.ts.AddUser(tokenUser, rotated)
	if err := os.WriteFile(f, []byte(rotated+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	refusedBefore := w.ts.Requests("!")
	if got := p.mustPull(t, "library/other:v1"); got != signed { // new scopes: new token requests
		t.Fatalf("after rotation served %s, want %s", got, signed)
	}
	if n := w.ts.Requests("!"); n != refusedBefore {
		t.Errorf("%d token requests with the old password after the file changed", n-refusedBefore)
	}
}

// TestTokenCacheAndRefresh: many pulls of one repository ask the token
// service once per endpoint; the token is asked for again once it expires,
// and at once when the registry refuses it (401) before then.
func TestTokenCacheAndRefresh(t *testing.T) {
	w := newTokenWorld(t)
	w.ts.AddUser(tokenUser, tokenPass)
	w.initRepo(t, gun, w.alice)
	creds := []string{"username: " + tokenUser, "password: " + tokenPass}
	const scope = "repository:library/app:pull"
	tags := []string{"v1", "v2", "v3", "v4", "v5", "v6"}
	for _, tag := range tags {
		w.pushSigned(t, "library/app", tag, "cache "+tag)
	}
	p := start(t, w.config(t, creds, creds))
	for _, tag := range tags[:4] {
		p.mustPull(t, "library/app:"+tag)
	}
	if n, m := w.ts.RequestsFor(tokenUser, scope), w.ts.RequestsFor(tokenUser, "repository:"+gun+":pull"); n != 1 || m != 1 {
		t.Fatalf("4 pulls asked for %d registry tokens and %d Notary tokens, want 1 each", n, m)
	}

	// The registry refuses the token it was given (as after a key rotation
	// on the token service's side): a new one is asked for, and the pull
	// goes through.
	refused := false
	w.Registry.SetFault(func(rw http.ResponseWriter, r *http.Request) bool {
		if refused || !strings.Contains(r.URL.Path, "/manifests/") || !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
			return false
		}
		refused = true
		rw.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service=%q,scope=%q,error="invalid_token"`,
			w.ts.Realm(), testenv.RegistryService, scope))
		rw.WriteHeader(http.StatusUnauthorized)
		return true
	})
	w.ts.SetExpiresIn(1)
	p.mustPull(t, "library/app:v5")
	w.Registry.SetFault(nil)
	if !refused {
		t.Fatal("the fault refused no token")
	}
	if n := w.ts.RequestsFor(tokenUser, scope); n != 2 {
		t.Fatalf("after a 401, %d registry token requests, want 2", n)
	}

	// The token got after the 401 lived one second: it is renewed when
	// it expires (at 90% of its life).
	time.Sleep(time.Second)
	p.mustPull(t, "library/app:v6")
	if n := w.ts.RequestsFor(tokenUser, scope); n != 3 {
		t.Fatalf("after the token expired, %d registry token requests, want 3", n)
	}
}

// TestTokenRealmUnlistedGetsNothing: an upstream whose challenge names a
// realm off token_realms (a raw listener on 127.0.0.1) is refused with a
// reason naming token_realms, and the listener sees no connection at all.
func TestTokenRealmUnlistedGetsNothing(t *testing.T) {
	w := newTokenWorld(t)
	w.ts.AddUser(tokenUser, tokenPass)
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "realm v1")
	capture := testenv.NewCapture(t)
	w.Registry.SetFault(testenv.Challenge(fmt.Sprintf(`Bearer realm="http://%s/token",service="evil",scope="repository:library/app:pull"`, capture.Addr())))
	creds := []string{"username: " + tokenUser, "password: " + tokenPass}
	p := start(t, w.config(t, creds, creds))

	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	if status == http.StatusOK || !strings.Contains(string(body), "token_realms") || !strings.Contains(string(body), capture.Addr()) {
		t.Fatalf("got %d %s, want a refusal naming the realm and token_realms", status, body)
	}
	if conns, got := capture.Seen(); conns != 0 || len(got) != 0 {
		t.Fatalf("the unlisted realm saw %d connections and %q", conns, got)
	}
}

// leaks reports where in outputs the password, its Basic form or a token
// issued by ts appears.
func leaks(outputs map[string]string, ts *testenv.TokenServer) []string {
	secrets := map[string]string{
		"password":     tokenPass,
		"basic header": base64.StdEncoding.EncodeToString([]byte(tokenUser + ":" + tokenPass)),
	}
	for i, tok := range ts.Tokens() {
		secrets[fmt.Sprintf("token %d", i)] = tok
		// A JWT's signature alone is distinctive enough to find a token cut short.
		if j := strings.LastIndex(tok, "."); j > 0 {
			secrets[fmt.Sprintf("token %d signature", i)] = tok[j+1:]
		}
	}
	var out []string
	for where, text := range outputs {
		for what, s := range secrets {
			if strings.Contains(text, s) {
				out = append(out, what+" in "+where)
			}
		}
	}
	return out
}

// TestCredentialsNeverShown runs trustproxy with a distinctive password
// through success and failure (wrong password, unlisted realm, token service
// down) and finds neither the password, nor its Basic form, nor any token in
// its log (decisions included), in the error bodies clients got, or in the
// metrics.
func TestCredentialsNeverShown(t *testing.T) {
	w := newTokenWorld(t)
	w.ts.AddUser(tokenUser, tokenPass)
	w.initRepo(t, gun, w.alice)
	for _, tag := range []string{"v1", "v2", "v3", "v4"} {
		w.pushSigned(t, "library/app", tag, "leak "+tag)
	}
	outputs := map[string]string{}
	bodies := func(name string, p *instance, paths ...string) {
		for _, path := range paths {
			status, _, body := p.get(t, http.MethodGet, path)
			outputs[fmt.Sprintf("%s: GET %s (%d)", name, path, status)] = string(body)
		}
	}
	finish := func(name string, p *instance) {
		// What /metrics serves (cmd/trustproxy's promhttp on this registry).
		var metrics strings.Builder
		mfs, err := p.metrics.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if _, err := expfmt.MetricFamilyToText(&metrics, mf); err != nil {
				t.Fatal(err)
			}
		}
		outputs[name+": metrics"] = metrics.String()
		outputs[name+": log"] = p.logs.String() // decisions included
	}
	creds := func(pass string) []string {
		f := filepath.Join(t.TempDir(), "password")
		if err := os.WriteFile(f, []byte(pass+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return []string{"username: " + tokenUser, "password_file: " + f}
	}

	ok := start(t, w.config(t, creds(tokenPass), creds(tokenPass)))
	ok.mustPull(t, "library/app:v1")
	bodies("success", ok, "/v2/library/app/manifests/v1", "/v2/library/app/tags/list")

	wrong := start(t, w.config(t, creds("wrong-"+tokenPass), creds(tokenPass)))
	bodies("wrong password", wrong, "/v2/library/app/manifests/v1")

	down := start(t, w.config(t, creds(tokenPass), creds(tokenPass)))
	w.ts.SetDown(true)
	bodies("token service down", down, "/v2/library/app/manifests/v2")
	w.ts.SetDown(false)

	capture := testenv.NewCapture(t)
	w.Registry.SetFault(testenv.Challenge(fmt.Sprintf(`Bearer realm="http://%s/token",service="evil"`, capture.Addr())))
	realm := start(t, w.config(t, creds(tokenPass), creds(tokenPass)))
	bodies("unlisted realm", realm, "/v2/library/app/manifests/v3")
	w.Registry.SetFault(nil)

	for name, p := range map[string]*instance{"success": ok, "wrong password": wrong, "token service down": down, "unlisted realm": realm} {
		finish(name, p)
	}
	for where, body := range outputs {
		if strings.HasPrefix(where, "success: GET") || strings.HasSuffix(where, "log") || strings.Contains(where, "metrics") {
			continue
		}
		t.Logf("%s: %.400s", where, body)
	}
	if l := leaks(outputs, w.ts); len(l) > 0 {
		t.Fatalf("secrets shown: %v", l)
	}
	if len(w.ts.Tokens()) == 0 || w.ts.Requests("!") == 0 {
		t.Fatalf("the test exercised too little: %d tokens issued, %d refused requests", len(w.ts.Tokens()), w.ts.Requests("!"))
	}
}
