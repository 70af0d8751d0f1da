package testenv

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TokenServer is a registry token service as the Docker token spec describes it
// (https://distribution.github.io/distribution/spec/auth/token/), the accepted fake of
// an outside party: GET /token?service=S&scope=T:NAME:ACTIONS (scope repeated or
// space-separated), Basic credentials optional, answered with
// {"token", "access_token", "expires_in", "issued_at"}. The token is a JWT signed ES256
// with a key whose self-signed certificate is in the x5c header and in RootCertBundle,
// as distribution's (v3 and v2.7, which notary-server embeds) registry/auth/token
// verifies it: issuer Issuer, audience the service asked for, the granted access.
//
// A known user with the right password is granted every action it asks for; a request
// without credentials is granted pull on the repositories AllowAnonymous names and
// nothing else; wrong credentials are answered 401. It serves on 127.0.0.1 under the
// name localhost (Realm), since go-containerregistry refuses IP-literal realms.
type TokenServer struct {
	srv *httptest.Server
	// Issuer is the iss of every token; the registry and notary-server check it.
	Issuer string
	// RootCertBundle is the PEM file of the signing certificate.
	RootCertBundle string

	key  *ecdsa.PrivateKey
	x5c  string // base64 DER of the signing certificate
	port string

	mu        sync.Mutex
	users     map[string]string // user -> password
	anonymous []string          // path.Match patterns of repositories anonymous may pull
	expiresIn int
	counts    map[string]int // by user, "" for anonymous and "!" for refused
	scopes    map[string]int // by user + " " + scope
	tokens    []string       // every token issued
	down      bool
}

// NewTokenServer starts a token service; t.Cleanup stops it. Tokens last 300 s unless
// SetExpiresIn says otherwise.
func NewTokenServer(t testing.TB) *TokenServer {
	t.Helper()
	dir := t.TempDir()
	key := newECKey(t)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: "testenv token signer"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("token signing certificate: %v", err)
	}
	s := &TokenServer{
		Issuer:         "testenv-token-issuer",
		RootCertBundle: filepath.Join(dir, "token-signer.pem"),
		key:            key,
		x5c:            base64.StdEncoding.EncodeToString(der),
		users:          map[string]string{},
		expiresIn:      300,
		counts:         map[string]int{},
		scopes:         map[string]int{},
	}
	writeFile(t, s.RootCertBundle, pemBlock("CERTIFICATE", der))
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	s.srv.Config.ErrorLog = discardLog()
	s.srv.Start()
	_, s.port, _ = net.SplitHostPort(s.srv.Listener.Addr().String())
	t.Cleanup(s.srv.Close)
	return s
}

// Origin is http://localhost:PORT, what token_realms lists.
func (s *TokenServer) Origin() string { return "http://localhost:" + s.port }

// Realm is the token endpoint, Origin()+"/token".
func (s *TokenServer) Realm() string { return s.Origin() + "/token" }

// AddUser lets user, with password pass, have every action it asks for.
func (s *TokenServer) AddUser(user, pass string) {
	s.mu.Lock()
	s.users[user] = pass
	s.mu.Unlock()
}

// AllowAnonymous lets requests without credentials pull the repositories matching
// the path.Match patterns (library/public, library/*).
func (s *TokenServer) AllowAnonymous(patterns ...string) {
	s.mu.Lock()
	s.anonymous = append(s.anonymous, patterns...)
	s.mu.Unlock()
}

// SetExpiresIn sets the lifetime, in seconds, of the tokens issued from now on.
func (s *TokenServer) SetExpiresIn(sec int) {
	s.mu.Lock()
	s.expiresIn = sec
	s.mu.Unlock()
}

// SetDown makes the service close every connection without answering (true), or
// answer again (false).
func (s *TokenServer) SetDown(down bool) {
	s.mu.Lock()
	s.down = down
	s.mu.Unlock()
}

// Requests counts the token requests made as user ("" for anonymous ones, "!" for
// those refused for wrong credentials).
func (s *TokenServer) Requests(user string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[user]
}

// RequestsFor counts the token requests made as user that asked for scope
// (repository:library/app:pull).
func (s *TokenServer) RequestsFor(user, scope string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.scopes[user+" "+scope]
}

// Tokens are the tokens issued so far.
func (s *TokenServer) Tokens() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.tokens...)
}

// Options are the options of distribution's token access controller
// (configuration.Auth{"token": ...}, notary-server's auth.options) for service.
func (s *TokenServer) Options(service string) map[string]any {
	return map[string]any{
		"realm":          s.Realm(),
		"service":        service,
		"issuer":         s.Issuer,
		"rootcertbundle": s.RootCertBundle,
		"autoredirect":   false,
	}
}

func (s *TokenServer) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	down := s.down
	s.mu.Unlock()
	if down {
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
				return
			}
		}
		panic(http.ErrAbortHandler)
	}
	if r.Method != http.MethodGet || r.URL.Path != "/token" {
		http.NotFound(w, r)
		return
	}
	q := r.URL.Query()
	service := q.Get("service")
	user, pass, hasAuth := r.BasicAuth()

	s.mu.Lock()
	defer s.mu.Unlock()
	if hasAuth {
		if want, ok := s.users[user]; !ok || want != pass {
			s.counts["!"]++
			w.Header().Set("WWW-Authenticate", `Basic realm="testenv token service"`)
			http.Error(w, `{"details":"incorrect username or password"}`, http.StatusUnauthorized)
			return
		}
	} else {
		user = ""
	}
	s.counts[user]++
	for _, sc := range q["scope"] {
		s.scopes[user+" "+sc]++
	}
	if service == "" {
		http.Error(w, `{"details":"no service"}`, http.StatusBadRequest)
		return
	}
	var access []resourceActions
	for _, sc := range q["scope"] {
		for f := range strings.FieldsSeq(sc) {
			if a, ok := s.grant(user, f); ok {
				access = append(access, a)
			}
		}
	}
	now := time.Now()
	claims := map[string]any{
		"iss":    s.Issuer,
		"sub":    user,
		"aud":    service, // a string: notary-server's distribution v2.7 wants one
		"exp":    now.Add(time.Duration(s.expiresIn) * time.Second).Unix(),
		"nbf":    now.Add(-10 * time.Second).Unix(),
		"iat":    now.Unix(),
		"jti":    rand.Text(),
		"access": access,
	}
	tok, err := s.sign(claims)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	s.tokens = append(s.tokens, tok)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"token": tok, "access_token": tok, "expires_in": s.expiresIn, "issued_at": now.UTC().Format(time.RFC3339),
	})
}

type resourceActions struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

// grant is what user ("" anonymous) gets of scope type:name:actions; false for nothing.
func (s *TokenServer) grant(user, scope string) (resourceActions, bool) {
	typ, rest, ok := strings.Cut(scope, ":")
	i := strings.LastIndex(rest, ":")
	if !ok || i < 0 {
		return resourceActions{}, false
	}
	a := resourceActions{Type: typ, Name: rest[:i]}
	for act := range strings.SplitSeq(rest[i+1:], ",") {
		switch {
		case user != "":
			a.Actions = append(a.Actions, act)
		case act == "pull" && typ == "repository" && s.anonymousMay(a.Name):
			a.Actions = append(a.Actions, act)
		}
	}
	return a, len(a.Actions) > 0
}

func (s *TokenServer) anonymousMay(repo string) bool {
	for _, p := range s.anonymous {
		if ok, _ := path.Match(p, repo); ok {
			return true
		}
	}
	return false
}

// sign makes the compact JWS of claims: ES256, the signing certificate in x5c.
func (s *TokenServer) sign(claims map[string]any) (string, error) {
	header, _ := json.Marshal(map[string]any{"typ": "JWT", "alg": "ES256", "x5c": []string{s.x5c}})
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	enc := base64.RawURLEncoding
	input := enc.EncodeToString(header) + "." + enc.EncodeToString(payload)
	sum := sha256.Sum256([]byte(input))
	r, sg, err := ecdsa.Sign(rand.Reader, s.key, sum[:])
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	sig := make([]byte, 64) // JWS ES256: R and S, 32 bytes each
	r.FillBytes(sig[:32])
	sg.FillBytes(sig[32:])
	return input + "." + enc.EncodeToString(sig), nil
}
