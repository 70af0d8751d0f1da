// Package referrers reads, bounded, what a registry lists as the referrers
// of a manifest digest, and the manifests and blobs those entries name:
// the part of finding signatures that cosign and Notation share.
//
// A listing comes from the OCI referrers API
// (GET /v2/<name>/referrers/<digest>?artifactType=...), or, when the
// registry has none (404, 400, 406, or a 200 that is no OCI index;
// distribution v3.1.2 has none), from the referrers tag schema: the tag
// sha256-<hex> naming an OCI index of the referrers. Every read has a byte
// limit checked before (Content-Length, a descriptor's size) and while
// reading; an index has an entry limit; fetched bytes must hash to the
// digest that named them.
//
// It decides nothing about signatures: which artifact types count, what a
// signature must say, whom it must come from. It keeps no state and
// follows the caller's client (credentials, redirects, egress).
package referrers
