package notation

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/notaryproject/notation-core-go/signature"
	"github.com/notaryproject/notation-core-go/signature/cose"
	"github.com/notaryproject/notation-core-go/signature/jws"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	gocose "github.com/veraison/go-cose"

	"github.com/trustproxy/trustproxy/internal/referrers"
)

// What Notation writes, and where.
const (
	// ArtifactType is the artifactType of a Notation signature manifest (and
	// the config media type of one written before OCI 1.1).
	ArtifactType = "application/vnd.cncf.notary.signature"
	// JWS and COSE are the media types of a signature envelope layer.
	JWS  = jws.MediaTypeEnvelope
	COSE = cose.MediaTypeEnvelope
)

// sigManifest is what a signature manifest is read for.
type sigManifest struct {
	Subject  ocispec.Descriptor
	Envelope ocispec.Descriptor // its one layer: a JWS or COSE envelope
}

// parseSigManifest reads a Notation signature manifest: an OCI image
// manifest of artifactType (or config media type) ArtifactType, with a
// subject and exactly one layer, a JWS or COSE envelope.
func parseSigManifest(b []byte) (sigManifest, error) {
	var m struct {
		SchemaVersion int                  `json:"schemaVersion"`
		MediaType     string               `json:"mediaType"`
		ArtifactType  string               `json:"artifactType"`
		Config        ocispec.Descriptor   `json:"config"`
		Layers        []ocispec.Descriptor `json:"layers"`
		Subject       *ocispec.Descriptor  `json:"subject"`
		Manifests     json.RawMessage      `json:"manifests"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return sigManifest{}, fmt.Errorf("not JSON: %w", err)
	}
	switch {
	case m.SchemaVersion != 2:
		return sigManifest{}, fmt.Errorf("schemaVersion %d, not 2", m.SchemaVersion)
	case m.MediaType != ocispec.MediaTypeImageManifest:
		return sigManifest{}, fmt.Errorf("media type %q is not an OCI image manifest", m.MediaType)
	case m.Manifests != nil:
		return sigManifest{}, errors.New("a manifest with manifests is ambiguous")
	case m.ArtifactType != ArtifactType && !(m.ArtifactType == "" && m.Config.MediaType == ArtifactType):
		return sigManifest{}, fmt.Errorf("artifactType %q is not a Notation signature", m.ArtifactType)
	case m.Subject == nil || !referrers.ValidDigest(m.Subject.Digest):
		return sigManifest{}, errors.New("no subject with a sha256 digest")
	case len(m.Layers) != 1:
		return sigManifest{}, fmt.Errorf("%d layers, not one envelope", len(m.Layers))
	}
	l := m.Layers[0]
	if l.MediaType != JWS && l.MediaType != COSE {
		return sigManifest{}, fmt.Errorf("envelope media type %q is neither %s nor %s", l.MediaType, JWS, COSE)
	}
	if !referrers.ValidDigest(l.Digest) || l.Size < 0 {
		return sigManifest{}, errors.New("its envelope layer has no sha256 digest or a negative size")
	}
	return sigManifest{Subject: *m.Subject, Envelope: l}, nil
}

// envelope is what an envelope says before anything is verified: its
// payload's target and its certificate chain, leaf first.
type envelope struct {
	Target ocispec.Descriptor
	Chain  []*x509.Certificate
}

// errChain is a certificate chain that is too long or loops.
var errChain = errors.New("certificate chain")

// readEnvelope parses a JWS or COSE envelope (mediaType) with
// notation-core-go without verifying it, and checks what bounds the
// verification after it: at most maxChain certificates, none repeated
// and none issued by one that comes before it (a loop; a root's own
// issuer is itself), and a payload naming a sha256 target. A chain fault
// wraps errChain.
func readEnvelope(mediaType string, b []byte, maxChain int) (envelope, error) {
	// The chain is read and checked before notation-core-go validates it.
	raw, err := rawChain(mediaType, b, maxChain)
	if err != nil {
		return envelope{}, err
	}
	chain := make([]*x509.Certificate, 0, len(raw))
	for i, der := range raw {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return envelope{}, fmt.Errorf("%w: certificate %d: %v", errChain, i, err)
		}
		chain = append(chain, c)
	}
	for i, cert := range chain {
		for j := range i {
			if bytes.Equal(cert.Raw, chain[j].Raw) {
				return envelope{}, fmt.Errorf("%w loops: certificate %d (%s) repeats certificate %d", errChain, i, cert.Subject, j)
			}
			if bytes.Equal(cert.RawIssuer, chain[j].RawSubject) && !bytes.Equal(cert.RawIssuer, cert.RawSubject) {
				return envelope{}, fmt.Errorf("%w loops: certificate %d (%s) is issued by certificate %d before it", errChain, i, cert.Subject, j)
			}
		}
	}
	env, err := signature.ParseEnvelope(mediaType, b)
	if err != nil {
		return envelope{}, err
	}
	c, err := env.Content()
	if err != nil {
		return envelope{}, err
	}
	var p struct {
		TargetArtifact ocispec.Descriptor `json:"targetArtifact"`
	}
	if err := json.Unmarshal(c.Payload.Content, &p); err != nil {
		return envelope{}, fmt.Errorf("payload: %w", err)
	}
	if !referrers.ValidDigest(p.TargetArtifact.Digest) {
		return envelope{}, errors.New("payload: no sha256 target artifact")
	}
	return envelope{Target: p.TargetArtifact, Chain: chain}, nil
}

// rawChain is the DER certificates of a JWS (header x5c) or COSE
// (unprotected x5chain) envelope, at most maxChain of them.
func rawChain(mediaType string, b []byte, maxChain int) ([][]byte, error) {
	var raw [][]byte
	switch mediaType {
	case JWS:
		var e struct {
			Header struct {
				X5C [][]byte `json:"x5c"`
			} `json:"header"`
		}
		if err := json.Unmarshal(b, &e); err != nil {
			return nil, fmt.Errorf("not a JWS envelope: %w", err)
		}
		raw = e.Header.X5C
	case COSE:
		var m gocose.Sign1Message
		if err := m.UnmarshalCBOR(b); err != nil {
			return nil, fmt.Errorf("not a COSE envelope: %w", err)
		}
		switch v := m.Headers.Unprotected[gocose.HeaderLabelX5Chain].(type) {
		case []byte:
			raw = [][]byte{v}
		case []any:
			for _, c := range v {
				der, ok := c.([]byte)
				if !ok {
					return nil, fmt.Errorf("%w: an x5chain entry that is no certificate", errChain)
				}
				raw = append(raw, der)
			}
		}
	default:
		return nil, fmt.Errorf("envelope media type %q", mediaType)
	}
	switch {
	case len(raw) == 0:
		return nil, fmt.Errorf("%w: none", errChain)
	case len(raw) > maxChain:
		return nil, fmt.Errorf("%w of %d certificates, more than %d", errChain, len(raw), maxChain)
	}
	return raw, nil
}
