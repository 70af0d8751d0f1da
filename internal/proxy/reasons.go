package proxy

import (
	"github.com/distribution/distribution/v3/registry/api/errcode"

	"github.com/trustproxy/trustproxy/internal/scan"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// Reason is why a Decision went as it did: ReasonVerified when a request
// is served, else its refusal's reason. Operators grep decision lines and
// the trustproxy_decisions_total{reason} label for it.
type Reason string

// ReasonVerified is the reason of a Served decision.
const ReasonVerified Reason = "verified"

// The proxy's own refusal reasons: what the content or the request, not
// the trust data or a scan report, gave away.
const (
	ReasonDigestMismatch  Reason = "digest_mismatch"  // the upstream's bytes do not match the signed digest or size
	ReasonInvalidManifest Reason = "invalid_manifest" // the signed manifest is malformed, ambiguous or over the limit
	ReasonNotReferenced   Reason = "not_referenced"   // no verified manifest of the repository lists the blob
	ReasonReadOnly        Reason = "read_only"        // a write: trustproxy serves, it does not host pushes
	ReasonScanCredential  Reason = "scan_credential"  // a scanner's pull credential used for what it was not minted for
)

// The refusal reasons of digest sources (cosign, notation) beyond those they share
// with Notary (not_signed, untrusted_signer).
const (
	// ReasonInvalidSignature: a signature claims a trusted key and does not
	// verify, signs another digest, does not parse, or is over the limits.
	ReasonInvalidSignature Reason = "invalid_signature"
	// ReasonNoTlog: signed by a trusted key, without the verified
	// transparency-log entry the rule requires (allow_no_tlog is off).
	ReasonNoTlog Reason = "no_tlog"
	// ReasonIdentityMismatch: signed under a trusted CA by a certificate
	// whose identity no signer of the rule names: a keyless cosign
	// certificate's subject or issuer, or one Notation's trusted identities
	// do not list.
	ReasonIdentityMismatch Reason = "identity_mismatch"
	// ReasonCertificateExpired: the signing certificate was not valid when
	// it signed (keyless cosign: when the log integrated the entry) or has
	// expired under a Notation verification level that enforces expiry.
	ReasonCertificateExpired Reason = "certificate_expired"
	// ReasonRevoked: a certificate of the signature's chain is revoked
	// (Notation, with trust.notation.revocation on).
	ReasonRevoked Reason = "revoked"
	// ReasonRevocationUnknown: revocation on, and the status of a
	// certificate of the chain could not be learnt (its CRL or OCSP
	// responder unreachable, not allowed, or answering invalidly).
	ReasonRevocationUnknown Reason = "revocation_unknown"
)

// A reasonSource is the part of trustproxy a reason comes from.
type reasonSource string

const (
	fromTrust   reasonSource = "trust"   // the repository's trust data (trust.Reason)
	fromContent reasonSource = "content" // the bytes the upstream sent, or what verified manifests list
	fromScan    reasonSource = "scan"    // the scan gate (scan.Verdict.Reason)
	fromRequest reasonSource = "request" // the request itself, whatever the rule
)

// A reasonRule is what a refusal of one reason is: where the reason comes
// from, and the registry error the client gets (its HTTP status is the
// code's). A refusal of an auditable reason is served unverified under a
// rule in audit mode; the others are refused under every rule.
type reasonRule struct {
	source    reasonSource
	code      errcode.ErrorCode
	auditable bool
}

// reasons is every reason a refusal can give, and what it is: the one
// answer to "what can a refusal say". A reference that a verified trust
// view simply does not hold is 404 MANIFEST_UNKNOWN or BLOB_UNKNOWN, as the
// distribution spec answers for content a registry does not have; a
// reference, repository or content that fails a policy is 403 DENIED
// (docs/ARCHITECTURE.md, "Refusals").
var reasons = map[Reason]reasonRule{
	Reason(trust.NoRule):           {fromTrust, errcode.ErrorCodeDenied, true},
	Reason(trust.NoTrustServer):    {fromTrust, errcode.ErrorCodeDenied, true},
	Reason(trust.NoTrustData):      {fromTrust, errcode.ErrorCodeDenied, true},
	Reason(trust.NotPinned):        {fromTrust, errcode.ErrorCodeDenied, true},
	Reason(trust.NotSigned):        {fromTrust, errcode.ErrorCodeManifestUnknown, true},
	Reason(trust.UntrustedSigner):  {fromTrust, errcode.ErrorCodeDenied, true},
	Reason(trust.Expired):          {fromTrust, errcode.ErrorCodeDenied, true},
	Reason(trust.InvalidMetadata):  {fromTrust, errcode.ErrorCodeDenied, true},
	Reason(trust.Rollback):         {fromTrust, errcode.ErrorCodeDenied, true},
	Reason(trust.TrustUnavailable): {fromTrust, errcode.ErrorCodeDenied, true},

	ReasonInvalidSignature:   {fromTrust, errcode.ErrorCodeDenied, true},
	ReasonNoTlog:             {fromTrust, errcode.ErrorCodeDenied, true},
	ReasonIdentityMismatch:   {fromTrust, errcode.ErrorCodeDenied, true},
	ReasonCertificateExpired: {fromTrust, errcode.ErrorCodeDenied, true},
	ReasonRevoked:            {fromTrust, errcode.ErrorCodeDenied, true},
	ReasonRevocationUnknown:  {fromTrust, errcode.ErrorCodeDenied, true},

	ReasonDigestMismatch:  {fromContent, errcode.ErrorCodeDenied, true},
	ReasonInvalidManifest: {fromContent, errcode.ErrorCodeDenied, true},
	ReasonNotReferenced:   {fromContent, errcode.ErrorCodeBlobUnknown, true},

	scan.ReasonVulnerable:  {fromScan, errcode.ErrorCodeDenied, true},
	scan.ReasonPending:     {fromScan, errcode.ErrorCodeDenied, true},
	scan.ReasonMissing:     {fromScan, errcode.ErrorCodeDenied, true},
	scan.ReasonUnavailable: {fromScan, errcode.ErrorCodeDenied, true},

	ReasonReadOnly:       {fromRequest, errcode.ErrorCodeDenied, false},
	ReasonScanCredential: {fromRequest, errcode.ErrorCodeDenied, false},
}

// A Refusal is why a request is not served: a reason of the table above,
// and what happened, for a person.
type Refusal struct {
	Reason Reason
	GUN    string
	Ref    string // the tag or digest asked for; "" when the whole repository is refused
	Detail string
	Err    error // the error behind it, if any
}

// Error reads as trust's refusals do: "<gun>[:tag|@digest] refused
// (<reason>): <detail>".
func (r *Refusal) Error() string {
	return (&trust.RefusalError{GUN: r.GUN, Ref: r.Ref, Reason: trust.Reason(r.Reason), Detail: r.Detail, Err: r.Err}).Error()
}

func (r *Refusal) Unwrap() error { return r.Err }

// refusalOf is trust's refusal r as the proxy's.
func refusalOf(r *trust.RefusalError) *Refusal {
	return &Refusal{Reason: Reason(r.Reason), GUN: r.GUN, Ref: r.Ref, Detail: r.Detail, Err: r.Err}
}

// registryError is the registry error code a refusal of reason is sent as.
func registryError(reason Reason) errcode.ErrorCode {
	if r, ok := reasons[reason]; ok {
		return r.code
	}
	return errcode.ErrorCodeDenied
}
