package referrers

import (
	"fmt"
	"testing"

	"github.com/opencontainers/go-digest"
)

// seedIndex is a referrers index as a registry answers it for a cosign v3
// signature.
var seedIndex = fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":712,"annotations":{"dev.sigstore.bundle.content":"dsse-envelope","dev.sigstore.bundle.predicateType":"https://sigstore.dev/cosign/sign/v1"},"artifactType":"application/vnd.dev.sigstore.bundle.v0.3+json"}]}`, digest.FromString("sig"))

func FuzzParse(f *testing.F) {
	f.Add([]byte(seedIndex))
	f.Add([]byte(`{"schemaVersion":2,"manifests":[]}`))
	f.Add([]byte(`{"schemaVersion":2,"manifests":[],"layers":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ds, err := Parse(b, 10)
		if err == nil && len(ds) > 10 {
			t.Fatalf("%d entries past the limit", len(ds))
		}
		for _, d := range ds {
			if d.Digest.Validate() != nil || d.Digest.Algorithm() != digest.SHA256 || d.Size < 0 {
				t.Fatalf("kept entry %+v", d)
			}
		}
	})
}

func FuzzNextPage(f *testing.F) {
	f.Add("https://r.example/v2/a/referrers/sha256:1", `</v2/a/referrers/sha256:1?n=10&last=x>; rel="next"`)
	f.Add("https://r.example/v2/a/referrers/sha256:1", `<https://other.example/v2/a>; rel="next"`)
	// A relative base: its path "//0" serialises as a host-relative URL.
	f.Add(".//0", `<>; rel="next"`)
	f.Fuzz(func(t *testing.T, u, link string) {
		next := nextPage(u, link)
		if next == "" {
			return
		}
		// Only the same scheme and host are followed.
		if !sameOrigin(u, next) {
			t.Fatalf("followed %q from %q", next, u)
		}
	})
}
