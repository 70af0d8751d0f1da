// Package cache holds trustproxy's shared state. Today that is the trust
// metadata store: the notary storage.MetadataStore each GUN's TUF client
// reads its cached metadata from and writes verified metadata to.
//
// This is the in-process, on-disk implementation under <data_dir>/trust. Its
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
// It decides nothing about trust. A Redis-backed store shared by several
// replicas is meant to take its place behind the same contract.
package cache
