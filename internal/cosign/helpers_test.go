package cosign

import (
	"bytes"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

// key is a cosign key made for a test (testenv.CosignKey), with the Signer
// a rule would pin, read from its cosign.pub as config reads it.
type key struct {
	*testenv.CosignKey
	signer Signer
}

// newKey makes a key of kind ecdsa, ed25519 or rsa for signerName.
func newKey(t testing.TB, kind, signerName string) key {
	t.Helper()
	k := testenv.NewCosignKeyOf(t, signerName, kind)
	pub, err := os.ReadFile(k.PubFile)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ParseSigner(signerName, pub)
	if err != nil {
		t.Fatal(err)
	}
	return key{CosignKey: k, signer: s}
}

// statement is the in-toto statement cosign v3 signs for an image.
func statement(subject digest.Digest, predicateType string) []byte {
	return testenv.CosignStatement("registry.test/library/app", subject, predicateType)
}

// signBundle signs stmt with k, as cosign v3 does offline
// (--tlog-upload=false): a bundle v0.3 holding a DSSE envelope, no tlog
// entry.
func signBundle(t testing.TB, k key, stmt []byte) []byte {
	t.Helper()
	return k.SignStatement(t, stmt)
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
	s, err := signature.LoadSigner(k.Private(), crypto.SHA256)
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
