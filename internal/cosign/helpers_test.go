package cosign

import (
	"bytes"
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
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

// key is a signing key made for a test, read back from PEM as a signer's
// key would be, with the Signer a rule would pin.
type key struct {
	priv   crypto.Signer
	signer Signer
	alg    protocommon.PublicKeyDetails
}

// newKey makes a key of kind ecdsa, ed25519 or rsa, writes it to PEM and
// reads it back: the private key as PKCS#8, the public key as
// `cosign generate-key-pair` writes cosign.pub.
func newKey(t testing.TB, kind, signerName string) key {
	t.Helper()
	var priv crypto.Signer
	var alg protocommon.PublicKeyDetails
	var err error
	switch kind {
	case "ecdsa":
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		alg = protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256
	case "ed25519":
		_, priv, err = ed25519.GenerateKey(rand.Reader)
		alg = protocommon.PublicKeyDetails_PKIX_ED25519
	case "rsa":
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
		alg = protocommon.PublicKeyDetails_PKIX_RSA_PKCS1V15_2048_SHA256
	default:
		t.Fatalf("key kind %q", kind)
	}
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	back, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := cryptoutils.MarshalPublicKeyToPEM(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ParseSigner(signerName, pub)
	if err != nil {
		t.Fatal(err)
	}
	return key{priv: back.(crypto.Signer), signer: s, alg: alg}
}

// keypair is k as sigstore-go's sign.Keypair, hinted as sigstore-go hints
// its own keys (base64 of the SHA-256 of the public key's DER).
type keypair struct{ key }

var _ sign.Keypair = keypair{}

func (k keypair) GetHashAlgorithm() protocommon.HashAlgorithm {
	return protocommon.HashAlgorithm_SHA2_256
}
func (k keypair) GetSigningAlgorithm() protocommon.PublicKeyDetails { return k.alg }
func (k keypair) GetHint() []byte {
	der, _ := x509.MarshalPKIXPublicKey(k.priv.Public())
	sum := sha256.Sum256(der)
	return []byte(base64.StdEncoding.EncodeToString(sum[:]))
}
func (k keypair) GetKeyAlgorithm() string        { return fmt.Sprintf("%T", k.priv.Public()) }
func (k keypair) GetPublicKey() crypto.PublicKey { return k.priv.Public() }
func (k keypair) GetPublicKeyPem() (string, error) {
	b, err := cryptoutils.MarshalPublicKeyToPEM(k.priv.Public())
	return string(b), err
}
func (k keypair) SignData(_ context.Context, data []byte) ([]byte, []byte, error) {
	if _, ok := k.priv.(ed25519.PrivateKey); ok {
		sig, err := k.priv.Sign(rand.Reader, data, crypto.Hash(0))
		return sig, data, err
	}
	sum := sha256.Sum256(data)
	sig, err := k.priv.Sign(rand.Reader, sum[:], crypto.SHA256)
	return sig, sum[:], err
}

// statement is the in-toto statement cosign v3 signs for an image.
func statement(subject digest.Digest, predicateType string) []byte {
	b, _ := json.Marshal(map[string]any{
		"_type":         "https://in-toto.io/Statement/v1",
		"subject":       []any{map[string]any{"name": "registry.test/library/app", "digest": map[string]string{"sha256": subject.Encoded()}}},
		"predicateType": predicateType,
		"predicate":     map[string]any{},
	})
	return b
}

// signBundle signs stmt with k, as cosign v3 does offline
// (--tlog-upload=false): a bundle v0.3 holding a DSSE envelope, no tlog
// entry.
func signBundle(t testing.TB, k key, stmt []byte) []byte {
	t.Helper()
	pb, err := sign.Bundle(&sign.DSSEData{Data: stmt, PayloadType: "application/vnd.in-toto+json"}, keypair{k}, sign.BundleOptions{Context: t.Context()})
	if err != nil {
		t.Fatal(err)
	}
	b, err := protojson.Marshal(pb)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// upstream is a testenv registry and one repository on it.
type upstream struct {
	reg  *testenv.Registry
	repo name.Repository
}

func newUpstream(t testing.TB) *upstream {
	reg := testenv.NewRegistry(t)
	repo, err := name.NewRepository(reg.Host()+"/library/app", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return &upstream{reg: reg, repo: repo}
}

func (u *upstream) Upstream() Upstream {
	return Upstream{Repo: u.repo, Client: http.DefaultClient}
}

// image pushes a fresh image under tag and returns its descriptor.
func (u *upstream) image(t testing.TB, tag string) ocispec.Descriptor {
	t.Helper()
	img := testenv.Image(t, t.Name()+"/"+tag, 1, 64)
	h := u.reg.Push(t, "library/app", tag, img)
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	mt, _ := img.MediaType()
	return ocispec.Descriptor{MediaType: string(mt), Digest: digest.Digest(h.String()), Size: int64(len(raw))}
}

func (u *upstream) blob(t testing.TB, b []byte, mt string) ocispec.Descriptor {
	t.Helper()
	if err := remote.WriteLayer(u.repo, static.NewLayer(b, types.MediaType(mt)), remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	return ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))}
}

type rawManifest struct {
	b  []byte
	mt string
}

func (r rawManifest) RawManifest() ([]byte, error)        { return r.b, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return types.MediaType(r.mt), nil }

// manifest puts b under ref (a tag, or "" for its digest) and returns its descriptor.
func (u *upstream) manifest(t testing.TB, ref string, v any, mt string) ocispec.Descriptor {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	d := digest.FromBytes(b)
	if ref == "" {
		ref = d.String()
	}
	r, err := name.ParseReference(u.repo.String()+refSep(ref)+ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Put(r, rawManifest{b, mt}, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("put %s: %v", r, err)
	}
	return ocispec.Descriptor{MediaType: mt, Digest: d, Size: int64(len(b))}
}

func refSep(ref string) string {
	if _, err := digest.Parse(ref); err == nil {
		return "@"
	}
	return ":"
}

// emptyConfig is the OCI empty descriptor cosign v3 gives a bundle referrer.
var emptyConfig = []byte("{}")

// attachBundle attaches bundle to subject as cosign v3 does on a registry
// without the referrers API: an OCI manifest of artifactType BundleType
// with subject and the bundle as its one layer. go-containerregistry's
// remote.Put, which cosign writes with, then adds it to the referrers tag
// sha256-<hex> (an OCI index sorted by digest); attachBundle checks it
// did. layerSize, when not 0, is what the manifest claims the layer's size is.
func (u *upstream) attachBundle(t testing.TB, subject ocispec.Descriptor, bundle []byte, predicateType string, layerSize int64) ocispec.Descriptor {
	t.Helper()
	cfg := u.blob(t, emptyConfig, "application/vnd.oci.empty.v1+json")
	layer := u.blob(t, bundle, BundleType)
	if layerSize != 0 {
		layer.Size = layerSize
	}
	ann := map[string]string{predicateAnnotation: predicateType, "dev.sigstore.bundle.content": "dsse-envelope"}
	if predicateType == "" {
		delete(ann, predicateAnnotation)
	}
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: BundleType, Config: cfg,
		Layers: []ocispec.Descriptor{layer}, Subject: &subject, Annotations: ann}
	m.SchemaVersion = 2
	d := u.manifest(t, "", m, ocispec.MediaTypeImageManifest)
	d.ArtifactType, d.Annotations = BundleType, ann
	listed := u.referrers(t, subject.Digest)
	if !slices.ContainsFunc(listed, func(l ocispec.Descriptor) bool { return l.Digest == d.Digest && l.ArtifactType == BundleType }) {
		t.Fatalf("referrers tag of %s does not list %s: %+v", subject.Digest, d.Digest, listed)
	}
	return d
}

// referrers reads the referrers tag index of subject.
func (u *upstream) referrers(t testing.TB, subject digest.Digest) []ocispec.Descriptor {
	t.Helper()
	got, err := remote.Get(u.repo.Tag(tagOf(subject)), remote.WithContext(t.Context()))
	var terr *transport.Error
	if errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound {
		return nil
	} else if err != nil {
		t.Fatal(err)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(got.Manifest, &idx); err != nil {
		t.Fatal(err)
	}
	return idx.Manifests
}

// setReferrers writes the referrers tag index of subject as ds, in that order.
func (u *upstream) setReferrers(t testing.TB, subject digest.Digest, ds ...ocispec.Descriptor) {
	t.Helper()
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: ds}
	idx.SchemaVersion = 2
	u.manifest(t, tagOf(subject), idx, ocispec.MediaTypeImageIndex)
}

// simpleSigning is the payload cosign signs for a legacy signature.
func simpleSigning(d digest.Digest) []byte {
	return fmt.Appendf(nil, `{"critical":{"identity":{"docker-reference":"registry.test/library/app"},"image":{"docker-manifest-digest":%q},"type":"cosign container image signature"},"optional":null}`, d)
}

// attachLegacy writes the legacy tag sha256-<hex>.sig of subject: one
// simple-signing layer claiming claimed, signed by k.
func (u *upstream) attachLegacy(t testing.TB, subject, claimed digest.Digest, k key) {
	t.Helper()
	payload := simpleSigning(claimed)
	s, err := signature.LoadSigner(k.priv, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := s.SignMessage(bytes.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	cfg := u.blob(t, []byte(`{"architecture":"","os":"","rootfs":{"type":"layers","diff_ids":[]},"config":{}}`), ocispec.MediaTypeImageConfig)
	layer := u.blob(t, payload, SimpleSigningType)
	layer.Annotations = map[string]string{SignatureAnnotation: base64.StdEncoding.EncodeToString(sig)}
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: cfg, Layers: []ocispec.Descriptor{layer}}
	m.SchemaVersion = 2
	u.manifest(t, tagOf(subject)+".sig", m, ocispec.MediaTypeImageManifest)
}
