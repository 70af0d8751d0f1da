package testenv

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/theupdateframework/notary/tuf/utils"
)

// Roles a tag can be signed into.
const (
	Targets  = "targets"          // the repository owner's own targets key
	Releases = "targets/releases" // the delegation docker trust signs into
)

// A Key is a signer's ECDSA P-256 key pair and a self-signed certificate for it (CN = Name),
// each written as PEM: what trustproxy's trust.signers[].public_key may point at.
type Key struct {
	Name          string
	KeyFile       string // SEC1 "EC PRIVATE KEY", as `openssl ecparam -name prime256v1 -genkey -noout` writes
	CertFile      string // x509 certificate, as `notary delegation add` wants
	PublicKeyFile string // PKIX "PUBLIC KEY"
	Private       *ecdsa.PrivateKey
	Cert          *x509.Certificate
	// ID is the key's ID in targets.json delegations: over the certificate's TUF key.
	ID string
	// PublicID is the ID `notary key list` shows: over the public key alone.
	PublicID string
}

// NewKey makes a signer key named name in a fresh folder of t.
func NewKey(t testing.TB, name string) *Key {
	t.Helper()
	dir := t.TempDir()
	priv := newECKey(t)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0), // notary warns about certificates near expiry
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatalf("certificate for key %s: %v", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("certificate for key %s: %v", name, err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		t.Fatalf("public key %s: %v", name, err)
	}
	file := strings.NewReplacer("/", "_", " ", "_").Replace(name)
	k := &Key{
		Name:          name,
		KeyFile:       filepath.Join(dir, file+".key"),
		CertFile:      filepath.Join(dir, file+".crt"),
		PublicKeyFile: filepath.Join(dir, file+".pub"),
		Private:       priv,
		Cert:          cert,
	}
	writeFile(t, k.KeyFile, pemBlock("EC PRIVATE KEY", marshalECKey(t, priv)))
	writeFile(t, k.CertFile, pemBlock("CERTIFICATE", der))
	writeFile(t, k.PublicKeyFile, pemBlock("PUBLIC KEY", pub))

	tufKey := utils.CertToKey(cert)
	k.ID = tufKey.ID()
	if k.PublicID, err = utils.CanonicalKeyID(tufKey); err != nil {
		t.Fatalf("key ID of %s: %v", name, err)
	}
	return k
}

// Init creates and publishes gun with the notary CLI: a root key (one per Notary, shared by
// its GUNs), a targets key, a server-managed snapshot key as docker makes it. It returns the
// root certificate ID as root.json's root role lists it, which trust pinning
// (trustpinning.TrustPinConfig.Certs[gun]) expects; it differs per GUN.
func (n *Notary) Init(t testing.TB, gun string) (rootCertID string) {
	t.Helper()
	n.run(t, gun, "init", gun, "--publish")
	n.run(t, gun, "key", "rotate", gun, "snapshot", "--server-managed")
	return n.rootCertID(t, gun)
}

// rootCertID is the one root certificate ID gun's root.json lists.
func (n *Notary) rootCertID(t testing.TB, gun string) string {
	t.Helper()
	var root struct {
		Signed struct {
			Roles map[string]struct {
				KeyIDs []string `json:"keyids"`
			} `json:"roles"`
		} `json:"signed"`
	}
	if err := json.Unmarshal(n.fetchMeta(t, gun, "root.json"), &root); err != nil {
		t.Fatalf("root.json of %s: %v", gun, err)
	}
	ids := root.Signed.Roles["root"].KeyIDs
	if len(ids) != 1 {
		t.Fatalf("root.json of %s lists root keys %v, want one", gun, ids)
	}
	return ids[0]
}

// AddDelegation adds role (such as Releases) to gun with keys as its signers, all paths,
// imports the keys' private halves into the CLI's trust folder, and publishes.
func (n *Notary) AddDelegation(t testing.TB, gun, role string, keys ...*Key) {
	t.Helper()
	if len(keys) == 0 {
		t.Fatalf("delegation %s of %s: no keys", role, gun)
	}
	args := []string{"delegation", "add", gun, role}
	for _, k := range keys {
		args = append(args, k.CertFile)
	}
	n.run(t, gun, append(args, "--all-paths")...)
	for _, k := range keys {
		n.importKey(t, gun, k)
	}
	n.publish(t, gun)
}

// ImportKey puts k's private key in the CLI's trust folder, so that it can sign for the
// delegations that list it; AddDelegation does this itself.
func (n *Notary) ImportKey(t testing.TB, k *Key) {
	t.Helper()
	n.importKey(t, "", k)
}

func (n *Notary) importKey(t testing.TB, gun string, k *Key) {
	t.Helper()
	n.mu.Lock()
	done := n.imported[k.KeyFile]
	n.imported[k.KeyFile] = true
	n.mu.Unlock()
	if !done {
		n.run(t, gun, "key", "import", k.KeyFile, "--role", k.Name)
	}
}

// Sign publishes tag -> (dgst, size) in gun's role: Targets, Releases or another delegation
// whose key was imported. size is the manifest's length in bytes.
func (n *Notary) Sign(t testing.TB, gun, tag string, dgst v1.Hash, size int64, role string) {
	t.Helper()
	if dgst.Algorithm != "sha256" {
		t.Fatalf("sign %s:%s: digest %s is not sha256", gun, tag, dgst)
	}
	args := []string{"addhash", gun, tag, strconv.FormatInt(size, 10), "--sha256", dgst.Hex}
	if role != "" && role != Targets {
		args = append(args, "--roles", role)
	}
	n.run(t, gun, args...)
	n.publish(t, gun)
}

// SignImage signs tag in gun's role as m's manifest (a v1.Image or v1.ImageIndex) and
// returns the manifest digest it signed.
func (n *Notary) SignImage(t testing.TB, gun, tag string, m partial.WithRawManifest, role string) v1.Hash {
	t.Helper()
	raw, err := m.RawManifest()
	if err != nil {
		t.Fatalf("sign %s:%s: %v", gun, tag, err)
	}
	sum := sha256.Sum256(raw)
	dgst := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	n.Sign(t, gun, tag, dgst, int64(len(raw)), role)
	return dgst
}

// Unsign removes tag from gun's role and publishes.
func (n *Notary) Unsign(t testing.TB, gun, tag, role string) {
	t.Helper()
	args := []string{"remove", gun, tag}
	if role != "" && role != Targets {
		args = append(args, "--roles", role)
	}
	n.run(t, gun, args...)
	n.publish(t, gun)
}

func (n *Notary) publish(t testing.TB, gun string) {
	t.Helper()
	n.run(t, gun, "publish", gun)
}

// run runs one notary CLI call and fails t with its output if it fails. A change staged
// for gun that cannot be published would block every later publish of gun, so on failure
// the staged changes are dropped first (`notary reset GUN --all`).
func (n *Notary) run(t testing.TB, gun string, args ...string) string {
	t.Helper()
	n.cli.Lock()
	defer n.cli.Unlock()
	start := time.Now()
	out, err := n.notary(t.Context(), args...)
	if err == nil {
		t.Logf("notary %s (%s)", strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
		return out
	}
	msg := fmt.Sprintf("notary %s: %v\n%s", strings.Join(args, " "), err, out)
	if gun != "" {
		resetOut, resetErr := n.notary(t.Context(), "reset", gun, "--all")
		if resetErr != nil {
			msg += fmt.Sprintf("\nnotary reset %s --all: %v\n%s", gun, resetErr, resetOut)
		}
	}
	t.Fatal(msg + "\n" + n.serverLog(true))
	return ""
}

// KeyList is what `notary key list` prints for the CLI's trust folder:
// each private key it holds, by the ID over the bare public key.
func (n *Notary) KeyList(t testing.TB) string {
	t.Helper()
	return n.run(t, "", "key", "list")
}
