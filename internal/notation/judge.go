package notation

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/notaryproject/notation-core-go/signature"
	notationgo "github.com/notaryproject/notation-go"
	"github.com/notaryproject/notation-go/verifier/trustpolicy"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/internal/referrers"
)

// judgement is one Verify: the signatures examined so far and the best
// refusal among them.
type judgement struct {
	v        *Verifier
	up       Upstream
	repo     referrers.Repository
	dgst     digest.Digest
	examined int
	best     *finding
}

// note keeps f if it says more than what was found before (rank).
func (j *judgement) note(f *finding) {
	if f != nil && (j.best == nil || rank[f.reason] > rank[j.best.reason]) {
		j.best = f
	}
}

// run lists the digest's Notation signatures and returns the first that
// verifies, or the refusal that says most.
func (j *judgement) run(ctx context.Context) (Verdict, error) {
	l := j.v.limits
	refs, err := referrers.List(ctx, j.up.Client, j.repo, j.dgst, ArtifactType, referrers.Limits{Bytes: l.ReferrersBytes, Entries: l.Referrers})
	var parse *referrers.MalformedError
	switch {
	case errors.Is(err, referrers.ErrTooLarge):
		j.note(refusal(TooLarge, "its referrers index is larger than %d bytes", l.ReferrersBytes))
	case errors.Is(err, referrers.ErrTooMany):
		j.note(refusal(TooLarge, "its referrers index lists more than %d entries", l.Referrers))
	case errors.As(err, &parse):
		j.note(refusal(Malformed, "its referrers index does not parse: %v", parse.Err))
	case err != nil:
		return Verdict{}, fmt.Errorf("list referrers: %w", err)
	}
	for _, d := range refs {
		if j.examined == l.Signatures {
			j.note(refusal(TooLarge, "%d Notation signatures found; none of the first %d examined verifies", len(refs), j.examined))
			break
		}
		j.examined++
		signer, f, err := j.signature(ctx, d)
		if err != nil {
			return Verdict{}, fmt.Errorf("signature %s: %w", d.Digest, err)
		}
		if f == nil {
			return Verdict{Digest: j.dgst, Signer: signer, Signature: d.Digest, Reason: Verified}, nil
		}
		f.detail = fmt.Sprintf("signature manifest %s: %s", d.Digest, f.detail)
		j.note(f)
	}
	if j.best == nil {
		j.best = refusal(Unsigned, "no Notation signature of this digest was found (referrers API, referrers tag %s); sign it with notation sign", referrers.TagOf(j.dgst))
	}
	return Verdict{Digest: j.dgst, Reason: j.best.reason, Detail: j.best.detail}, nil
}

// fetch reads what desc names, bounded; a fault of the content is a finding.
func (j *judgement) fetch(ctx context.Context, kind string, desc ocispec.Descriptor, limit int64) ([]byte, *finding, error) {
	b, err := referrers.Fetch(ctx, j.up.Client, j.repo, kind, desc, limit)
	switch {
	case err == nil:
		return b, nil, nil
	case errors.Is(err, referrers.ErrTooLarge) && desc.Size > limit:
		return nil, refusal(TooLarge, "%s claims %d bytes, more than the %d read", desc.Digest, desc.Size, limit), nil
	case errors.Is(err, referrers.ErrTooLarge):
		return nil, refusal(TooLarge, "%s is longer than its descriptor's %d bytes", desc.Digest, desc.Size), nil
	case errors.Is(err, referrers.ErrNotFound):
		return nil, refusal(Malformed, "%s is listed but missing upstream", desc.Digest), nil
	case errors.Is(err, referrers.ErrMismatch):
		return nil, refusal(Malformed, "%v", err), nil
	}
	return nil, nil, err
}

// signature judges the signature manifest d: the signer's name, or a finding.
func (j *judgement) signature(ctx context.Context, d ocispec.Descriptor) (string, *finding, error) {
	raw, f, err := j.fetch(ctx, "manifests", d, j.v.limits.ManifestBytes)
	if f != nil || err != nil {
		return "", f, err
	}
	m, err := parseSigManifest(raw)
	if err != nil {
		return "", refusal(Malformed, "%v", err), nil
	}
	if m.Subject.Digest != j.dgst {
		return "", refusal(OtherDigest, "listed for this digest, its subject is %s", m.Subject.Digest), nil
	}
	blob, f, err := j.fetch(ctx, "blobs", m.Envelope, j.v.limits.EnvelopeBytes)
	if f != nil || err != nil {
		if f != nil {
			f.detail = "envelope " + f.detail
		}
		return "", f, err
	}
	env, err := readEnvelope(m.Envelope.MediaType, blob, j.v.limits.Chain)
	switch {
	case errors.Is(err, errChain):
		return "", refusal(Malformed, "envelope: %v", err), nil
	case err != nil:
		return "", refusal(Malformed, "envelope does not parse: %v", err), nil
	}
	ref := j.up.Repo.Name() + "@" + j.dgst.String()
	var best *finding
	for _, s := range j.v.signers {
		// The envelope's own target is the descriptor verified against, so
		// that a signature of another digest verifies and is then refused
		// for what it signs rather than as a mismatch.
		out, err := s.v.Verify(ctx, env.Target, blob, notationgo.VerifierVerifyOptions{ArtifactReference: ref, SignatureMediaType: m.Envelope.MediaType})
		if err == nil {
			if env.Target.Digest != j.dgst {
				return "", refusal(OtherDigest, "signed by %s for %s, not for this digest", s.Name, env.Target.Digest), nil
			}
			return s.Name, nil, nil
		}
		if ctx.Err() != nil {
			return "", nil, ctx.Err()
		}
		f := classify(s.Name, out, err)
		if best == nil || rank[f.reason] > rank[best.reason] {
			best = f
		}
	}
	return "", best, nil
}

// classify turns notation-go's refusal of an envelope, by the signer
// named, into a finding: the enforced check that failed says why.
func classify(signer string, out *notationgo.VerificationOutcome, err error) *finding {
	var failed *notationgo.ValidationResult
	if out != nil {
		for _, r := range out.VerificationResults {
			if r != nil && r.Error != nil && r.Action == trustpolicy.ActionEnforce {
				failed = r
			}
		}
	}
	if failed == nil {
		return refusal(BadSignature, "signer %s: %v", signer, err)
	}
	switch failed.Type {
	case trustpolicy.TypeIntegrity:
		return refusal(BadSignature, "the envelope's signature does not verify: %v", failed.Error)
	case trustpolicy.TypeAuthenticity:
		var inconclusive notationgo.ErrorVerificationInconclusive
		if _, ok := errors.AsType[*signature.SignatureAuthenticityError](failed.Error); ok || errors.As(failed.Error, &inconclusive) {
			return refusal(Untrusted, "its certificate chain is under none of signer %s's CA certificates", signer)
		}
		return refusal(IdentityMismatch, "under signer %s's CA, but %v", signer, failed.Error)
	case trustpolicy.TypeExpiry:
		return refusal(Expired, "signer %s: %v", signer, failed.Error)
	case trustpolicy.TypeAuthenticTimestamp:
		return refusal(Expired, "signer %s: a certificate of its chain is not valid now: %v", signer, failed.Error)
	case trustpolicy.TypeRevocation:
		// notation-go says which only in its message: revoked when it says
		// so, else the status could not be learnt (both refuse).
		if strings.HasSuffix(failed.Error.Error(), " is revoked") {
			return refusal(Revoked, "signer %s: %v", signer, failed.Error)
		}
		return refusal(RevocationUnknown, "signer %s: %v: its CRL distribution point or OCSP responder was not reached (a non-public address is reached only when listed in trust.notation.revocation_hosts) or did not answer with a valid status", signer, failed.Error)
	}
	return refusal(BadSignature, "signer %s: %v", signer, failed.Error)
}
