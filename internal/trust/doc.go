// Package trust decides whether a repository's tags are signed, with Docker
// Content Trust (Notary v1 / TUF), by the signers the operator trusts.
//
// It uses the notary client library for the TUF update workflow (root
// pinning, rotation, thresholds, expiry, version floors) and adds what notary
// leaves out: tighter size caps, a cap on root rotations, timeouts, the
// docker rules for which roles count, the signer policy and a View with
// reasons. It knows nothing of HTTP routes or registry storage. Rules,
// signers and root pins arrive compiled and validated by config.Load; the
// caller finds the rule for a GUN (config.Trust.RuleFor) and applies its
// mode, and trust judges the GUN's trust data by that rule, its root by the
// pins config.Pinning.For gives.
//
// The update is notary's client.LoadTUFRepo, the function behind
// client.NewRepository's reads: it needs no CryptoService, runs once per
// refresh, and yields the verified tuf.Repo whose roles and signatures the
// policy reads directly. Its cache is internal/cache's monotonic store, and
// its remote is notary's HTTPStore over an internal/egress client (which
// decides where credentials and token requests may go), wrapped to bound every response
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
//   - notary skips, with only a warning, a delegation that the snapshot does
//     not list, or that is expired or under its signature threshold, and
//     resolves tags through the roles that remain. trustproxy never does:
//     when a role the rule searches, or a delegation the previous trusted
//     snapshot listed, is missing while its parent still delegates it, the
//     whole repository is refused (rollback when the new snapshot dropped a
//     role the old one listed: TUF 5.5.5; expired; or invalid_metadata).
//     Only the parent's signer can remove a delegation (checkRoles).
//   - A tag counts only if the role's metadata carries a valid signature by
//     one of the role's keys that is one of the rule's signers, matched by
//     public key (the certificate's key, for x509 delegation keys) or by
//     either form of key ID. A rule without signers accepts any valid
//     signature, as the docker CLI did.
//
// notary trusts a cached root without asking the trust pinning again, so a
// change of the operator's pinning would never reach a GUN already cached.
// The cache is therefore opened with the pinning that applies to the GUN now
// and does not hand notary a root accepted under other pinning: the root is
// fetched and checked again, and the cached one stays its version floor, so
// a pinning change never lets an older root back in.
//
// notary ignores cache errors (it logs them): a failed write would leave no
// version floor. Every cache error but "not cached" fails the update.
//
// A View is reused until min(refresh TTL, earliest expiry of the root,
// timestamp, snapshot, targets and the allowed delegations). When the Notary
// server gives no fresh timestamp (unreachable, slow, 404, 5xx), notary falls
// back to the cached one while it is valid. trustproxy counts that as
// unreachable (a warning, trust_refresh_total{result="unreachable"},
// View.Unreachable) and refuses the repository once the last fresh
// timestamp is older than the rule's max_staleness, whatever the cached
// timestamp's own expiry.
package trust
