package testenv

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"google.golang.org/protobuf/encoding/protojson"
)

// What cosign v3 writes (internal/cosign's parse.go names the same; testenv
// cannot import it, whose tests import testenv).
const (
	cosignBundleType    = "application/vnd.dev.sigstore.bundle.v0.3+json"
	cosignSignPredicate = "https://sigstore.dev/cosign/sign/v1"
	cosignPredicateAnn  = "dev.sigstore.bundle.predicateType"
)

// A CosignKey is a cosign key pair made for a test; PubFile is its public
// key as `cosign generate-key-pair` writes cosign.pub.
type CosignKey struct {
	Name    string
	PubFile string
	priv    crypto.Signer
	alg     protocommon.PublicKeyDetails
}

// NewCosignKey makes an ECDSA P-256 key for the signer name and writes its
// public key under t's temporary directory.
func NewCosignKey(t testing.TB, signer string) *CosignKey {
	t.Helper()
	return NewCosignKeyOf(t, signer, "ecdsa")
}

// NewCosignKeyOf is NewCosignKey with a key of kind ecdsa (P-256), ed25519
// or rsa (2048 bits): the kinds cosign signs with.
func NewCosignKeyOf(t testing.TB, signer, kind string) *CosignKey {
	t.Helper()
	k := &CosignKey{Name: signer}
	var err error
	switch kind {
	case "ecdsa":
		k.priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		k.alg = protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256
	case "ed25519":
		_, k.priv, err = ed25519.GenerateKey(rand.Reader)
		k.alg = protocommon.PublicKeyDetails_PKIX_ED25519
	case "rsa":
		k.priv, err = rsa.GenerateKey(rand.Reader, 2048)
		k.alg = protocommon.PublicKeyDetails_PKIX_RSA_PKCS1V15_2048_SHA256
	default:
		t.Fatalf("cosign key kind %q: want ecdsa, ed25519 or rsa", kind)
	}
	if err != nil {
		t.Fatal(err)
	}
	pub, err := cryptoutils.MarshalPublicKeyToPEM(k.priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	k.PubFile = filepath.Join(t.TempDir(), signer+"-cosign.pub")
	if err := os.WriteFile(k.PubFile, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	return k
}

// Private is k's private key, for a test that signs what cosign signed
// before bundles (simple-signing payloads).
func (k *CosignKey) Private() crypto.Signer { return k.priv }

// cosignKeypair is k as sigstore-go's sign.Keypair, hinted as sigstore-go
// hints its own keys (base64 of the SHA-256 of the public key's DER).
type cosignKeypair struct{ k *CosignKey }

var _ sign.Keypair = cosignKeypair{}

func (p cosignKeypair) GetHashAlgorithm() protocommon.HashAlgorithm {
	return protocommon.HashAlgorithm_SHA2_256
}
func (p cosignKeypair) GetSigningAlgorithm() protocommon.PublicKeyDetails { return p.k.alg }
func (p cosignKeypair) GetHint() []byte {
	der, _ := x509.MarshalPKIXPublicKey(p.k.priv.Public())
	sum := sha256.Sum256(der)
	return []byte(base64.StdEncoding.EncodeToString(sum[:]))
}
func (p cosignKeypair) GetKeyAlgorithm() string        { return fmt.Sprintf("%T", p.k.priv.Public()) }
func (p cosignKeypair) GetPublicKey() crypto.PublicKey { return p.k.priv.Public() }
func (p cosignKeypair) GetPublicKeyPem() (string, error) {
	b, err := cryptoutils.MarshalPublicKeyToPEM(p.k.priv.Public())
	return string(b), err
}
func (p cosignKeypair) SignData(_ context.Context, data []byte) ([]byte, []byte, error) {
	if _, ok := p.k.priv.(ed25519.PrivateKey); ok {
		sig, err := p.k.priv.Sign(rand.Reader, data, crypto.Hash(0))
		return sig, data, err
	}
	sum := sha256.Sum256(data)
	sig, err := p.k.priv.Sign(rand.Reader, sum[:], crypto.SHA256)
	return sig, sum[:], err
}

// Bundle is what cosign v3 signs for subject (offline, --tlog-upload=false):
// a Sigstore bundle v0.3 holding a DSSE envelope of the in-toto statement
// of predicate type https://sigstore.dev/cosign/sign/v1 naming subject.
func (k *CosignKey) Bundle(t testing.TB, repo string, subject digest.Digest) []byte {
	t.Helper()
	return k.SignStatement(t, CosignStatement(repo, subject, cosignSignPredicate))
}

// SignStatement is a bundle of stmt as Bundle makes one: for a test that
// signs a statement of its own (an attestation, another subject).
func (k *CosignKey) SignStatement(t testing.TB, stmt []byte) []byte {
	t.Helper()
	pb, err := sign.Bundle(&sign.DSSEData{Data: stmt, PayloadType: "application/vnd.in-toto+json"}, cosignKeypair{k}, sign.BundleOptions{Context: t.Context()})
	if err != nil {
		t.Fatal(err)
	}
	b, err := protojson.Marshal(pb)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// CosignSign signs the manifest dgst of repo at r with k and attaches the
// signature (CosignAttach).
func (r *Registry) CosignSign(t testing.TB, repo string, dgst digest.Digest, k *CosignKey) {
	t.Helper()
	r.CosignAttach(t, repo, dgst, k.Bundle(t, r.Host()+"/"+repo, dgst))
}

// CosignAttach attaches bundle to the manifest dgst of repo at r as cosign
// v3 does on a registry without the referrers API: an OCI manifest of
// artifactType the bundle type, subject dgst, the bundle its one layer;
// go-containerregistry's remote.Put adds it to the referrers tag
// sha256-<hex>.
func (r *Registry) CosignAttach(t testing.TB, repo string, dgst digest.Digest, bundle []byte) {
	t.Helper()
	ctx := t.Context()
	ref, err := name.NewRepository(r.Host()+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Head(ref.Digest(dgst.String()), remote.WithContext(ctx))
	if err != nil {
		t.Fatalf("head %s@%s: %v", repo, dgst, err)
	}
	layer := func(b []byte, mt string) ocispec.Descriptor {
		if err := remote.WriteLayer(ref, static.NewLayer(b, types.MediaType(mt)), remote.WithContext(ctx)); err != nil {
			t.Fatal(err)
		}
		return ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))}
	}
	cfg := layer([]byte("{}"), "application/vnd.oci.empty.v1+json")
	bl := layer(bundle, cosignBundleType)
	subject := ocispec.Descriptor{MediaType: string(desc.MediaType), Digest: dgst, Size: desc.Size}
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: cosignBundleType, Config: cfg,
		Layers: []ocispec.Descriptor{bl}, Subject: &subject,
		Annotations: map[string]string{cosignPredicateAnn: cosignSignPredicate, "dev.sigstore.bundle.content": "dsse-envelope"}}
	m.SchemaVersion = 2
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Put(ref.Digest(digest.FromBytes(b).String()), rawManifest{b, ocispec.MediaTypeImageManifest}, remote.WithContext(ctx)); err != nil {
		t.Fatalf("attach cosign signature to %s@%s: %v", repo, dgst, err)
	}
}

type rawManifest struct {
	b  []byte
	mt string
}

func (r rawManifest) RawManifest() ([]byte, error)        { return r.b, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return types.MediaType(r.mt), nil }

// String names k for messages.
func (k *CosignKey) String() string { return fmt.Sprintf("cosign key of %s", k.Name) }
