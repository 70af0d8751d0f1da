// Package cosign decides whether a manifest digest carries a valid cosign
// signature from one of the signers a rule pins, by public key (ECDSA
// P-256, Ed25519 or RSA, PEM) or, keyless, by certificate identity (OIDC
// issuer and subject, exact or by anchored regexp), and says which signer,
// or why not.
//
// Signatures are found where cosign puts them, in this order, all read
// with the client the caller gives (its credentials, redirects, egress):
//   - the OCI referrers API, GET /v2/<name>/referrers/<digest>?artifactType=...;
//   - when the registry has none (404, 400, 406, or no index; distribution
//     v3.1.2 has none), the referrers tag schema: the tag sha256-<hex>
//     naming an OCI index of the referrers;
//   - the legacy tag sha256-<hex>.sig: simple-signing layers whose
//     dev.cosignproject.cosign/signature annotation signs the layer.
//
// A referrer counts when its artifactType is a Sigstore bundle v0.3 (what
// cosign v3 writes) whose DSSE envelope holds an in-toto statement of
// predicate type https://sigstore.dev/cosign/sign/v1 (attestations are not
// signatures) whose subject names the digest. A legacy signature counts when
// its simple-signing payload's critical.image.docker-manifest-digest is the
// digest. Bundles are verified with sigstore-go (verify.NewVerifier over
// trusted material made of the pinned keys).
//
// A bundle signed with a certificate (keyless) is verified against the
// trusted root alone, offline: the certificate chains to one of its
// certificate authorities (else untrusted_key), the bundle carries a
// transparency-log entry with its inclusion proof that verifies against
// one of its Rekor logs, whatever AllowNoTlog says (else no_tlog), the
// certificate was valid at the entry's integrated time (else
// certificate_expired), the signature verifies, and the certificate's
// issuer and subject match a signer's Identity (else identity_mismatch,
// saying which). The signer named is the one whose identity matched. A
// bundle carrying a certificate chain is refused unread: a v0.3 bundle
// holds the leaf, the chain is the trusted root's.
//
// Without AllowNoTlog, a keyed signature must carry a transparency-log entry that
// verifies against the Rekor logs of the trusted root the caller gives; a
// keyed signature made with --tlog-upload=false is then refused (no_tlog).
// Legacy signatures are accepted only under AllowNoTlog: their Rekor bundle
// annotation is not verified here.
//
// Everything read is bounded (Limits): the referrers index in bytes and
// entries, each signature manifest and layer in bytes (a descriptor that
// claims more is refused without being fetched), the signatures examined,
// and the time of one verification. Bytes are checked against the digest
// that named them.
//
// It never decides what a rule requires, which signers a repository needs,
// whether a tag may be served, or what the client is sent: it answers for
// one digest. It keeps no state between calls and trusts nothing the
// upstream says that no pinned key, or certificate of a trusted CA, signed.
package cosign
