// Package cache holds trustproxy's durable and shared state: the trust
// metadata store (the notary storage.MetadataStore each GUN's TUF client
// reads its cached metadata from and writes verified metadata to), the
// scan report store, and the sealing of everything replicas share on Redis.
//
// The metadata store lives on disk under <data_dir>/trust. Its
// job beyond notary's FileStore:
//
//   - State is keyed by hash, never by path: each GUN has the directory
//     <hex sha256 of the GUN>, each role one file named by an escaping with
//     no separators. A client choosing repository names, or a signer
//     choosing delegation names, cannot make one GUN's or role's state
//     alias another's.
//   - Nothing is written for a GUN until notary stores verified metadata
//     from its trust server.
//   - The rollback floor: a write never lowers a role's signed version
//     (compare-and-set under a lock, across processes sharing the
//     directory), writes are atomic (temp file and rename), and a stored
//     entry that does not parse is an error, never a silent cache miss,
//     because notary would otherwise re-fetch with a floor of version 1.
//   - A root accepted under other trust pinning is not handed to notary, so
//     it is fetched and checked again, but it stays the floor of the next
//     root stored: changing the pinning never lowers the root version.
//   - Every failure to read or write is returned: notary logs and ignores
//     cache errors, so its caller (internal/trust) must fail closed on them.
//
// With Redis (Shared), the floor, scan reports (ReportStore) and what other
// packages share are kept there too, and Redis is treated as shared
// storage, not a trusted party: every entry is sealed with a key derived
// from the state key for its kind and Redis key name, and what does not
// open is ignored and counted; a newer genuine entry is kept on disk, so a
// replica never goes back when Redis is restored to an older copy; reads
// are bounded in Redis itself. The replicas' shared secrets are derived
// from the state key, never stored on Redis. When Redis does not answer,
// a GUN's disk floor stands alone; a GUN with no timestamp floor on disk
// has none, and its reads and writes fail (FloorUnreadableError) until
// Redis answers, storing nothing. What a GUN stores on disk alone
// meanwhile is pushed up to Redis as soon as it answers again
// (pendingFloors).
//
// It decides nothing about trust: it refuses to lower a version, and
// ignores what it cannot authenticate.
package cache
