package testenv

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	notationgo "github.com/notaryproject/notation-go"
	"github.com/notaryproject/notation-go/signer"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// What Notation writes (internal/notation names the same; testenv cannot
// import it, whose tests import testenv).
const (
	notationArtifactType = "application/vnd.cncf.notary.signature"
	// NotationJWS and NotationCOSE are the envelope media types.
	NotationJWS  = "application/jose+json"
	NotationCOSE = "application/cose"
)

// A NotationCA is a self-signed root CA made for a test, as an operator's
// Notation trust store holds it: PEMFile is its certificate.
type NotationCA struct {
	Name    string
	PEMFile string
	Cert    *x509.Certificate
	key     *ecdsa.PrivateKey
}

// A NotationKey is a code-signing leaf certificate under a NotationCA and
// its key: what `notation sign` signs with.
type NotationKey struct {
	CA    *NotationCA
	Leaf  *x509.Certificate
	Chain []*x509.Certificate // leaf first, the root last
	key   *ecdsa.PrivateKey
}

func newCert(t testing.TB, tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	tmpl.SerialNumber = serial(t)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// NewNotationCA makes a root CA for the signer name and writes its
// certificate (PEM) under t's temporary directory.
func NewNotationCA(t testing.TB, signer string) *NotationCA {
	t.Helper()
	k := newECKey(t)
	tmpl := &x509.Certificate{
		Subject:   pkix.Name{CommonName: signer + " root CA", Organization: []string{signer}, Province: []string{"WA"}, Country: []string{"US"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	c := newCert(t, tmpl, tmpl, &k.PublicKey, k)
	f := filepath.Join(t.TempDir(), signer+"-notation-ca.pem")
	writeFile(t, f, pemBlock("CERTIFICATE", c.Raw))
	return &NotationCA{Name: signer, PEMFile: f, Cert: c, key: k}
}

// Key issues a code-signing leaf under ca for the common name cn (subject
// C=US, ST=WA, O=<ca's name>, CN=cn), valid from an hour ago for the
// lifetime given (a day when 0).
func (ca *NotationCA) Key(t testing.TB, cn string, lifetime time.Duration) *NotationKey {
	t.Helper()
	return ca.issue(t, cn, lifetime, "")
}

// RevocableKey is Key (a day's lifetime) with crlURL as the leaf's CRL
// distribution point: revocation checks fetch ca.CRL from there.
func (ca *NotationCA) RevocableKey(t testing.TB, cn, crlURL string) *NotationKey {
	t.Helper()
	return ca.issue(t, cn, 0, crlURL)
}

// CRL is a CRL of ca, valid for an hour, that revokes the leaves of
// revoked (DER, as a CRL distribution point serves it).
func (ca *NotationCA) CRL(t testing.TB, revoked ...*NotationKey) []byte {
	t.Helper()
	tmpl := &x509.RevocationList{Number: serial(t), ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(time.Hour)}
	for _, k := range revoked {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
			x509.RevocationListEntry{SerialNumber: k.Leaf.SerialNumber, RevocationTime: time.Now().Add(-time.Minute)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func (ca *NotationCA) issue(t testing.TB, cn string, lifetime time.Duration, crlURL string) *NotationKey {
	t.Helper()
	if lifetime == 0 {
		lifetime = 24 * time.Hour
	}
	k := newECKey(t)
	tmpl := &x509.Certificate{
		Subject:   pkix.Name{CommonName: cn, Organization: []string{ca.Name}, Province: []string{"WA"}, Country: []string{"US"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(lifetime),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		BasicConstraintsValid: true,
	}
	if crlURL != "" {
		tmpl.CRLDistributionPoints = []string{crlURL}
	}
	leaf := newCert(t, tmpl, ca.Cert, &k.PublicKey, ca.key)
	return &NotationKey{CA: ca, Leaf: leaf, Chain: []*x509.Certificate{leaf, ca.Cert}, key: k}
}

// Identity is k's leaf subject as a Notation trusted identity.
func (k *NotationKey) Identity() string {
	return fmt.Sprintf("x509.subject:CN=%s,O=%s,ST=WA,C=US", k.Leaf.Subject.CommonName, k.CA.Name)
}

// Envelope signs subject with k as `notation sign` does, in an envelope of
// mediaType (NotationJWS or NotationCOSE), with notation-go's signer.
func (k *NotationKey) Envelope(t testing.TB, subject ocispec.Descriptor, mediaType string) []byte {
	t.Helper()
	s, err := signer.NewGenericSigner(k.key, k.Chain)
	if err != nil {
		t.Fatal(err)
	}
	env, _, err := s.Sign(t.Context(), subject, notationgo.SignerSignOptions{SignatureMediaType: mediaType})
	if err != nil {
		t.Fatalf("notation sign %s: %v", subject.Digest, err)
	}
	return env
}

// NotationSign signs the manifest dgst of repo at r with k (a JWS
// envelope) and attaches it as Notation does (NotationAttach).
func (r *Registry) NotationSign(t testing.TB, repo string, dgst digest.Digest, k *NotationKey) digest.Digest {
	t.Helper()
	subject := r.Describe(t, repo, dgst)
	return r.NotationAttach(t, repo, subject, k.Envelope(t, subject, NotationJWS), NotationJWS)
}

// Describe is the descriptor of the manifest dgst of repo at r.
func (r *Registry) Describe(t testing.TB, repo string, dgst digest.Digest) ocispec.Descriptor {
	t.Helper()
	ref, err := name.NewRepository(r.Host()+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Head(ref.Digest(dgst.String()), remote.WithContext(t.Context()))
	if err != nil {
		t.Fatalf("head %s@%s: %v", repo, dgst, err)
	}
	return ocispec.Descriptor{MediaType: string(desc.MediaType), Digest: dgst, Size: desc.Size}
}

// NotationAttach attaches envelope (of mediaType) to subject in repo at r
// as Notation does on a registry without the referrers API: an OCI
// manifest of artifactType application/vnd.cncf.notary.signature, subject
// the image, the envelope its one layer; go-containerregistry's
// remote.Put adds it to the referrers tag sha256-<hex>. It returns the
// signature manifest's digest.
func (r *Registry) NotationAttach(t testing.TB, repo string, subject ocispec.Descriptor, envelope []byte, mediaType string) digest.Digest {
	t.Helper()
	ctx := t.Context()
	ref, err := name.NewRepository(r.Host()+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	layer := func(b []byte, mt string) ocispec.Descriptor {
		if err := remote.WriteLayer(ref, static.NewLayer(b, types.MediaType(mt)), remote.WithContext(ctx)); err != nil {
			t.Fatal(err)
		}
		return ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))}
	}
	cfg := layer([]byte("{}"), "application/vnd.oci.empty.v1+json")
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: notationArtifactType, Config: cfg,
		Layers: []ocispec.Descriptor{layer(envelope, mediaType)}, Subject: &subject,
		Annotations: map[string]string{"io.cncf.notary.x509chain.thumbprint#S256": "[]"}}
	m.SchemaVersion = 2
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	d := digest.FromBytes(b)
	if err := remote.Put(ref.Digest(d.String()), rawManifest{b, ocispec.MediaTypeImageManifest}, remote.WithContext(ctx)); err != nil {
		t.Fatalf("attach Notation signature to %s@%s: %v", repo, subject.Digest, err)
	}
	return d
}
