// Package notation decides whether a manifest digest carries a valid
// Notation (Notary Project) signature from one of the signers a rule pins
// by CA certificates and trusted identities, and says which signer, or
// why not.
//
// Signatures are found as Notation attaches them, with the shared bounded
// reader of internal/referrers and the caller's client: the referrers of
// the digest of artifactType application/vnd.cncf.notary.signature, from
// the OCI referrers API or the referrers tag sha256-<hex>. Each is an OCI
// manifest whose subject must be the digest and whose one layer is a JWS
// (application/jose+json) or COSE (application/cose) envelope.
//
// Before notation-go looks at an envelope, it is read here for what
// bounds it: its certificate chain has at most Limits.Chain certificates
// and no certificate repeats or points back to one before it (a loop).
// Then each signer's notation-go verifier (verifier.NewWithOptions) judges
// it against a trust policy built in memory for that signer alone: a trust
// store of its CA certificates, its trusted identities (x509.subject
// distinguished names, or "*"), the verification level (strict, the
// default, or permissive) and revocation: skipped unless the caller turns
// it on, then enforced at both levels, checked by OCSP and CRL over the
// client the caller hands it (trustproxy's: egress.Public), each CRL kept
// until its NextUpdate (at most 10 minutes, bounded in bytes). A revoked
// certificate is refused revoked; a status that cannot be learnt,
// revocation_unknown.
// Verification levels audit and skip are refused: they do not check that
// a trusted signer signed. A verified envelope must sign the digest asked
// about (its payload's targetArtifact).
//
// Everything read is bounded (Limits): the referrers index in bytes and
// entries, each signature manifest and envelope in bytes (a descriptor
// that claims more is refused without being fetched), the certificates of
// a chain, the signatures examined, and the time of one verification.
//
// It never decides what a rule requires, which signers a repository needs,
// whether a tag may be served, or what the client is sent: it answers for
// one digest. It keeps no state between calls and trusts nothing the
// upstream says that a pinned CA did not certify. notation-go's own
// registry client is not used; its verifier package links it nonetheless.
package notation
