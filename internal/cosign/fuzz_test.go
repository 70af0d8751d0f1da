package cosign

import (
	"encoding/base64"
	"fmt"
	"testing"

	"github.com/opencontainers/go-digest"
)

// Seeds are what cosign and registries write, as the tests here push them.
var (
	seedSubject  = digest.FromString("image")
	seedReferrer = fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.dev.sigstore.bundle.v0.3+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","digest":%q,"size":1543}],"subject":{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":%q,"size":428},"annotations":{"dev.sigstore.bundle.content":"dsse-envelope","dev.sigstore.bundle.predicateType":"https://sigstore.dev/cosign/sign/v1"}}`, digest.FromString("bundle"), seedSubject)
	seedSig      = fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":233},"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":%q,"size":250,"annotations":{"dev.cosignproject.cosign/signature":%q}}]}`, digest.FromString("config"), digest.FromString("payload"), base64.StdEncoding.EncodeToString(make([]byte, 71)))
)

func FuzzParseBundleManifest(f *testing.F) {
	f.Add([]byte(seedReferrer))
	f.Add([]byte(seedSig))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseBundleManifest(b)
		if err == nil && (!validDigest(m.Subject) || m.Layer.MediaType != BundleType || !validDigest(m.Layer.Digest)) {
			t.Fatalf("accepted %+v", m)
		}
	})
}

func FuzzParseSigManifest(f *testing.F) {
	f.Add([]byte(seedSig))
	f.Add([]byte(seedReferrer))
	f.Fuzz(func(t *testing.T, b []byte) {
		sigs, err := parseSigManifest(b)
		for _, s := range sigs {
			if err == nil && (len(s.Signature) > maxSignatureBytes || !validDigest(s.Layer.Digest)) {
				t.Fatalf("accepted %+v", s)
			}
		}
	})
}

func FuzzParseSimpleSigning(f *testing.F) {
	f.Add(simpleSigning(seedSubject))
	f.Add([]byte(`{"critical":{"type":"cosign container image signature","image":{"docker-manifest-digest":"sha256:00"}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if d, err := parseSimpleSigning(b); err == nil && !validDigest(d) {
			t.Fatalf("accepted digest %q", d)
		}
	})
}

// FuzzParseBundle runs sigstore-go's bundle parser, and what is checked
// after it, on outside bytes; the seed is a bundle signed here.
func FuzzParseBundle(f *testing.F) {
	k := newKey(f, "ecdsa", "alice")
	f.Add(signBundle(f, k, statement(seedSubject, SignPredicate)))
	f.Add([]byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}`))
	v, err := New(Options{Signers: []Signer{k.signer}, AllowNoTlog: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		bd, err := parseBundle(b)
		if err != nil {
			return
		}
		if name, f := v.verifyBundle(bd, seedSubject); f == nil && name != "alice" {
			t.Fatalf("verified as %q", name)
		}
	})
}
