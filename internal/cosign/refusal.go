package cosign

import (
	"fmt"

	"github.com/opencontainers/go-digest"
)

// Reason is the kind of a verdict. Operators grep logs and metrics for it.
type Reason string

const (
	Verified         Reason = "verified"            // a trusted signer's signature names the digest
	Unsigned         Reason = "unsigned"            // no cosign signature of the digest was found
	UntrustedKey     Reason = "untrusted_key"       // signed, but by no key the rule pins, or with a certificate no CA of the trusted root issued
	IdentityMismatch Reason = "identity_mismatch"   // keyless: a trusted CA's certificate, for a subject or issuer no signer names
	CertExpired      Reason = "certificate_expired" // keyless: the certificate was not valid when the log integrated the entry
	BadSignature     Reason = "bad_signature"       // a signature claims a pinned key and does not verify
	OtherDigest      Reason = "signed_for_other"    // a trusted signature, of another digest
	TooLarge         Reason = "too_large"           // an index, manifest or layer beyond Limits
	NoTlog           Reason = "no_tlog"             // no verified transparency-log entry, and the rule requires one
	Malformed        Reason = "malformed_sig"       // a signature, manifest or index that does not parse
)

// rank orders refusal reasons by how much they say: when no signature of
// a digest verifies, the verdict gives the reason of the one that came
// closest (a trusted key's signature of another digest says more than a
// key nobody pinned).
var rank = map[Reason]int{
	OtherDigest:      9,
	BadSignature:     8,
	IdentityMismatch: 7,
	CertExpired:      6,
	NoTlog:           5,
	UntrustedKey:     4,
	TooLarge:         3,
	Malformed:        2,
	Unsigned:         0,
}

// A RefusalError says why no trusted cosign signature was found for
// Repo@Digest. Its message is written for a person.
type RefusalError struct {
	Repo   string
	Digest digest.Digest
	Reason Reason
	Detail string
}

func (e *RefusalError) Error() string {
	return fmt.Sprintf("%s@%s refused (%s): %s", e.Repo, e.Digest, e.Reason, e.Detail)
}

// finding is what one step found against a signature.
type finding struct {
	reason Reason
	detail string
}

func refusal(r Reason, format string, a ...any) *finding {
	return &finding{reason: r, detail: fmt.Sprintf(format, a...)}
}
