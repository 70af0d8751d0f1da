package cosign

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	in_toto "github.com/in-toto/attestation/go/v1"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/verify"
	"google.golang.org/protobuf/encoding/protojson"
)

// judgement is one Verify: the signatures examined so far and the best
// refusal among them.
type judgement struct {
	v        *Verifier
	c        *client
	dgst     digest.Digest
	examined int
	best     *finding
	found    int // signatures found, examined or not
}

// note keeps f if it says more than what was found before (rank).
func (j *judgement) note(f *finding) {
	if f != nil && (j.best == nil || rank[f.reason] > rank[j.best.reason]) {
		j.best = f
	}
}

// next says whether another signature may be examined, and counts it.
func (j *judgement) next() bool {
	j.found++
	if j.examined >= j.v.limits.Signatures {
		return false
	}
	j.examined++
	return true
}

// run looks for the digest's signatures, bundles first, and returns the
// first that verifies, or the refusal that says most.
func (j *judgement) run(ctx context.Context) (Verdict, error) {
	refs, f, err := j.c.referrers(ctx, j.dgst, BundleType)
	if err != nil {
		return Verdict{}, fmt.Errorf("list referrers: %w", err)
	}
	j.note(f)
	for _, d := range refs {
		if p := d.Annotations[predicateAnnotation]; p != "" && p != SignPredicate {
			continue // an attestation, not a signature: not fetched
		}
		if !j.next() {
			break
		}
		signer, f, err := j.bundle(ctx, d)
		if err != nil {
			return Verdict{}, fmt.Errorf("referrer %s: %w", d.Digest, err)
		}
		if f == nil {
			return Verdict{Digest: j.dgst, Signer: signer, Signature: d.Digest, Format: Bundle, Reason: Verified}, nil
		}
		j.note(f)
	}
	v, err := j.legacy(ctx)
	if err != nil || v.Reason == Verified {
		return v, err
	}
	if j.found > j.examined {
		j.note(refusal(TooLarge, "%d cosign signatures found; none of the first %d examined verifies", j.found, j.examined))
	}
	if j.best == nil {
		j.best = refusal(Unsigned, "no cosign signature of this digest was found (referrers, referrers tag %s, legacy tag %s.sig); sign it with cosign sign",
			tagOf(j.dgst), tagOf(j.dgst))
	}
	return Verdict{Digest: j.dgst, Reason: j.best.reason, Detail: j.best.detail}, nil
}

func tagOf(d digest.Digest) string { return strings.Replace(d.String(), ":", "-", 1) }

// bundle verifies the bundle referrer d: the signer's name, or a finding.
func (j *judgement) bundle(ctx context.Context, d ocispec.Descriptor) (string, *finding, error) {
	raw, f, err := j.c.fetch(ctx, "manifests", d, j.v.limits.ManifestBytes)
	if f != nil || err != nil {
		return "", f, err
	}
	m, err := parseBundleManifest(raw)
	if err != nil {
		return "", refusal(Malformed, "signature manifest %s: %v", d.Digest, err), nil
	}
	if m.Predicate != "" && m.Predicate != SignPredicate {
		return "", refusal(Unsigned, "referrer %s is an attestation (%s), not a signature", d.Digest, m.Predicate), nil
	}
	if m.Subject != j.dgst {
		return "", refusal(OtherDigest, "signature manifest %s is listed for this digest but its subject is %s", d.Digest, m.Subject), nil
	}
	layer, f, err := j.c.fetch(ctx, "blobs", m.Layer, j.v.limits.LayerBytes)
	if f != nil || err != nil {
		return "", f, err
	}
	b, err := parseBundle(layer)
	if errors.Is(err, errNoInclusionProof) {
		return "", refusal(NoTlog, "the bundle of signature manifest %s: %v; a signature counts with an entry whose inclusion in a log of the trusted root is proven", d.Digest, err), nil
	}
	if err != nil {
		return "", refusal(Malformed, "the bundle of signature manifest %s: %v", d.Digest, err), nil
	}
	signer, f := j.v.verifyBundle(b, j.dgst)
	if f != nil {
		f.detail = fmt.Sprintf("signature manifest %s: %s", d.Digest, f.detail)
	}
	return signer, f, nil
}

// parseBundle reads a Sigstore bundle v0.3 whose content is a DSSE
// envelope: what cosign v3 writes for an image signature. A bundle whose
// log entries lack an inclusion proof is errNoInclusionProof (sigstore-go
// does not read it), so that its refusal says so.
func parseBundle(b []byte) (*bundle.Bundle, error) {
	var pb protobundle.Bundle
	if err := protojson.Unmarshal(b, &pb); err != nil {
		return nil, err
	}
	if pb.GetMediaType() != BundleType {
		return nil, fmt.Errorf("media type %q, not %s", pb.GetMediaType(), BundleType)
	}
	if _, ok := pb.Content.(*protobundle.Bundle_DsseEnvelope); !ok {
		return nil, errors.New("not a DSSE envelope (a cosign v3 image signature is one)")
	}
	// A v0.3 bundle names its leaf certificate alone; the chain is the
	// trusted root's. A chain here (a loop, or thousands) is refused unread.
	if c := pb.GetVerificationMaterial().GetX509CertificateChain(); c != nil {
		return nil, fmt.Errorf("a certificate chain of %d certificates; a bundle v0.3 holds the leaf certificate alone", len(c.GetCertificates()))
	}
	for _, e := range pb.GetVerificationMaterial().GetTlogEntries() {
		if e.GetInclusionProof() == nil {
			return nil, errNoInclusionProof
		}
	}
	bd, err := bundle.NewBundle(&pb)
	if err != nil {
		return nil, err
	}
	return bd, nil
}

var errNoInclusionProof = errors.New("its transparency-log entry has no inclusion proof")

// verifyBundle finds the signer whose key verifies b, then checks that
// b's statement is an image signature of dgst and, when the rule requires
// it, that b's transparency-log entry verifies.
func (v *Verifier) verifyBundle(b *bundle.Bundle, dgst digest.Digest) (string, *finding) {
	hint := ""
	if pk := b.GetVerificationMaterial().GetPublicKey(); pk != nil {
		hint = pk.GetHint()
	} else {
		return v.verifyKeyless(b, dgst)
	}
	// The signer the hint names is tried first; the others after, as the
	// hint is whatever the signing tool wrote.
	order := slices.Clone(v.signers)
	slices.SortStableFunc(order, func(a, b keyed) int {
		switch {
		case a.hint == hint && b.hint != hint:
			return -1
		case b.hint == hint && a.hint != hint:
			return 1
		}
		return 0
	})
	policy := verify.NewPolicy(verify.WithoutArtifactUnsafe(), verify.WithKey())
	var signer *keyed
	var res *verify.VerificationResult
	var lastErr error
	for i := range order {
		r, err := order[i].bundle.Verify(b, policy)
		if err == nil {
			signer, res = &order[i], r
			break
		}
		lastErr = err
	}
	if signer == nil {
		if len(order) > 0 && order[0].hint == hint {
			return "", refusal(BadSignature, "its signature claims the key of signer %s and does not verify: %v", order[0].Name, lastErr)
		}
		return "", refusal(UntrustedKey, "signed by a key this rule does not trust (hint %q)", hint)
	}
	if f := signs(signer.Name, res.Statement, dgst); f != nil {
		return "", f
	}
	if signer.tlog != nil {
		if len(b.GetVerificationMaterial().GetTlogEntries()) == 0 {
			return "", refusal(NoTlog, "signed by %s without a transparency-log entry, and the rule does not set allow_no_tlog", signer.Name)
		}
		if _, err := signer.tlog.Verify(b, policy); err != nil {
			return "", refusal(NoTlog, "signed by %s; its transparency-log entry does not verify against the trusted root: %v", signer.Name, err)
		}
	}
	return signer.Name, nil
}

// signs says whether st, verified as signer's, is a cosign image signature
// of dgst: nil if so, else why not.
func signs(signer string, st *in_toto.Statement, dgst digest.Digest) *finding {
	if st == nil || st.GetPredicateType() != SignPredicate {
		return refusal(Unsigned, "signed by %s, but an attestation (%s), not an image signature", signer, st.GetPredicateType())
	}
	var others []string
	for _, s := range st.GetSubject() {
		h := s.GetDigest()["sha256"]
		if h == dgst.Encoded() {
			return nil
		}
		others = append(others, "sha256:"+h)
	}
	return refusal(OtherDigest, "signed by %s for %s, not for this digest", signer, strings.Join(others, ", "))
}

// legacy looks at the sha256-<hex>.sig tag: the first simple-signing layer
// that a signer's key verifies and that names the digest.
func (j *judgement) legacy(ctx context.Context) (Verdict, error) {
	u := j.c.url("manifests", tagOf(j.dgst)+".sig", nil)
	raw, _, err := j.c.get(ctx, u, ocispec.MediaTypeImageManifest+", application/vnd.docker.distribution.manifest.v2+json", j.v.limits.ManifestBytes)
	switch {
	case errors.Is(err, errNotFound):
		return Verdict{}, nil
	case errors.Is(err, errTooLarge):
		j.note(refusal(TooLarge, "its legacy signature manifest (%s.sig) is larger than %d bytes", tagOf(j.dgst), j.v.limits.ManifestBytes))
		return Verdict{}, nil
	case err != nil:
		return Verdict{}, fmt.Errorf("legacy signature tag: %w", err)
	}
	sigManifest := digest.FromBytes(raw)
	sigs, err := parseSigManifest(raw)
	if err != nil {
		j.note(refusal(Malformed, "legacy signature manifest %s: %v", sigManifest, err))
		return Verdict{}, nil
	}
	for _, s := range sigs {
		if !j.next() {
			break
		}
		payload, f, err := j.c.fetch(ctx, "blobs", s.Layer, j.v.limits.LayerBytes)
		if err != nil {
			return Verdict{}, fmt.Errorf("legacy signature layer %s: %w", s.Layer.Digest, err)
		}
		if f == nil {
			var name string
			if name, f = j.v.verifyLegacy(payload, s.Signature, j.dgst); f == nil {
				return Verdict{Digest: j.dgst, Signer: name, Signature: sigManifest, Format: SimpleSigning, Reason: Verified}, nil
			}
		}
		f.detail = fmt.Sprintf("legacy signature %s: %s", s.Layer.Digest, f.detail)
		j.note(f)
	}
	return Verdict{}, nil
}

// verifyLegacy checks a simple-signing payload and its signature: the
// signer whose key verifies it, then the digest it names.
func (v *Verifier) verifyLegacy(payload, sig []byte, dgst digest.Digest) (string, *finding) {
	var signer *keyed
	for i := range v.signers {
		if v.signers[i].legacy.VerifySignature(strings.NewReader(string(sig)), strings.NewReader(string(payload))) == nil {
			signer = &v.signers[i]
			break
		}
	}
	if signer == nil {
		// A simple signature names no key: a tampered signature and a
		// stranger's look the same.
		return "", refusal(UntrustedKey, "no key this rule trusts verifies its signature")
	}
	named, err := parseSimpleSigning(payload)
	if err != nil {
		return "", refusal(Malformed, "signed by %s, but its payload does not parse: %v", signer.Name, err)
	}
	if named != dgst {
		return "", refusal(OtherDigest, "signed by %s for %s, not for this digest", signer.Name, named)
	}
	if v.tlog {
		return "", refusal(NoTlog, "signed by %s; a legacy signature's transparency-log bundle is not verified here, so it counts only under allow_no_tlog", signer.Name)
	}
	return signer.Name, nil
}
