// Package trustserver is a small in-memory Notary server: it serves notary's
// read API (GET /v2/<gun>/_trust/tuf/...) for trust data that it signs itself,
// in process, with the notary library.
//
// It exists for two callers. `trustproxy demo` uses it to show content trust
// end to end with no external binaries and no network. Tests use it to build
// metadata states the real notary-server will not produce, such as a timestamp
// that has already expired.
//
// It is NOT a full Notary server: it has the read API only (no publishing over
// HTTP, no key endpoints, no changefeed), no authentication, and no
// persistence; every key lives in memory and is gone when the process ends.
// What it serves is ordinary TUF metadata, so the real notary client verifies
// it exactly as it verifies notary-server's.
package trustserver
