package trust

import (
	"crypto/sha256"
	"crypto/x509"
	"testing"

	"github.com/theupdateframework/notary/tuf"
	"github.com/theupdateframework/notary/tuf/data"
	"github.com/theupdateframework/notary/tuf/signed"
	"github.com/theupdateframework/notary/tuf/testutils"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

// fixture is a TUF repository made with notary's testutils and the server
// publishing it (testenv.TUFRepo), for the verifier's tests.
type fixture struct {
	t    *testing.T
	tuf  *testenv.TUFRepo
	gun  data.GUN
	repo *tuf.Repo
	cs   signed.CryptoService
	srv  *testenv.TUFServer
	meta map[data.RoleName][]byte // as last published
}

const testGUN = "example.com/library/app"

func newFixture(t *testing.T) *fixture {
	t.Helper()
	r := testenv.NewTUFRepo(t, testGUN)
	return &fixture{t: t, tuf: r, gun: r.GUN, repo: r.Repo, cs: r.CS, srv: r.Server}
}

// delegate adds role with a fresh x509 delegation key, as `docker trust
// signer add` does, and returns the key's certificate.
func (f *fixture) delegate(role string) *x509.Certificate {
	f.t.Helper()
	return f.tuf.Delegate(f.t, role)
}

// tag signs tag → content in role and returns the content's target meta.
func (f *fixture) tag(role, tag string, content []byte) data.FileMeta {
	f.t.Helper()
	sum := sha256.Sum256(content)
	meta := data.FileMeta{Length: int64(len(content)), Hashes: data.Hashes{"sha256": sum[:]}}
	f.tuf.AddTarget(f.t, role, tag, meta)
	return meta
}

// publish signs every role and serves the result.
func (f *fixture) publish() {
	f.t.Helper()
	f.tuf.Publish(f.t)
	f.meta = f.tuf.Meta
}

// swizzle returns a swizzler over the published metadata; the server serves
// what it changes.
func (f *fixture) swizzle() *testutils.MetadataSwizzler { return f.tuf.Swizzle() }

func (f *fixture) rootID() string { return f.tuf.RootID() }
