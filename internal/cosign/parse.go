package cosign

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/internal/referrers"
)

// What cosign writes, and where.
const (
	// BundleType is the artifactType of a cosign v3 signature referrer and
	// the media type of its one layer.
	BundleType = "application/vnd.dev.sigstore.bundle.v0.3+json"
	// SignPredicate is the in-toto predicate type of a cosign v3 image
	// signature; attestations have others.
	SignPredicate = "https://sigstore.dev/cosign/sign/v1"
	// predicateAnnotation is where cosign repeats the predicate type on the
	// referrer manifest, so that attestations are skipped unread.
	predicateAnnotation = "dev.sigstore.bundle.predicateType"
	// SimpleSigningType is the media type of a legacy signature layer.
	SimpleSigningType = "application/vnd.dev.cosign.simplesigning.v1+json"
	// SignatureAnnotation holds a legacy layer's base64 signature.
	SignatureAnnotation = "dev.cosignproject.cosign/signature"
	// simpleSigningKind is critical.type of a cosign simple-signing payload.
	simpleSigningKind = "cosign container image signature"
	// maxSignatureBytes bounds a decoded legacy signature (RSA 4096: 512).
	maxSignatureBytes = 1024
)

// validDigest says whether d is a well-formed sha256 digest.
func validDigest(d digest.Digest) bool { return referrers.ValidDigest(d) }

// imageManifest is the part of an OCI or Docker schema2 image manifest a
// signature manifest is read for.
type imageManifest struct {
	SchemaVersion int                  `json:"schemaVersion"`
	MediaType     string               `json:"mediaType"`
	ArtifactType  string               `json:"artifactType"`
	Config        *ocispec.Descriptor  `json:"config"`
	Layers        []ocispec.Descriptor `json:"layers"`
	Subject       *ocispec.Descriptor  `json:"subject"`
	Manifests     json.RawMessage      `json:"manifests"`
	Annotations   map[string]string    `json:"annotations"`
}

func parseImageManifest(b []byte, types ...string) (*imageManifest, error) {
	var m imageManifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	if m.SchemaVersion != 2 {
		return nil, fmt.Errorf("schemaVersion %d, not 2", m.SchemaVersion)
	}
	if m.Manifests != nil || m.Config == nil {
		return nil, errors.New("not an image manifest (manifests, or no config)")
	}
	ok := false
	for _, t := range types {
		ok = ok || m.MediaType == t
	}
	if !ok {
		return nil, fmt.Errorf("media type %q is not one of %v", m.MediaType, types)
	}
	for _, l := range m.Layers {
		if !validDigest(l.Digest) || l.Size < 0 {
			return nil, fmt.Errorf("a layer has digest %q and size %d", l.Digest, l.Size)
		}
	}
	return &m, nil
}

// bundleManifest is a cosign v3 signature referrer, read.
type bundleManifest struct {
	Subject digest.Digest      // the manifest it says it signs
	Layer   ocispec.Descriptor // the bundle
	// Predicate is the predicate type the manifest's annotation names; ""
	// when it names none (the bundle's statement decides then).
	Predicate string
}

// parseBundleManifest reads a bundle referrer: an OCI image manifest of
// artifactType BundleType (or, as older cosign wrote, config media type
// BundleType), with a subject, whose one layer is the bundle.
func parseBundleManifest(b []byte) (*bundleManifest, error) {
	m, err := parseImageManifest(b, ocispec.MediaTypeImageManifest)
	if err != nil {
		return nil, err
	}
	if m.ArtifactType != BundleType && (m.ArtifactType != "" || m.Config.MediaType != BundleType) {
		return nil, fmt.Errorf("artifactType %q is not a Sigstore bundle v0.3", m.ArtifactType)
	}
	if m.Subject == nil || !validDigest(m.Subject.Digest) {
		return nil, errors.New("no subject")
	}
	if len(m.Layers) != 1 || m.Layers[0].MediaType != BundleType {
		return nil, fmt.Errorf("%d layers; a bundle referrer has one, of media type %s", len(m.Layers), BundleType)
	}
	return &bundleManifest{Subject: m.Subject.Digest, Layer: m.Layers[0], Predicate: m.Annotations[predicateAnnotation]}, nil
}

// legacySignature is one layer of a legacy .sig manifest: the payload's
// descriptor and the signature over the payload's bytes.
type legacySignature struct {
	Layer     ocispec.Descriptor
	Signature []byte
}

// parseSigManifest reads the manifest of a legacy sha256-<hex>.sig tag:
// its simple-signing layers that carry a signature annotation. Layers of
// other types are ignored; an annotation that is not base64 is an error.
func parseSigManifest(b []byte) ([]legacySignature, error) {
	m, err := parseImageManifest(b, ocispec.MediaTypeImageManifest, "application/vnd.docker.distribution.manifest.v2+json")
	if err != nil {
		return nil, err
	}
	var out []legacySignature
	for _, l := range m.Layers {
		enc, ok := l.Annotations[SignatureAnnotation]
		if l.MediaType != SimpleSigningType || !ok {
			continue
		}
		if base64.StdEncoding.DecodedLen(len(enc)) > maxSignatureBytes {
			return nil, fmt.Errorf("layer %s: signature annotation of %d characters", l.Digest, len(enc))
		}
		sig, err := base64.StdEncoding.DecodeString(enc)
		if err != nil {
			return nil, fmt.Errorf("layer %s: signature annotation is not base64: %w", l.Digest, err)
		}
		out = append(out, legacySignature{Layer: l, Signature: sig})
	}
	return out, nil
}

// parseSimpleSigning reads a cosign simple-signing payload and returns the
// manifest digest it signs (critical.image.docker-manifest-digest).
func parseSimpleSigning(b []byte) (digest.Digest, error) {
	var p struct {
		Critical struct {
			Type  string `json:"type"`
			Image struct {
				Digest digest.Digest `json:"docker-manifest-digest"`
			} `json:"image"`
		} `json:"critical"`
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return "", fmt.Errorf("not JSON: %w", err)
	}
	if p.Critical.Type != simpleSigningKind {
		return "", fmt.Errorf("critical.type %q is not %q", p.Critical.Type, simpleSigningKind)
	}
	if !validDigest(p.Critical.Image.Digest) {
		return "", fmt.Errorf("critical.image.docker-manifest-digest %q is not a sha256 digest", p.Critical.Image.Digest)
	}
	return p.Critical.Image.Digest, nil
}
