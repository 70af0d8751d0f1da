package notation

import (
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/internal/referrers"
	"github.com/trustproxy/trustproxy/internal/testenv"
)

func FuzzParseSigManifest(f *testing.F) {
	subject := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("image"), Size: 428}
	f.Add(sigManifestBytes(subject, ocispec.Descriptor{MediaType: JWS, Digest: digest.FromString("env"), Size: 2048}))
	f.Add(sigManifestBytes(subject, ocispec.Descriptor{MediaType: COSE, Digest: digest.FromString("env"), Size: 1 << 30}))
	f.Add([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.cncf.notary.signature"},"layers":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseSigManifest(b)
		if err == nil && (!referrers.ValidDigest(m.Subject.Digest) || !referrers.ValidDigest(m.Envelope.Digest) || m.Envelope.Size < 0 ||
			(m.Envelope.MediaType != JWS && m.Envelope.MediaType != COSE)) {
			t.Fatalf("accepted %+v", m)
		}
	})
}

// FuzzReadEnvelope runs notation-core-go's envelope parsers, and the chain
// checks before them, on outside bytes; the seeds are envelopes signed here.
func FuzzReadEnvelope(f *testing.F) {
	ca := testenv.NewNotationCA(f, "acme")
	k := ca.Key(f, "release", 0)
	subject := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("image"), Size: 428}
	f.Add(k.Envelope(f, subject, JWS), false)
	f.Add(k.Envelope(f, subject, COSE), true)
	f.Add([]byte(`{"payload":"","protected":"","header":{"x5c":[]},"signature":""}`), false)
	f.Fuzz(func(t *testing.T, b []byte, cose bool) {
		mt := JWS
		if cose {
			mt = COSE
		}
		e, err := readEnvelope(mt, b, 4)
		if err == nil && (len(e.Chain) == 0 || len(e.Chain) > 4 || !referrers.ValidDigest(e.Target.Digest)) {
			t.Fatalf("accepted %+v", e)
		}
	})
}
