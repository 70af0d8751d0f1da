package referrers

import (
	"fmt"
	"testing"

	"github.com/opencontainers/go-digest"
)

// FuzzParse runs the referrers index parser on outside bytes; the seeds are
// what registries answer and what cosign and Notation write to the
// referrers tag.
func FuzzParse(f *testing.F) {
	f.Add([]byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":712,"annotations":{"dev.sigstore.bundle.content":"dsse-envelope","dev.sigstore.bundle.predicateType":"https://sigstore.dev/cosign/sign/v1"},"artifactType":"application/vnd.dev.sigstore.bundle.v0.3+json"}]}`, digest.FromString("sig"))))
	f.Add([]byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":728,"artifactType":"application/vnd.cncf.notary.signature"}]}`, digest.FromString("notation"))))
	f.Add([]byte(`{"schemaVersion":2,"manifests":[]}`))
	f.Add([]byte(`{"schemaVersion":2,"manifests":[],"layers":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ds, err := Parse(b, 10)
		if err == nil && len(ds) > 10 {
			t.Fatalf("%d entries past the limit", len(ds))
		}
		for _, d := range ds {
			if !ValidDigest(d.Digest) || d.Size < 0 {
				t.Fatalf("kept entry %+v", d)
			}
		}
	})
}
