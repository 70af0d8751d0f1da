package testenv

import (
	"crypto/tls"
	"net/http"
	"testing"
	"time"

	"github.com/theupdateframework/notary/client"
	"github.com/theupdateframework/notary/trustpinning"
	"github.com/theupdateframework/notary/tuf/data"
)

// RotateRoot rotates the root key of gun, made with Init, as `notary key
// rotate GUN root` does (the CLI asks for a confirmation on a terminal, so
// this calls the notary client library on the CLI's trust folder): a new
// root key and certificate, root.json's next version signed by the old root
// key and the new one, published at once. It returns the new root
// certificate ID, which trust pinning by certificate must list for the new
// root to be accepted.
func (n *Notary) RotateRoot(t testing.TB, gun string) (rootCertID string) {
	t.Helper()
	start := time.Now()
	func() {
		n.cli.Lock()
		defer n.cli.Unlock()
		rt := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: n.ca.Pool}, ResponseHeaderTimeout: cliTimeout}
		defer rt.CloseIdleConnections()
		repo, err := client.NewFileCachedRepository(n.trustDir, data.GUN(gun), n.backend, n.authed(rt), constPass, trustpinning.TrustPinConfig{})
		if err != nil {
			t.Fatalf("rotate the root key of %s: %v", gun, err)
		}
		if err := repo.RotateKey(data.CanonicalRootRole, false, nil); err != nil {
			t.Fatalf("rotate the root key of %s: %v\n%s", gun, err, n.serverLog(true))
		}
	}()
	id := n.rootCertID(t, gun)
	t.Logf("rotate the root key of %s with the notary library (%s)", gun, time.Since(start).Round(time.Millisecond))
	return id
}

// RotateTargetsKey rotates gun's targets key with the notary CLI: a new
// root version lists the new key, signed by the current root key, and
// targets is signed again with the new key. A client whose cached root
// still names the old targets key must fetch the new root to verify.
func (n *Notary) RotateTargetsKey(t testing.TB, gun string) {
	t.Helper()
	n.run(t, gun, "key", "rotate", gun, "targets")
}
