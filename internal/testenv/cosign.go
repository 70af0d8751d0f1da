package testenv

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
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

// A CosignKey is an ECDSA P-256 cosign key pair made for a test; PubFile is
// its public key as `cosign generate-key-pair` writes cosign.pub.
type CosignKey struct {
	Name    string
	PubFile string
	priv    *ecdsa.PrivateKey
}

// NewCosignKey makes a key for the signer name and writes its public key
// under t's temporary directory.
func NewCosignKey(t testing.TB, signer string) *CosignKey {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := cryptoutils.MarshalPublicKeyToPEM(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), signer+"-cosign.pub")
	if err := os.WriteFile(f, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	return &CosignKey{Name: signer, PubFile: f, priv: priv}
}

// cosignKeypair is k as sigstore-go's sign.Keypair, hinted as sigstore-go
// hints its own keys.
type cosignKeypair struct{ k *CosignKey }

var _ sign.Keypair = cosignKeypair{}

func (p cosignKeypair) GetHashAlgorithm() protocommon.HashAlgorithm {
	return protocommon.HashAlgorithm_SHA2_256
}
func (p cosignKeypair) GetSigningAlgorithm() protocommon.PublicKeyDetails {
	return protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256
}
func (p cosignKeypair) GetHint() []byte {
	der, _ := x509.MarshalPKIXPublicKey(p.k.priv.Public())
	sum := sha256.Sum256(der)
	return []byte(base64.StdEncoding.EncodeToString(sum[:]))
}
func (p cosignKeypair) GetKeyAlgorithm() string        { return "ECDSA" }
func (p cosignKeypair) GetPublicKey() crypto.PublicKey { return p.k.priv.Public() }
func (p cosignKeypair) GetPublicKeyPem() (string, error) {
	b, err := cryptoutils.MarshalPublicKeyToPEM(p.k.priv.Public())
	return string(b), err
}
func (p cosignKeypair) SignData(_ context.Context, data []byte) ([]byte, []byte, error) {
	sum := sha256.Sum256(data)
	sig, err := p.k.priv.Sign(rand.Reader, sum[:], crypto.SHA256)
	return sig, sum[:], err
}

// Bundle is what cosign v3 signs for subject (offline, --tlog-upload=false):
// a Sigstore bundle v0.3 holding a DSSE envelope of the in-toto statement
// of predicate type https://sigstore.dev/cosign/sign/v1 naming subject.
func (k *CosignKey) Bundle(t testing.TB, repo string, subject digest.Digest) []byte {
	t.Helper()
	stmt := cosignStatement(repo, subject)
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
