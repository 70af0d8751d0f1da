package trustserver_test

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/theupdateframework/notary/client"
	"github.com/theupdateframework/notary/trustpinning"
	"github.com/theupdateframework/notary/tuf/data"
	"github.com/theupdateframework/notary/tuf/signed"
	"github.com/theupdateframework/notary/tuf/utils"

	"github.com/trustproxy/trustproxy/internal/trustserver"
)

const gun = "docker.io/library/app"

// fixture is a served repository with a targets/releases delegation.
type fixture struct {
	srv    *httptest.Server
	repo   *trustserver.Repo
	signer *trustserver.Signer
}

func newFixture(t *testing.T) fixture {
	t.Helper()
	s := trustserver.New()
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	repo, err := s.NewRepo(gun)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := trustserver.NewSigner("alice")
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.AddDelegation("targets/releases", signer); err != nil {
		t.Fatal(err)
	}
	return fixture{srv: srv, repo: repo, signer: signer}
}

// client reads the fixture with the real notary client, pinning certID.
func (f fixture) client(t *testing.T, dir, certID string) client.Repository {
	t.Helper()
	c, err := client.NewFileCachedRepository(dir, data.GUN(gun), f.srv.URL, http.DefaultTransport, nil,
		trustpinning.TrustPinConfig{Certs: map[string][]string{gun: {certID}}, DisableTOFU: true})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func manifest(s string) (digest.Digest, int64) {
	return digest.FromString(s), int64(len(s))
}

func checkTarget(t *testing.T, c client.Repository, tag string, want digest.Digest, size int64, role data.RoleName) {
	t.Helper()
	got, err := c.GetTargetByName(tag, "targets/releases", data.CanonicalTargetsRole)
	if err != nil {
		t.Fatalf("GetTargetByName(%s): %v", tag, err)
	}
	if d := digest.NewDigestFromBytes(digest.SHA256, got.Hashes[digest.SHA256.String()]); d != want {
		t.Errorf("%s: digest %s, want %s", tag, d, want)
	}
	if got.Length != size {
		t.Errorf("%s: length %d, want %d", tag, got.Length, size)
	}
	if got.Role != role {
		t.Errorf("%s: role %s, want %s", tag, got.Role, role)
	}
}

func TestClientVerifiesPublishedTargets(t *testing.T) {
	f := newFixture(t)
	d1, n1 := manifest("release v1")
	d2, n2 := manifest("top-level v2")
	if err := f.repo.AddTarget("targets/releases", "v1", d1, n1); err != nil {
		t.Fatal(err)
	}
	if err := f.repo.AddTarget("targets", "v2", d2, n2); err != nil {
		t.Fatal(err)
	}
	if err := f.repo.Publish(); err != nil {
		t.Fatal(err)
	}

	c := f.client(t, t.TempDir(), f.repo.RootCertID())
	checkTarget(t, c, "v1", d1, n1, "targets/releases")
	checkTarget(t, c, "v2", d2, n2, data.CanonicalTargetsRole)

	all, err := c.GetAllTargetMetadataByName("v1")
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1 || all[0].Role.Name != "targets/releases" {
		t.Fatalf("GetAllTargetMetadataByName(v1) = %+v, want one target in targets/releases", all)
	}
	var keyIDs []string
	for _, sig := range all[0].Signatures {
		keyIDs = append(keyIDs, sig.KeyID)
	}
	if len(keyIDs) != 1 || keyIDs[0] != f.signer.KeyID() {
		t.Errorf("v1 signed by %v, want [%s] (%s)", keyIDs, f.signer.KeyID(), f.signer.Name())
	}
	if _, ok := all[0].Role.Keys[f.signer.KeyID()]; !ok {
		t.Errorf("targets/releases keys %v lack signer %s", all[0].Role.ListKeyIDs(), f.signer.KeyID())
	}
}

func TestClientSeesRepublishedTag(t *testing.T) {
	f := newFixture(t)
	d1, n1 := manifest("one")
	if err := f.repo.AddTarget("targets/releases", "latest", d1, n1); err != nil {
		t.Fatal(err)
	}
	if err := f.repo.Publish(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	checkTarget(t, f.client(t, dir, f.repo.RootCertID()), "latest", d1, n1, "targets/releases")

	// A new version of every role that changed, read through the same cache
	// (so the client checks versions against what it saw), plus a root
	// re-signed as version 2.
	d2, n2 := manifest("two")
	if err := f.repo.AddTarget("targets/releases", "latest", d2, n2); err != nil {
		t.Fatal(err)
	}
	if err := f.repo.Publish(trustserver.Expires("root", time.Now().AddDate(5, 0, 0))); err != nil {
		t.Fatal(err)
	}
	checkTarget(t, f.client(t, dir, f.repo.RootCertID()), "latest", d2, n2, "targets/releases")

	for _, name := range []string{"1.root", "2.root", "3.snapshot", "3.timestamp", "2.targets/releases"} {
		if code, _ := get(t, f.srv.URL+"/v2/"+gun+"/_trust/tuf/"+name+".json"); code != http.StatusOK {
			t.Errorf("GET %s.json: %d, want 200", name, code)
		}
	}
}

func TestClientRefusesExpiredMetadata(t *testing.T) {
	isExpired := func(err error) bool { _, ok := errors.AsType[signed.ErrExpired](err); return ok }
	// notary's client skips an expired delegation rather than failing, so
	// its targets are simply not found.
	isNoSuchTarget := func(err error) bool { _, ok := errors.AsType[client.ErrNoSuchTarget](err); return ok }
	tests := []struct {
		role string
		want func(error) bool
	}{
		{"timestamp", isExpired},
		{"snapshot", isExpired},
		{"targets", isExpired},
		{"targets/releases", isNoSuchTarget},
	}
	for _, tt := range tests {
		t.Run(strings.ReplaceAll(tt.role, "/", "_"), func(t *testing.T) {
			f := newFixture(t)
			d, n := manifest("x")
			if err := f.repo.AddTarget("targets/releases", "v1", d, n); err != nil {
				t.Fatal(err)
			}
			if err := f.repo.Publish(trustserver.Expires(tt.role, time.Now().Add(-time.Hour))); err != nil {
				t.Fatal(err)
			}
			_, err := f.client(t, t.TempDir(), f.repo.RootCertID()).GetTargetByName("v1", "targets/releases", "targets")
			if !tt.want(err) {
				t.Fatalf("GetTargetByName with %s expired: %v (%T)", tt.role, err, err)
			}
		})
	}
}

func TestClientRefusesWrongPin(t *testing.T) {
	f := newFixture(t)
	other, err := trustserver.New().NewRepo(gun) // same GUN, another root key
	if err != nil {
		t.Fatal(err)
	}
	d, n := manifest("x")
	if err := f.repo.AddTarget("targets", "v1", d, n); err != nil {
		t.Fatal(err)
	}
	if err := f.repo.Publish(); err != nil {
		t.Fatal(err)
	}
	_, err = f.client(t, t.TempDir(), other.RootCertID()).GetTargetByName("v1")
	if _, ok := errors.AsType[*trustpinning.ErrValidationFail](err); !ok {
		t.Fatalf("GetTargetByName with a wrong pin: %v (%T), want *trustpinning.ErrValidationFail", err, err)
	}
}

func TestRootCertID(t *testing.T) {
	f := newFixture(t)
	code, body := get(t, f.srv.URL+"/v2/"+gun+"/_trust/tuf/root.json")
	if code != http.StatusOK {
		t.Fatalf("GET root.json: %d", code)
	}
	var s data.Signed
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatal(err)
	}
	root, err := data.RootFromSigned(&s)
	if err != nil {
		t.Fatal(err)
	}
	ids := root.Signed.Roles[data.CanonicalRootRole].KeyIDs
	if len(ids) != 1 || ids[0] != f.repo.RootCertID() {
		t.Fatalf("root role keys %v, want [%s]", ids, f.repo.RootCertID())
	}
	cert, err := utils.LoadCertFromPEM(root.Signed.Keys[ids[0]].Public())
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != gun {
		t.Errorf("root certificate CN %q, want %q", cert.Subject.CommonName, gun)
	}
}

func TestSignerPEM(t *testing.T) {
	s, err := trustserver.NewSigner("alice")
	if err != nil {
		t.Fatal(err)
	}
	certBlock, _ := pem.Decode(s.CertificatePEM())
	if certBlock == nil || certBlock.Type != "CERTIFICATE" {
		t.Fatalf("CertificatePEM: %q", s.CertificatePEM())
	}
	cert, err := x509.ParseCertificate(certBlock.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "alice" {
		t.Errorf("CN %q, want alice", cert.Subject.CommonName)
	}
	pubBlock, _ := pem.Decode(s.PublicKeyPEM())
	if pubBlock == nil || pubBlock.Type != "PUBLIC KEY" {
		t.Fatalf("PublicKeyPEM: %q", s.PublicKeyPEM())
	}
	certPub, err := x509.MarshalPKIXPublicKey(cert.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if string(certPub) != string(pubBlock.Bytes) {
		t.Error("PublicKeyPEM is not the certificate's key")
	}
	certKey := utils.CertToKey(cert)
	if certKey.ID() != s.KeyID() {
		t.Errorf("KeyID %s, want the certificate key's ID %s", s.KeyID(), certKey.ID())
	}
	if id, err := utils.CanonicalKeyID(certKey); err != nil || id != s.PublicKeyID() {
		t.Errorf("PublicKeyID %s, want the canonical ID %s (%v)", s.PublicKeyID(), id, err)
	}
	if s.KeyID() == s.PublicKeyID() {
		t.Error("KeyID equals PublicKeyID; the certificate key's ID should differ")
	}
}

func TestServeHTTP(t *testing.T) {
	f := newFixture(t)
	const notFound = `{"errors":[{"code":"METADATA_NOT_FOUND","message":"You have requested metadata that does not exist."}]}`
	base := "/v2/" + gun + "/_trust/tuf/"
	tests := []struct {
		name, method, path string
		code               int
		body               string // "" means any
	}{
		{"ping", "GET", "/v2/", 200, "{}"},
		{"health", "GET", "/_notary_server/health", 200, "{}"},
		{"root", "GET", base + "root.json", 200, ""},
		{"versioned root", "GET", base + "1.root.json", 200, ""},
		{"head timestamp", "HEAD", base + "timestamp.json", 200, ""},
		{"delegation not yet published", "GET", base + "targets/releases.json", 404, notFound},
		{"unknown version", "GET", base + "9.root.json", 404, notFound},
		{"unknown role", "GET", base + "targets/other.json", 404, notFound},
		{"unknown gun", "GET", "/v2/docker.io/library/nope/_trust/tuf/root.json", 404, notFound},
		{"not json", "GET", base + "root", 404, notFound},
		{"other route", "GET", "/v2/library/app/manifests/v1", 404, notFound},
		{"post", "POST", base, 405, ""},
		{"delete", "DELETE", base + "root.json", 405, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(t.Context(), tt.method, f.srv.URL+tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.code {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.code)
			}
			if tt.body != "" && string(b) != tt.body {
				t.Errorf("body %s, want %s", b, tt.body)
			}
			if tt.method == "HEAD" && (len(b) != 0 || resp.ContentLength <= 0) {
				t.Errorf("HEAD: %d body bytes, Content-Length %d", len(b), resp.ContentLength)
			}
		})
	}
}

func TestServeWhilePublishing(t *testing.T) {
	f := newFixture(t)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for range 20 {
				resp, err := http.Get(f.srv.URL + "/v2/" + gun + "/_trust/tuf/timestamp.json")
				if err != nil {
					t.Errorf("reader %d: %v", i, err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Errorf("reader %d: GET timestamp.json: %d", i, resp.StatusCode)
					return
				}
			}
		})
	}
	for i := range 10 {
		d, n := manifest(fmt.Sprint(i))
		if err := f.repo.AddTarget("targets/releases", "latest", d, n); err != nil {
			t.Fatal(err)
		}
		if err := f.repo.Publish(); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	d, n := manifest("9")
	checkTarget(t, f.client(t, t.TempDir(), f.repo.RootCertID()), "latest", d, n, "targets/releases")
}

func TestNewRepoTwice(t *testing.T) {
	s := trustserver.New()
	if _, err := s.NewRepo(gun); err != nil {
		t.Fatal(err)
	}
	if _, err := s.NewRepo(gun); err == nil {
		t.Fatal("second NewRepo of one GUN succeeded")
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}
