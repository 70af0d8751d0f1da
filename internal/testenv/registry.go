package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	_ "github.com/distribution/distribution/v3/registry/auth/token" // registers the "token" access controller
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem" // registers the "filesystem" driver
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/sirupsen/logrus"
)

// A Fault runs before the upstream registry sees a request. It returns true when it
// wrote the response itself; false passes the request on (after, say, a delay).
type Fault func(w http.ResponseWriter, r *http.Request) bool

// Registry is a distribution v3 registry with in-memory storage, served in-process on
// 127.0.0.1 over plain HTTP. It counts the requests it sees and can be given a Fault.
type Registry struct {
	srv  *httptest.Server
	app  *handlers.App
	auth authn.Authenticator // what Push uses; anonymous without token auth

	mu     sync.Mutex
	fault  Fault
	counts map[string]int // by "METHOD path"

	blobBytes atomic.Int64 // body bytes written to blob GETs
}

// quietLogrus silences logrus' standard logger, which distribution (and notary's
// client) log through; distribution has no public way to pass it a logger of its own.
var quietLogrus sync.Once

// A RegistryOption configures NewRegistry.
type RegistryOption func(t testing.TB, cfg *configuration.Configuration, r *Registry)

// RegistryService is the service name of a registry with TokenAuth: the audience of its tokens.
const RegistryService = "testenv-registry"

// TokenAuth makes the registry want tokens from ts (auth: token, service
// RegistryService), as Docker Hub does. Push then gets its tokens as a user of ts with
// a password of its own, so it needs no anonymous grant.
func TokenAuth(ts *TokenServer) RegistryOption {
	return func(t testing.TB, cfg *configuration.Configuration, r *Registry) {
		cfg.Auth = configuration.Auth{"token": configuration.Parameters(ts.Options(RegistryService))}
		pusher := authn.Basic{Username: "testenv-pusher", Password: rand.Text()}
		ts.AddUser(pusher.Username, pusher.Password)
		r.auth = &pusher
	}
}

// NewRegistry starts an empty upstream registry; t.Cleanup stops it.
func NewRegistry(t testing.TB, opts ...RegistryOption) *Registry {
	t.Helper()
	quietLogrus.Do(func() { logrus.SetOutput(io.Discard) })
	r := &Registry{counts: map[string]int{}, auth: authn.Anonymous}

	cfg := &configuration.Configuration{}
	cfg.Storage = configuration.Storage{
		"filesystem": configuration.Parameters{"rootdirectory": t.TempDir()}, // inmemory takes seconds per large blob
		// The purger walks storage on a timer; nothing here lives long enough to need it.
		"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
		"delete":      configuration.Parameters{"enabled": true},
	}
	cfg.HTTP.Secret = "testenv-upload-secret" // else NewApp warns and makes a random one
	for _, o := range opts {
		o(t, cfg, r)
	}
	app := handlers.NewApp(context.Background(), cfg)
	r.app = app
	r.srv = httptest.NewUnstartedServer(http.HandlerFunc(r.serve))
	r.srv.Config.ErrorLog = discardLog()
	r.srv.Start()
	t.Cleanup(func() {
		r.srv.Close()
		_ = app.Shutdown()
	})
	return r
}

func (r *Registry) serve(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	r.counts[req.Method+" "+req.URL.Path]++
	f := r.fault
	r.mu.Unlock()
	if req.Method == http.MethodGet && isBlobPath(req.URL.Path) {
		w = &countingWriter{ResponseWriter: w, n: &r.blobBytes}
	}
	if f != nil && f(w, req) {
		return
	}
	r.app.ServeHTTP(w, req)
}

// isBlobPath says whether path is /v2/<name>/blobs/<digest> (not an upload).
func isBlobPath(path string) bool {
	_, rest, ok := strings.Cut(path, "/blobs/")
	return ok && strings.HasPrefix(path, "/v2/") && !strings.HasPrefix(rest, "uploads")
}

// countingWriter adds the body bytes it writes to n.
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// Flush passes on to the connection, for Faults that flush.
func (c *countingWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection (Flush, deadlines).
func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// BlobBytes is how many body bytes the registry has written in answer to blob GETs, in
// any repository: what it served, counting a body cut short by what was sent of it.
func (r *Registry) BlobBytes() int64 { return r.blobBytes.Load() }

// URL is the registry's base URL, http://127.0.0.1:PORT.
func (r *Registry) URL() string { return r.srv.URL }

// Host is the registry's 127.0.0.1:PORT, as image references name it.
func (r *Registry) Host() string { return strings.TrimPrefix(r.srv.URL, "http://") }

// Stop closes the registry: later connections are refused, as when an upstream is gone.
// It is safe to call more than once.
func (r *Registry) Stop() { r.srv.Close() }

// Push writes img to repo:tag (repo like "library/app") and returns its manifest digest.
func (r *Registry) Push(t testing.TB, repo, tag string, img v1.Image) v1.Hash {
	t.Helper()
	ref := r.ref(t, repo, tag)
	if err := remote.Write(ref, img, remote.WithContext(t.Context()), remote.WithAuth(r.auth)); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatalf("digest of %s: %v", ref, err)
	}
	return d
}

// PushIndex writes idx and all its images to repo:tag and returns the index's digest.
func (r *Registry) PushIndex(t testing.TB, repo, tag string, idx v1.ImageIndex) v1.Hash {
	t.Helper()
	ref := r.ref(t, repo, tag)
	if err := remote.WriteIndex(ref, idx, remote.WithContext(t.Context()), remote.WithAuth(r.auth)); err != nil {
		t.Fatalf("push index %s: %v", ref, err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatalf("digest of %s: %v", ref, err)
	}
	return d
}

func (r *Registry) ref(t testing.TB, repo, tag string) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(r.Host()+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatalf("reference %s:%s: %v", repo, tag, err)
	}
	return ref
}

// Requests counts the requests seen with this method ("" for any) whose path ends in
// pathSuffix, including those a Fault answered.
func (r *Registry) Requests(method, pathSuffix string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for k, c := range r.counts {
		m, p, _ := strings.Cut(k, " ")
		if (method == "" || m == method) && strings.HasSuffix(p, pathSuffix) {
			n += c
		}
	}
	return n
}

// ManifestGets counts GETs of a manifest by digest, in any repository.
func (r *Registry) ManifestGets(dgst v1.Hash) int {
	return r.Requests(http.MethodGet, "/manifests/"+dgst.String())
}

// BlobGets counts GETs of a blob, in any repository.
func (r *Registry) BlobGets(dgst v1.Hash) int {
	return r.Requests(http.MethodGet, "/blobs/"+dgst.String())
}

// SetFault installs f in front of the registry; nil removes it.
func (r *Registry) SetFault(f Fault) {
	r.mu.Lock()
	r.fault = f
	r.mu.Unlock()
}

// GetPath matches GET requests whose path ends in suffix, such as "/blobs/"+dgst.String().
func GetPath(suffix string) func(*http.Request) bool {
	return func(r *http.Request) bool {
		return r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, suffix)
	}
}

// CorruptBody is a Fault that serves the registry's real response to requests that match,
// with the middle byte of the body flipped: same status, headers and length, wrong digest.
func (r *Registry) CorruptBody(match func(*http.Request) bool) Fault {
	return func(w http.ResponseWriter, req *http.Request) bool {
		if !match(req) {
			return false
		}
		rec := r.record(req)
		body := rec.Body.Bytes()
		if len(body) > 0 {
			body[len(body)/2] ^= 0xff
		}
		copyHeader(w.Header(), rec.Header())
		w.WriteHeader(rec.Code)
		_, _ = w.Write(body)
		return true
	}
}

// Truncate is a Fault that sends the headers of the registry's real response to requests
// that match (Content-Length included) and half its body, then closes the connection.
func (r *Registry) Truncate(match func(*http.Request) bool) Fault {
	return func(w http.ResponseWriter, req *http.Request) bool {
		if !match(req) {
			return false
		}
		rec := r.record(req)
		body := rec.Body.Bytes()
		copyHeader(w.Header(), rec.Header())
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(rec.Code)
		_, _ = w.Write(body[:len(body)/2])
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		panic(http.ErrAbortHandler) // net/http closes the connection without logging
	}
}

// Delay is a Fault that holds requests that match for d (or until the client gives up),
// then lets the registry answer them.
func Delay(d time.Duration, match func(*http.Request) bool) Fault {
	return func(w http.ResponseWriter, req *http.Request) bool {
		if !match(req) {
			return false
		}
		select {
		case <-time.After(d):
			return false
		case <-req.Context().Done():
			return true
		}
	}
}

// record runs req through the registry and keeps the whole response. Redirects are not
// followed: the filesystem driver serves blobs itself.
func (r *Registry) record(req *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	rec.Body = new(bytes.Buffer)
	r.app.ServeHTTP(rec, req)
	return rec
}

func copyHeader(dst, src http.Header) {
	for k, v := range src {
		dst[k] = append([]string(nil), v...)
	}
}

// Challenge is a Fault that answers every request under /v2/ with 401 and the
// WWW-Authenticate header challenge, as a registry naming a token realm of its choosing
// would.
func Challenge(challenge string) Fault {
	return func(w http.ResponseWriter, req *http.Request) bool {
		if !strings.HasPrefix(req.URL.Path, "/v2/") {
			return false
		}
		w.Header().Set("WWW-Authenticate", challenge)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
		return true
	}
}
