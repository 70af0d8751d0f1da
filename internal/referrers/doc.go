// Package referrers reads the referrers of a manifest digest from a
// registry (OCI distribution spec 1.1), bounded: the referrers API,
// GET /v2/<name>/referrers/<digest>, or, when the registry has none (404,
// 400, 406, or an answer that is no OCI index; distribution v3.1.2 has
// none), the referrers tag schema: the tag sha256-<hex> naming an OCI index
// of the referrers.
//
// Everything read is bounded (Limits): the bytes of the answers together,
// and the entries of the list. A list past either bound is an error
// (ErrTooLarge, ErrTooMany), never a truncated list, so that nobody decides
// on part of what the registry said. A paginated answer (a Link header with
// rel="next") is followed on the same scheme and host while the bounds
// hold.
//
// It reads with the client the caller gives (its credentials, redirects,
// egress). It decides nothing about the referrers it lists: whether one is
// a signature, whether it verifies, whether it may be served are its
// callers' (internal/cosign, internal/proxy).
package referrers
