package manifest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/distribution/distribution/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Real manifests of each accepted type, and documents that could be read as
// two (CVE-2021-41190), which Parse must refuse.
const (
	cfgDesc   = `{"mediaType":"application/vnd.docker.container.image.v1+json","size":1469,"digest":"sha256:4bcff63911fcb4448bd4fdacec207030997caf25e9bea4045fa6c8c44de311d1"}`
	layerDesc = `{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":3623807,"digest":"sha256:f56be85fc22e46face30e2c3de3f7fe7c15f8fd7c4e5add29d7f64b87abdaa09"}`
	childDesc = `{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":528,"digest":"sha256:e7d88de73db3d3fd9b2d63aa7f447a10fd0220b7cbf39803c803f2af9ba256b3","platform":{"architecture":"amd64","os":"linux"}}`

	schema2JSON      = `{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":` + cfgDesc + `,"layers":[` + layerDesc + `]}`
	manifestListJSON = `{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[` + childDesc + `]}`
	ociManifestJSON  = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":2,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":32,"digest":"sha256:f56be85fc22e46face30e2c3de3f7fe7c15f8fd7c4e5add29d7f64b87abdaa09"}],"annotations":{"org.opencontainers.image.created":"2024-01-01T00:00:00Z"}}`
	ociIndexJSON     = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":528,"digest":"sha256:e7d88de73db3d3fd9b2d63aa7f447a10fd0220b7cbf39803c803f2af9ba256b3","platform":{"architecture":"arm64","os":"linux","variant":"v8"}}]}`
)

var ambiguousManifests = []string{
	`{"schemaVersion":2,"config":` + cfgDesc + `,"layers":[` + layerDesc + `],"manifests":[` + childDesc + `]}`,
	`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` + childDesc + `],"layers":[` + layerDesc + `]}`,
	`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","layers":[` + layerDesc + `]}`,
	`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","config":` + cfgDesc + `,"manifests":[]}`,
	`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[` + childDesc + `]}`,
	`{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","config":` + cfgDesc + `,"layers":[]}`,
	`{"schemaVersion":2,"config":` + cfgDesc + `,"layers":[` + layerDesc + `],"Manifests":[` + childDesc + `]}`,
	`{"schemaVersion":2,"layers":[` + layerDesc + `]}`,
	`{"schemaVersion":2,"config":null,"manifests":null}`,
	`{"schemaVersion":2,"config":{"digest":"sha512:` + strings.Repeat("ab", 64) + `","size":1},"layers":[]}`,
	`{"schemaVersion":2,"config":{"digest":"sha256:../../x","size":1},"layers":[]}`,
	`{"schemaVersion":2,"config":` + cfgDesc + `,"layers":[{"digest":"sha256:f56be85fc22e46face30e2c3de3f7fe7c15f8fd7c4e5add29d7f64b87abdaa09","size":-1}]}`,
	`{"schemaVersion":1,"name":"library/alpine","tag":"3","architecture":"amd64","fsLayers":[{"blobSum":"sha256:f56be85fc22e46face30e2c3de3f7fe7c15f8fd7c4e5add29d7f64b87abdaa09"}],"history":[{"v1Compatibility":"{}"}],"signatures":[]}`,
	`{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":` + cfgDesc + `,"layers":[]}`,
	`{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v1+prettyjws","config":` + cfgDesc + `,"layers":[]}`,
}

// duplicateKeyManifests are read with the last of each key, as
// encoding/json (and so distribution) does; they are seeds, not refusals.
var duplicateKeyManifests = []string{
	`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`,
	`{"schemaVersion":2,"config":` + cfgDesc + `,"layers":[` + layerDesc + `],"layers":[],"LAYERS":[` + cfgDesc + `]}`,
}

// generatedManifests are manifests go-containerregistry writes: a Docker
// schema2 image, an OCI image, an OCI index and a Docker manifest list.
func generatedManifests(f testing.TB) [][]byte {
	f.Helper()
	img, err := random.Image(256, 2)
	if err != nil {
		f.Fatal(err)
	}
	layer, err := random.Layer(64, types.OCILayer)
	if err != nil {
		f.Fatal(err)
	}
	oci, err := mutate.AppendLayers(mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON), layer)
	if err != nil {
		f.Fatal(err)
	}
	idx, err := random.Index(128, 1, 2)
	if err != nil {
		f.Fatal(err)
	}
	list := mutate.IndexMediaType(mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: img}), types.DockerManifestList)
	var out [][]byte
	for _, m := range []interface{ RawManifest() ([]byte, error) }{img, oci, idx, list} {
		b, err := m.RawManifest()
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// FuzzParseManifest checks that Parse never panics and that what it
// accepts has one of the four media types, refers only to sha256 digests
// with non-negative sizes, is an index with no config or layers or an image
// with a config and no manifests, and reads the same to distribution, which
// stores it.
func FuzzParseManifest(f *testing.F) {
	for _, s := range []string{schema2JSON, manifestListJSON, ociManifestJSON, ociIndexJSON} {
		f.Add([]byte(s))
	}
	for _, b := range generatedManifests(f) {
		f.Add(b)
	}
	for _, s := range slices.Concat(ambiguousManifests, duplicateKeyManifests) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		dgst := digest.FromBytes(body)
		m, err := Parse(dgst, body)
		if err != nil {
			if m != nil {
				t.Fatalf("parseManifest returned %+v and error %v", m, err)
			}
			return
		}
		index, ok := mediaTypes[m.MediaType]
		if !ok || index != m.Index {
			t.Fatalf("accepted media type %q (index %v)", m.MediaType, m.Index)
		}
		if m.Digest != dgst || !bytes.Equal(m.Body, body) {
			t.Fatalf("accepted manifest is not the input: digest %s body %q", m.Digest, m.Body)
		}
		for _, d := range m.Refs {
			if err := d.Digest.Validate(); err != nil || d.Digest.Algorithm() != digest.SHA256 || d.Size < 0 {
				t.Fatalf("accepted reference %q size %d (%v)", d.Digest, d.Size, err)
			}
		}
		// encoding/json matches keys without regard to case, so any
		// spelling of a key counts.
		var keys map[string]json.RawMessage
		if err := json.Unmarshal(body, &keys); err != nil {
			t.Fatalf("accepted a document that is not a JSON object: %v", err)
		}
		has := func(name string) bool {
			for k, v := range keys {
				if strings.EqualFold(k, name) && string(bytes.TrimSpace(v)) != "null" {
					return true
				}
			}
			return false
		}
		if m.Index && (has("config") || has("layers")) {
			t.Fatalf("accepted index %s with a config or layers", body)
		}
		if !m.Index && (has("manifests") || !has("config") || len(m.Refs) == 0) {
			t.Fatalf("accepted image %s with manifests or without config", body)
		}
		dm, _, err := distribution.UnmarshalManifest(m.MediaType, body)
		if err != nil {
			return // storing it is refused
		}
		if diff := cmp.Diff(digestsAndSizes(m.Refs), digestsAndSizes(dm.References())); diff != "" {
			t.Fatalf("Parse and distribution read different references from %s (-ours +distribution):\n%s", body, diff)
		}
	})
}

func digestsAndSizes(ds []v1.Descriptor) []string {
	var out []string
	for _, d := range ds {
		out = append(out, fmt.Sprintf("%s %d", d.Digest, d.Size))
	}
	return out
}

// TestParseManifestSeeds checks the fuzz seeds themselves: the real
// manifests are accepted with their media type, the ambiguous ones refused.
func TestParseManifestSeeds(t *testing.T) {
	real := map[string]string{
		schema2JSON:      "application/vnd.docker.distribution.manifest.v2+json",
		manifestListJSON: "application/vnd.docker.distribution.manifest.list.v2+json",
		ociManifestJSON:  v1.MediaTypeImageManifest,
		ociIndexJSON:     v1.MediaTypeImageIndex,
	}
	for body, want := range real {
		m, err := Parse(digest.FromString(body), []byte(body))
		if err != nil {
			t.Errorf("Parse(%s): %v", body, err)
			continue
		}
		if m.MediaType != want {
			t.Errorf("Parse(%s) media type %s, want %s", body, m.MediaType, want)
		}
	}
	for i, body := range generatedManifests(t) {
		m, err := Parse(digest.FromBytes(body), body)
		if err != nil {
			t.Errorf("Parse(%s): %v", body, err)
			continue
		}
		// image: config and 2 layers; OCI image: config and 1 layer; index: 2 images; list: 1 image.
		wantIndex, wantRefs := []bool{false, false, true, true}[i], []int{3, 2, 2, 1}[i]
		if m.Index != wantIndex || len(m.Refs) != wantRefs {
			t.Errorf("Parse(%s): index %v with %d refs, want index %v with %d", body, m.Index, len(m.Refs), wantIndex, wantRefs)
		}
	}
	for _, body := range ambiguousManifests {
		if m, err := Parse(digest.FromString(body), []byte(body)); err == nil {
			t.Errorf("Parse(%s) accepted it as %s, want an error", body, m.MediaType)
		}
	}
}
