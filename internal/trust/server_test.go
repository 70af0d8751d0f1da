package trust

import (
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/theupdateframework/notary/cryptoservice"
	"github.com/theupdateframework/notary/storage"
	"github.com/theupdateframework/notary/tuf"
	"github.com/theupdateframework/notary/tuf/data"
	"github.com/theupdateframework/notary/tuf/signed"
	"github.com/theupdateframework/notary/tuf/testutils"
	"github.com/theupdateframework/notary/tuf/utils"
)

// notaryServer serves notary's read API (GET /v2/<gun>/_trust/tuf/<name>.json)
// from a MetadataStore, as notary-server does, and counts requests by name.
type notaryServer struct {
	*httptest.Server
	gun string

	mu       sync.Mutex
	store    storage.MetadataStore
	hits     map[string]int
	user     string // when set, every request needs basic auth user:pass
	pass     string
	override func(w http.ResponseWriter, r *http.Request, name string) bool // true: handled; name "" for paths outside the read API
}

func newNotaryServer(t *testing.T, gun string) *notaryServer {
	s := &notaryServer{gun: gun, store: storage.NewMemoryStore(nil), hits: map[string]int{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

var checksumName = regexp.MustCompile(`^(.+)\.[0-9a-f]{64}$`)

func (s *notaryServer) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	wantUser, wantPass := s.user, s.pass
	s.mu.Unlock()
	if u, p, _ := r.BasicAuth(); wantUser != "" && (u != wantUser || p != wantPass) {
		w.Header().Set("WWW-Authenticate", `Basic realm="notary"`)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	if r.URL.Path == "/v2/" {
		w.Write([]byte("{}"))
		return
	}
	prefix := "/v2/" + s.gun + "/_trust/tuf/"
	name, ok := strings.CutPrefix(r.URL.Path, prefix)
	if s.mu.Lock(); !ok && s.override != nil {
		override := s.override
		s.mu.Unlock()
		if override(w, r, "") { // another path, such as a token service's
			return
		}
	} else {
		s.mu.Unlock()
	}
	if !ok || r.Method != http.MethodGet || !strings.HasSuffix(name, ".json") {
		http.NotFound(w, r)
		return
	}
	name = strings.TrimSuffix(name, ".json")
	s.mu.Lock()
	role := name
	if m := checksumName.FindStringSubmatch(name); m != nil {
		role = m[1]
	}
	s.hits[role]++
	store, override := s.store, s.override
	s.mu.Unlock()
	if override != nil && override(w, r, role) {
		return
	}
	b, err := store.GetSized(name, 1<<30) // MemoryStore cannot take NoSizeLimit
	if errors.As(err, new(storage.ErrMetaNotFound)) {
		http.NotFound(w, r)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Write(b)
}

func (s *notaryServer) serveFrom(st storage.MetadataStore) {
	s.mu.Lock()
	s.store = st
	s.mu.Unlock()
}

func (s *notaryServer) setOverride(f func(w http.ResponseWriter, r *http.Request, role string) bool) {
	s.mu.Lock()
	s.override = f
	s.mu.Unlock()
}

func (s *notaryServer) count(role string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits[role]
}

// fixture is a TUF repository made with notary's testutils and the server
// publishing it.
type fixture struct {
	t    *testing.T
	gun  data.GUN
	repo *tuf.Repo
	cs   signed.CryptoService
	srv  *notaryServer
	meta map[data.RoleName][]byte // as last published
}

const testGUN = "example.com/library/app"

func newFixture(t *testing.T) *fixture {
	t.Helper()
	repo, cs, err := testutils.EmptyRepo(testGUN)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, gun: testGUN, repo: repo, cs: cs, srv: newNotaryServer(t, testGUN)}
}

// delegate adds role with a fresh x509 delegation key, as `docker trust
// signer add` does, and returns the key's certificate.
func (f *fixture) delegate(role string) *x509.Certificate {
	f.t.Helper()
	pub, err := f.cs.Create(data.RoleName(role), f.gun, data.ECDSAKey)
	if err != nil {
		f.t.Fatal(err)
	}
	priv, _, err := f.cs.GetPrivateKey(pub.ID())
	if err != nil {
		f.t.Fatal(err)
	}
	start := time.Now().Add(-time.Hour)
	cert, err := cryptoservice.GenerateCertificate(priv, f.gun, start, start.AddDate(1, 0, 0))
	if err != nil {
		f.t.Fatal(err)
	}
	key := data.NewECDSAx509PublicKey(utils.CertToPEM(cert))
	if err := f.repo.UpdateDelegationKeys(data.RoleName(role), data.KeyList{key}, nil, 1); err != nil {
		f.t.Fatal(err)
	}
	if err := f.repo.UpdateDelegationPaths(data.RoleName(role), []string{""}, nil, false); err != nil {
		f.t.Fatal(err)
	}
	return cert
}

// tag signs tag → content in role and returns the content's target meta.
func (f *fixture) tag(role, tag string, content []byte) data.FileMeta {
	f.t.Helper()
	sum := sha256.Sum256(content)
	meta := data.FileMeta{Length: int64(len(content)), Hashes: data.Hashes{"sha256": sum[:]}}
	if _, err := f.repo.AddTargets(data.RoleName(role), data.Files{tag: meta}); err != nil {
		f.t.Fatal(err)
	}
	return meta
}

// publish signs every role and serves the result.
func (f *fixture) publish() {
	f.t.Helper()
	meta, err := testutils.SignAndSerialize(f.repo)
	if err != nil {
		f.t.Fatal(err)
	}
	f.meta = meta
	f.srv.serveFrom(storage.NewMemoryStore(testutils.CopyRepoMetadata(meta)))
}

// swizzle returns a swizzler over the published metadata; the server serves
// what it changes.
func (f *fixture) swizzle() *testutils.MetadataSwizzler {
	f.t.Helper()
	s := testutils.NewMetadataSwizzler(f.gun, testutils.CopyRepoMetadata(f.meta), f.cs)
	f.srv.serveFrom(s.MetadataCache)
	return s
}

func (f *fixture) rootID() string {
	return f.repo.Root.Signed.Roles[data.CanonicalRootRole].KeyIDs[0]
}
