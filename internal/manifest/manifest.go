package manifest

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/distribution/distribution/v3/manifest/manifestlist"
	"github.com/distribution/distribution/v3/manifest/ocischema"
	"github.com/distribution/distribution/v3/manifest/schema2"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// The manifest types trustproxy verifies and stores; importing their packages
// registers them with distribution.UnmarshalManifest.
var (
	_ = schema2.SchemaVersion
	_ = manifestlist.SchemaVersion
	_ = ocischema.SchemaVersion
)

// A Manifest is a manifest whose bytes hash to the digest it was checked
// against.
type Manifest struct {
	Digest    digest.Digest
	MediaType string
	Body      []byte
	Index     bool            // an image index or manifest list
	Refs      []v1.Descriptor // child manifests (index) or config and layers (image)
}

// mediaTypes are the media types Parse accepts, and whether each is an index.
var mediaTypes = map[string]bool{
	schema2.MediaTypeManifest:          false,
	manifestlist.MediaTypeManifestList: true,
	v1.MediaTypeImageManifest:          false,
	v1.MediaTypeImageIndex:             true,
}

// IsType says whether mt is a manifest media type Parse accepts.
func IsType(mt string) bool {
	_, ok := mediaTypes[mt]
	return ok
}

// IsIndexType says whether mt is an index media type Parse accepts.
func IsIndexType(mt string) bool { return mediaTypes[mt] }

// Accept is what trustproxy asks an upstream for: every manifest type it
// can verify and store.
var Accept = strings.Join([]string{
	schema2.MediaTypeManifest,
	manifestlist.MediaTypeManifestList,
	v1.MediaTypeImageManifest,
	v1.MediaTypeImageIndex,
}, ", ")

// MaxRefs bounds the descriptors a manifest may list: images have at most a
// few hundred layers, indexes a few dozen platforms.
const MaxRefs = 4096

// A MismatchError is bytes that are not the manifest asked for: they hash
// to another digest, or have another length than the signed one.
type MismatchError struct {
	Got  digest.Digest // what the bytes hash to
	Size int           // their length
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("the manifest hashes to %s (%d bytes), not to the digest asked for", e.Got, e.Size)
}

// Verify checks that body is the manifest want: it hashes to want.Digest
// and, when want.Size is known (not -1), has exactly that length; then it
// parses it. A *MismatchError says the bytes are not that manifest; any
// other error, that they are, but it is not one trustproxy serves (Parse).
func Verify(body []byte, want v1.Descriptor) (*Manifest, error) {
	if got := digest.FromBytes(body); got != want.Digest || (want.Size >= 0 && int64(len(body)) != want.Size) {
		return nil, &MismatchError{Got: got, Size: len(body)}
	}
	return Parse(want.Digest, body)
}

// Parse reads what the manifest body of digest dgst refers to. It refuses
// documents that could be read as two types (CVE-2021-41190): an index with
// layers or config, an image with manifests, or a mediaType that disagrees.
func Parse(dgst digest.Digest, body []byte) (*Manifest, error) {
	var doc struct {
		SchemaVersion int             `json:"schemaVersion"`
		MediaType     string          `json:"mediaType"`
		Config        *v1.Descriptor  `json:"config"`
		Layers        []v1.Descriptor `json:"layers"`
		Manifests     []v1.Descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("manifest is not JSON: %w", err)
	}
	if doc.SchemaVersion != 2 {
		return nil, fmt.Errorf("manifest schemaVersion %d is not supported (only 2)", doc.SchemaVersion)
	}
	isIndex := doc.Manifests != nil
	isImage := doc.Config != nil || doc.Layers != nil
	if isIndex == isImage {
		return nil, errors.New("ambiguous manifest: it must have either manifests or config and layers")
	}
	mt := doc.MediaType
	if mt == "" {
		mt = v1.MediaTypeImageManifest
		if isIndex {
			mt = v1.MediaTypeImageIndex
		}
	}
	index, ok := mediaTypes[mt]
	if !ok {
		return nil, fmt.Errorf("manifest media type %q is not supported", mt)
	}
	if index != isIndex {
		return nil, fmt.Errorf("ambiguous manifest: mediaType %s disagrees with its fields", mt)
	}
	m := &Manifest{Digest: dgst, MediaType: mt, Body: body, Index: isIndex}
	if isIndex {
		m.Refs = doc.Manifests
	} else {
		if doc.Config == nil {
			return nil, errors.New("image manifest has no config")
		}
		m.Refs = append([]v1.Descriptor{*doc.Config}, doc.Layers...)
	}
	if len(m.Refs) > MaxRefs {
		return nil, fmt.Errorf("manifest lists %d descriptors, more than the %d trustproxy accepts", len(m.Refs), MaxRefs)
	}
	for _, d := range m.Refs {
		if err := d.Digest.Validate(); err != nil || d.Digest.Algorithm() != digest.SHA256 {
			return nil, fmt.Errorf("manifest refers to invalid digest %q", d.Digest)
		}
		if d.Size < 0 {
			return nil, fmt.Errorf("manifest refers to %s with negative size", d.Digest)
		}
	}
	return m, nil
}
