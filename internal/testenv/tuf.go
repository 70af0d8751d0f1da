package testenv

import (
	"crypto/x509"
	"errors"
	"maps"
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

// TUFServer serves notary's read API (GET /v2/<gun>/_trust/tuf/<name>.json) for one GUN
// from a storage.MetadataStore that the test may swap at any time, as notary-server does
// from its database, and counts requests by role. It serves what notary-server never
// would (metadata swizzled by notary's testutils, endless or trickled bodies), which is
// why it exists beside StartNotary; trustserver signs what it serves and cannot.
type TUFServer struct {
	*httptest.Server
	gun string

	mu         sync.Mutex
	store      storage.MetadataStore
	hits       map[string]int
	user, pass string
	override   func(w http.ResponseWriter, r *http.Request, role string) bool
}

// NewTUFServer starts a TUFServer for gun serving an empty store; t.Cleanup stops it.
func NewTUFServer(t testing.TB, gun string) *TUFServer {
	t.Helper()
	s := &TUFServer{gun: gun, store: storage.NewMemoryStore(nil), hits: map[string]int{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

// checksummed is a metadata name with a checksum: role.<sha256 hex>.
var checksummed = regexp.MustCompile(`^(.+)\.[0-9a-f]{64}$`)

func (s *TUFServer) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	wantUser, wantPass := s.user, s.pass
	s.mu.Unlock()
	if u, p, _ := r.BasicAuth(); wantUser != "" && (u != wantUser || p != wantPass) {
		w.Header().Set("WWW-Authenticate", `Basic realm="notary"`)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	if r.URL.Path == "/v2/" {
		_, _ = w.Write([]byte("{}"))
		return
	}
	name, ok := strings.CutPrefix(r.URL.Path, tufPrefix(s.gun))
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
	role := name
	if m := checksummed.FindStringSubmatch(name); m != nil {
		role = m[1]
	}
	s.mu.Lock()
	s.hits[role]++
	st, override := s.store, s.override
	s.mu.Unlock()
	if override != nil && override(w, r, role) {
		return
	}
	b, err := st.GetSized(name, 1<<30) // MemoryStore cannot take NoSizeLimit
	if errors.As(err, new(storage.ErrMetaNotFound)) {
		http.NotFound(w, r)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	_, _ = w.Write(b)
}

// ServeFrom makes st what the server serves from the next request on.
func (s *TUFServer) ServeFrom(st storage.MetadataStore) {
	s.mu.Lock()
	s.store = st
	s.mu.Unlock()
}

// Store is what the server serves from.
func (s *TUFServer) Store() storage.MetadataStore {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.store
}

// SetOverride makes f answer every request first, but for GET /v2/; f returns whether it
// answered. role is the metadata's role ("timestamp", "3.root", "targets/releases"), or ""
// for a path outside the GUN's read API (such as a token service's). nil removes it.
func (s *TUFServer) SetOverride(f func(w http.ResponseWriter, r *http.Request, role string) bool) {
	s.mu.Lock()
	s.override = f
	s.mu.Unlock()
}

// SetBasicAuth makes every request need basic auth user:pass; a user of "" needs none.
func (s *TUFServer) SetBasicAuth(user, pass string) {
	s.mu.Lock()
	s.user, s.pass = user, pass
	s.mu.Unlock()
}

// Count is how many requests for role the server has seen.
func (s *TUFServer) Count(role string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits[role]
}

// Hits is how many requests the server has seen for each role it was asked about.
func (s *TUFServer) Hits() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.hits)
}

// TUFRepo is a TUF repository for one GUN made with notary's testutils (root, targets,
// snapshot and timestamp keys in CS), and the TUFServer that publishes it. The test changes
// Repo, then Publish signs and serves it; Swizzle serves a tampered copy instead.
type TUFRepo struct {
	GUN    data.GUN
	Repo   *tuf.Repo
	CS     signed.CryptoService
	Server *TUFServer
	Meta   map[data.RoleName][]byte // as last published
}

// NewTUFRepo makes an empty repository for gun and starts its server, which serves
// nothing until Publish.
func NewTUFRepo(t testing.TB, gun string) *TUFRepo {
	t.Helper()
	repo, cs, err := testutils.EmptyRepo(data.GUN(gun))
	if err != nil {
		t.Fatal(err)
	}
	return &TUFRepo{GUN: data.GUN(gun), Repo: repo, CS: cs, Server: NewTUFServer(t, gun)}
}

// Delegate adds role, for all paths, with a new ECDSA key certified for a year, as
// `docker trust signer add` does, and returns the key's certificate.
func (r *TUFRepo) Delegate(t testing.TB, role string) *x509.Certificate {
	t.Helper()
	pub, err := r.CS.Create(data.RoleName(role), r.GUN, data.ECDSAKey)
	if err != nil {
		t.Fatal(err)
	}
	priv, _, err := r.CS.GetPrivateKey(pub.ID())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now().Add(-time.Hour)
	cert, err := cryptoservice.GenerateCertificate(priv, r.GUN, start, start.AddDate(1, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	key := data.NewECDSAx509PublicKey(utils.CertToPEM(cert))
	if err := r.Repo.UpdateDelegationKeys(data.RoleName(role), data.KeyList{key}, nil, 1); err != nil {
		t.Fatal(err)
	}
	if err := r.Repo.UpdateDelegationPaths(data.RoleName(role), []string{""}, nil, false); err != nil {
		t.Fatal(err)
	}
	return cert
}

// AddTarget adds tag → meta to role; Publish makes it served.
func (r *TUFRepo) AddTarget(t testing.TB, role, tag string, meta data.FileMeta) {
	t.Helper()
	if _, err := r.Repo.AddTargets(data.RoleName(role), data.Files{tag: meta}); err != nil {
		t.Fatal(err)
	}
}

// Publish signs every role and serves the result.
func (r *TUFRepo) Publish(t testing.TB) {
	t.Helper()
	meta, err := testutils.SignAndSerialize(r.Repo)
	if err != nil {
		t.Fatal(err)
	}
	r.Meta = meta
	r.Server.ServeFrom(storage.NewMemoryStore(testutils.CopyRepoMetadata(meta)))
}

// Swizzle returns a swizzler over a copy of the published metadata; the server serves
// what the swizzler makes of it.
func (r *TUFRepo) Swizzle() *testutils.MetadataSwizzler {
	s := testutils.NewMetadataSwizzler(r.GUN, testutils.CopyRepoMetadata(r.Meta), r.CS)
	r.Server.ServeFrom(s.MetadataCache)
	return s
}

// RootID is the root certificate's key ID: what trust.pinning.certs pins.
func (r *TUFRepo) RootID() string {
	return r.Repo.Root.Signed.Roles[data.CanonicalRootRole].KeyIDs[0]
}
