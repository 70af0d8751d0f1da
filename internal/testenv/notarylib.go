package testenv

import (
	"crypto/tls"
	"encoding/hex"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/theupdateframework/notary"
	"github.com/theupdateframework/notary/client"
	"github.com/theupdateframework/notary/client/changelist"
	"github.com/theupdateframework/notary/cryptoservice"
	"github.com/theupdateframework/notary/storage"
	"github.com/theupdateframework/notary/trustmanager"
	"github.com/theupdateframework/notary/trustpinning"
	"github.com/theupdateframework/notary/tuf/data"
	"github.com/theupdateframework/notary/tuf/utils"
)

// Target is a signed tag's manifest digest and length.
type Target struct {
	Digest v1.Hash
	Size   int64
}

// libSigners holds each Notary's *libSigner. It lives here rather than in Notary so that
// Publish adds no fields to it.
var libSigners sync.Map

// libSigner is what every Publish on one Notary shares.
type libSigner struct {
	mu     sync.Mutex
	roots  trustmanager.KeyStore // the root key, in <Notary dir>/notarylib/private
	rootID string
	rt     http.RoundTripper // straight to notary-server, with a token if it wants one
}

// signer is n's libSigner; the first call makes its root key.
func (n *Notary) signer(t testing.TB) *libSigner {
	t.Helper()
	v, _ := libSigners.LoadOrStore(n, &libSigner{})
	s := v.(*libSigner)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.roots != nil {
		return s
	}
	ks, err := trustmanager.NewKeyFileStore(filepath.Join(n.dir, "notarylib"), constPass)
	if err != nil {
		t.Fatalf("notary library trust dir: %v", err)
	}
	root, err := cryptoservice.NewCryptoService(ks).Create(data.CanonicalRootRole, "", data.ECDSAKey)
	if err != nil {
		t.Fatalf("notary library root key: %v", err)
	}
	s.roots, s.rootID = ks, root.ID()
	s.rt = n.authed(&http.Transport{
		TLSClientConfig:       &tls.Config{RootCAs: n.ca.Pool},
		MaxIdleConnsPerHost:   16,
		ResponseHeaderTimeout: cliTimeout, // the library's requests have no deadline
	})
	return s
}

// constPass unlocks every key the library stores.
func constPass(string, string, bool, int) (string, bool, error) { return passphrase, false, nil }

// Publish creates gun on n's notary-server with the notary client library, as docker trust
// does it: a root key shared by every GUN Publish creates on n, a targets key, the snapshot
// key managed by the server; a Releases delegation (targets/releases) held by key, all paths;
// each tag of targets signed into it; one publish. It returns the root certificate ID that
// root.json's root role lists (what trust.pinning.certs[gun] pins), as Init does.
// Safe for concurrent use (its calls to the server take turns with each other and with
// CLI calls); far faster than the CLI. gun must not exist yet.
func (n *Notary) Publish(t testing.TB, gun string, key *Key, targets map[string]Target) (rootCertID string) {
	t.Helper()
	start := time.Now()
	s := n.signer(t)

	// Keys of this GUN (targets, delegation) stay in memory; the root key is found in the
	// shared store, which is only read from now on.
	cs := cryptoservice.NewCryptoService(trustmanager.NewKeyMemoryStore(constPass), s.roots)
	remote, err := storage.NewNotaryServerStore(n.backend, data.GUN(gun), s.rt)
	if err != nil {
		t.Fatalf("publish %s: remote store: %v", gun, err)
	}
	repo, err := client.NewRepository(data.GUN(gun), n.backend, remote, storage.NewMemoryStore(nil),
		trustpinning.TrustPinConfig{}, cs, changelist.NewMemChangelist())
	if err != nil {
		t.Fatalf("publish %s: repository: %v", gun, err)
	}

	releases := data.RoleName(Releases)
	priv, err := utils.ECDSAToPrivateKey(key.Private)
	if err != nil {
		t.Fatalf("publish %s: key %s: %v", gun, key.Name, err)
	}
	if err := cs.AddKey(releases, data.GUN(gun), priv); err != nil {
		t.Fatalf("publish %s: add key %s: %v", gun, key.Name, err)
	}
	if err := repo.AddDelegation(releases, []data.PublicKey{utils.CertToKey(key.Cert)}, []string{""}); err != nil {
		t.Fatalf("publish %s: delegation %s: %v", gun, releases, err)
	}
	for tag, tgt := range targets {
		raw, err := hex.DecodeString(tgt.Digest.Hex)
		if tgt.Digest.Algorithm != "sha256" || err != nil || len(raw) != 32 {
			t.Fatalf("publish %s:%s: digest %s is not sha256", gun, tag, tgt.Digest)
		}
		ct := &client.Target{Name: tag, Hashes: data.Hashes{notary.SHA256: raw}, Length: tgt.Size}
		if err := repo.AddTarget(ct, releases); err != nil {
			t.Fatalf("publish %s:%s: add target: %v", gun, tag, err)
		}
	}
	n.serverWrite(t, gun, repo, s.rootID)
	id := n.rootCertID(t, gun)
	t.Logf("publish %s with the notary library, %d tags (%s)", gun, len(targets), time.Since(start).Round(time.Millisecond))
	return id
}

// serverWrite initializes repo (which asks notary-server for new timestamp and snapshot
// keys) and publishes it (which has the server sign). The server's local signer keeps its
// keys in a map without a lock, and a key made while another request signs kills it
// ("concurrent map read and map write"): so this holds n.cli, as notary CLI calls do.
func (n *Notary) serverWrite(t testing.TB, gun string, repo client.Repository, rootID string) {
	t.Helper()
	n.cli.Lock()
	defer n.cli.Unlock()
	if err := repo.Initialize([]string{rootID}, data.CanonicalSnapshotRole); err != nil {
		t.Fatalf("publish %s: initialize: %v\n%s", gun, err, n.serverLog(true))
	}
	if err := repo.Publish(); err != nil {
		t.Fatalf("publish %s: %v\n%s", gun, err, n.serverLog(true))
	}
}
