// Package refgraph records what verified manifests list, so that "is this
// digest listed under that signed manifest?" is a lookup: its parents, then
// whether one of them is a signed target or lies under one (Find).
//
// Everything in a Graph is a fact about content, keyed by digest, true in
// every repository and forever: the manifest of digest M lists these
// children. Only manifests whose bytes verified are recorded. Which parents
// count is never decided here: the caller's trust view says which digests
// are signed targets. The graph on Redis (Shared) holds each record sealed
// with the state key, so a record planted by whoever can write Redis is
// ignored.
package refgraph
