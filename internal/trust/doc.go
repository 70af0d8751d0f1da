// Package trust decides whether a repository's tags are signed, with Docker
// Content Trust (Notary v1 / TUF), by the signers the operator trusts.
//
// It uses the notary client library for the TUF update workflow (root
// pinning, rotation, thresholds, expiry, version floors) and adds what notary
// leaves out: tighter size caps, a cap on root rotations, timeouts, the
// docker rules for which roles count, the signer policy and a Snapshot with
// reasons. It knows nothing of HTTP routes or registry storage.
//
// The update is notary's client.LoadTUFRepo, the function behind
// client.NewRepository's reads: it needs no CryptoService, runs once per
// refresh, and yields the verified tuf.Repo whose roles and signatures the
// policy reads directly. Its cache is internal/cache's monotonic store, and
// its remote is notary's HTTPStore wrapped to bound every response
// (limits.*_bytes), the versioned roots walked (limits.max_root_rotations),
// the delegation roles fetched (limits.max_delegations) and the time taken
// (twice limits.upstream_timeout) in one update.
//
// Which target counts, for a tag (docker semantics):
//   - Only the rule's roles count, default [targets/releases, targets], and
//     only those exact roles: a tag in targets/evil, or in a child such as
//     targets/releases/x, is not signed unless the rule lists that role.
//   - The first of those roles that holds the tag decides. If its signers do
//     not satisfy the rule the tag is refused (untrusted_signer); it does not
//     fall through to a later role.
//   - notary skips a delegation that is expired or under its signature
//     threshold, with only a warning. Such a role holds nothing here, so its
//     tags fall through: with the default roles, a tag in an expired
//     targets/releases resolves through targets if targets has it, and is
//     not signed otherwise.
//   - A tag counts only if the role's metadata carries a valid signature by
//     one of the role's keys that is one of the rule's signers, matched by
//     public key (the certificate's key, for x509 delegation keys) or by
//     either form of key ID. A rule without signers accepts any valid
//     signature, as the docker CLI did.
//
// notary trusts a cached root without asking the trust pinning again, so a
// change of the operator's pinning would never reach a GUN already cached.
// Each update therefore compares the pinning that applies to the GUN with the
// one its cached root was accepted under, and drops the cached root when they
// differ (cache.GUNStore.RepinRoot); the other roles keep their version floors.
//
// A Snapshot is reused until min(refresh TTL, earliest expiry of the root,
// timestamp, snapshot, targets and the allowed delegations). When the Notary
// server is unreachable, notary falls back to the cached metadata while the
// cached timestamp is valid; that is logged as a warning.
package trust
