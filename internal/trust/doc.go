// Package trust decides whether a repository's tags are signed, with Docker
// Content Trust (Notary v1 / TUF), by the signers the operator trusts.
//
// It uses the notary client library for the TUF update workflow (root
// pinning, rotation, thresholds, expiry, version floors) and adds what notary
// leaves out: tighter size caps, a cap on root rotations, timeouts, the
// docker rules for which roles count, the signer policy and a Snapshot with
// reasons. It knows nothing of HTTP routes or registry storage.
package trust
