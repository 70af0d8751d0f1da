// Package manifest decides whether bytes are one well-formed, unambiguous
// image manifest or index of a given digest and size, within trustproxy's
// limits, and reads what it lists (an index's platform manifests, an
// image's config and layers).
//
// It never fetches, stores or trusts anything: its callers hand it bytes
// from an upstream or from storage, and the digest those bytes must have
// (a signed target's, or one a verified manifest lists).
package manifest
