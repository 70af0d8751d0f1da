// Package cache holds trustproxy's shared state. Today that is the trust
// metadata store: the notary storage.MetadataStore each GUN's TUF client
// reads its cached metadata from and writes verified metadata to.
//
// This is the in-process, on-disk implementation: one directory per GUN under
// <data_dir>/trust. Its job beyond notary's FileStore is to keep the rollback
// floor: a write never lowers a role's signed version (compare-and-set under
// a lock), writes are atomic (temp file and rename), and a stored entry that
// does not parse is an error, never a silent cache miss, because notary would
// otherwise re-fetch with a floor of version 1.
//
// It decides nothing about trust; internal/trust uses it. A Redis-backed store
// shared by several replicas is meant to take its place behind the same
// storage.MetadataStore contract.
package cache
