package notation

import (
	"fmt"

	"github.com/opencontainers/go-digest"
)

// Reason is the kind of a verdict. Operators grep logs and metrics for it.
type Reason string

const (
	Verified         Reason = "verified"          // a trusted signer's signature names the digest
	Unsigned         Reason = "unsigned"          // no Notation signature of the digest was found
	Untrusted        Reason = "untrusted"         // signed, but under no CA the rule pins
	IdentityMismatch Reason = "identity_mismatch" // under a pinned CA, by a subject the signer does not trust
	BadSignature     Reason = "bad_signature"     // an envelope whose signature or chain does not verify
	Expired          Reason = "expired"           // the signature or a certificate of its chain is expired
	Revoked          Reason = "revoked"           // a certificate of the chain is revoked (revocation on)
	// RevocationUnknown: revocation on, and a certificate's status could not
	// be learnt (its CRL or OCSP responder unreachable, or its answer invalid).
	RevocationUnknown Reason = "revocation_unknown"
	OtherDigest       Reason = "signed_for_other" // a signature, of another digest
	TooLarge          Reason = "too_large"        // an index, manifest, envelope or chain beyond Limits
	Malformed         Reason = "malformed_sig"    // a signature, manifest, envelope or index that does not parse
)

// rank orders refusal reasons by how much they say: when no signature of
// a digest verifies, the verdict gives the reason of the one that came
// closest (a trusted signer's revoked certificate says more than a CA
// nobody pinned).
var rank = map[Reason]int{
	Revoked:           10,
	RevocationUnknown: 9,
	OtherDigest:       8,
	IdentityMismatch:  7,
	Expired:           6,
	BadSignature:      5,
	Untrusted:         4,
	TooLarge:          3,
	Malformed:         2,
	Unsigned:          0,
}

// A RefusalError says why no trusted Notation signature was found for
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
