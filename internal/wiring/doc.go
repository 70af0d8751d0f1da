// Package wiring opens the parts trustproxy serves with from its
// configuration alone, and hands them to the proxy: shared state on Redis
// (sealed with the state key), distribution storage (stale uploads purged),
// the trust verifier, the scan gate and its credentials, the reference
// graph, the pull records and the storage collector (retention). It decides nothing about requests; it decides only what is built
// from which setting, so that cmd reads as: load config, open, serve.
package wiring
