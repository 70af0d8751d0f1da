// Package retention decides which stored content may be removed, and
// removes it while the proxy serves: an online collector over
// distribution's storage, configured by retention.max_age and
// retention.max_bytes.
//
// What it decides. A repository is live when one of its manifests was
// pulled within max_age (Pulls records each pull, at the served-manifest
// decision). Never removed: every manifest that is a current signed
// target of a live repository (its trust view, taken through the same
// trust.Verifier the proxy uses) and everything it references, transitively
// (an index's platform manifests, their configs and layers), read from the
// stored manifests; when a live repository's trust data cannot be verified
// now, everything stored for it. Removed: every other blob not used (pulled,
// or written) within max_age; then, while storage is over max_bytes, the
// least recently used of the others. A blob is one object in distribution's
// storage whatever repositories link it, so a layer shared by a live and an
// expired image stays, and the expired image's own blobs go.
//
// How it stays out of the way. The sweep checks each removal again just
// before it: the pull records are read again (at least every two seconds),
// and a manifest pulled since the collection began protects what it
// references; a blob that a fill is writing (this process's fills, or a
// fill lock of another replica on Redis) or that was written within the
// last minute stays. A pull that still meets a removed blob, in the moment
// between the last check and the removal, finds it missing and fetches it
// again from the upstream, as for a blob never stored (proxy/blob.go). A
// removal takes a blob's links in every repository (_layers, manifest
// revisions, tag index entries), then its data.
//
// Across replicas. Collections take turns through a lease on Redis
// (cache.Lease, kind KindRetention), refreshed while a collection runs
// and kept after it, marked done, until the next is due (ReleaseFor), so
// that N replicas make one collection per interval; a lock deleted or
// altered on Redis during a collection is taken back by its holder, not
// given up. Pull records are kept in the shared storage, not on Redis:
// whoever can write Redis cannot make live content look unpulled, and at
// worst makes two replicas collect at once (deleting the lock), which
// removes nothing that one alone would keep, or makes collections skip by
// rewriting the lock faster than a replica can swap it.
//
// What it never does: decide whether a request is served (proxy), verify
// trust data itself (trust), or remove uploads in progress (wiring purges
// stale ones at start). It reads storage as distribution lays it out.
package retention
