// Package proxy is trustproxy's HTTP surface: the read-only registry API
// (/v2/ ping, manifests, blobs, tags/list) in front of the configured
// upstreams, and the pull-through path onto distribution storage.
//
// Every route to content asks the trust Verifier first; nothing reaches
// storage or an upstream before the request's repository, reference and
// upstream are validated and the reference is known to be signed (or, for
// blobs and child manifests, referenced by a verified manifest of that
// repository). Manifests are fetched by their signed digest, checked against
// the signed sha256 and length, and stored byte for byte. Blobs are fetched
// once per digest however many clients ask, hashed while streaming, and
// committed to storage only when the digest verifies. Refusals are written as
// registry error bodies from one function, writeError.
package proxy
