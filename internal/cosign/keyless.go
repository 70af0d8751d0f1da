package cosign

import (
	"encoding/asn1"
	"fmt"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"
	"github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
)

// verifyKeyless verifies b, signed with a certificate: the certificate
// chains to a CA of the trusted root; its log entry, with its inclusion
// proof, verifies against a log of the trusted root, and the certificate
// was valid at the entry's integrated time; the signature verifies with
// the certificate's key; the certificate names the identity of one of the
// rule's signers (that signer is the answer); the statement signs dgst.
// Each failure has its reason, in that order. Nothing is fetched.
func (v *Verifier) verifyKeyless(b *bundle.Bundle, dgst digest.Digest) (string, *finding) {
	if v.keyless == nil {
		return "", refusal(UntrustedKey, "signed with a certificate (keyless); this rule's signers pin no identity (cosign_identity)")
	}
	vc, err := b.VerificationContent()
	if err != nil || vc.Certificate() == nil {
		return "", refusal(Malformed, "its certificate does not parse: %v", err)
	}
	leaf := vc.Certificate()
	sum, err := certificate.SummarizeCertificate(leaf)
	if err != nil {
		return "", refusal(Malformed, "its certificate does not read as a Fulcio certificate: %v", err)
	}
	who := fmt.Sprintf("subject %q, issuer %q", sum.SubjectAlternativeName, sum.Issuer)
	// Go does not handle an OtherName SAN, which Fulcio may write and
	// SummarizeCertificate read; sigstore-go drops it before the chain is
	// verified, as here.
	var unhandled []asn1.ObjectIdentifier
	for _, oid := range leaf.UnhandledCriticalExtensions {
		if !oid.Equal(cryptoutils.SANOID) {
			unhandled = append(unhandled, oid)
		}
	}
	leaf.UnhandledCriticalExtensions = unhandled
	// The issuer first, at a time the certificate itself claims: a
	// stranger's certificate is untrusted whenever it was logged.
	if _, err := verify.VerifyLeafCertificate(leaf.NotBefore, leaf, v.root); err != nil {
		return "", refusal(UntrustedKey, "its certificate (%s) was not issued by a certificate authority of the trusted root: %v", who, err)
	}
	entries, err := b.TlogEntries()
	if err != nil {
		return "", refusal(Malformed, "its transparency-log entries do not read: %v", err)
	}
	if len(entries) == 0 {
		return "", refusal(NoTlog, "signed with a certificate (%s) and no transparency-log entry; a keyless signature counts only with one, whatever allow_no_tlog says", who)
	}
	stamps, err := verify.VerifyTlogEntry(b, v.root, 1, true)
	if err != nil {
		for _, e := range entries {
			if t := e.IntegratedTime(); t.Before(leaf.NotBefore) || t.After(leaf.NotAfter) {
				return "", refusal(CertExpired, "its certificate (%s) is valid from %s to %s, and its transparency-log entry was integrated at %s",
					who, stamp(leaf.NotBefore), stamp(leaf.NotAfter), stamp(t))
			}
		}
		return "", refusal(NoTlog, "signed with a certificate (%s); its transparency-log entry does not verify against the logs of the trusted root: %v", who, err)
	}
	for _, t := range stamps {
		if _, err := verify.VerifyLeafCertificate(t.Time, leaf, v.root); err != nil {
			return "", refusal(UntrustedKey, "its certificate (%s) does not chain to a certificate authority of the trusted root valid at its log time %s: %v", who, stamp(t.Time), err)
		}
	}
	res, err := v.keyless.Verify(b, verify.NewPolicy(verify.WithoutArtifactUnsafe(), verify.WithoutIdentitiesUnsafe()))
	if err != nil {
		return "", refusal(BadSignature, "signed with a certificate (%s) whose signature does not verify: %v", who, err)
	}
	got := *res.Signature.Certificate
	var signer string
	for _, id := range v.identities {
		if id.cert.Verify(got) == nil {
			signer = id.name
			break
		}
	}
	if signer == "" {
		return "", identityMismatch(v.identities, got, who)
	}
	if f := signs(signer, res.Statement, dgst); f != nil {
		return "", f
	}
	return signer, nil
}

// identityMismatch says why got is none of ids: its issuer, when no
// identity names it, else its subject.
func identityMismatch(ids []identified, got certificate.Summary, who string) *finding {
	var want []string
	issuer := false
	for _, id := range ids {
		want = append(want, fmt.Sprintf("%s (%s)", id.name, id.id))
		if id.cert.Issuer.Verify(got) == nil {
			issuer = true
		}
	}
	if !issuer {
		return refusal(IdentityMismatch, "issuer mismatch: a trusted certificate authority certified %s, and no signer of this rule names that issuer: %s",
			who, strings.Join(want, "; "))
	}
	return refusal(IdentityMismatch, "subject mismatch: a trusted certificate authority certified %s, and no signer of this rule names that subject with that issuer: %s",
		who, strings.Join(want, "; "))
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }
