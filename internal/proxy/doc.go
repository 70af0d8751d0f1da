// Package proxy is trustproxy's HTTP face and its decision: whether a
// request is served, denied or audited, and what the client is sent.
//
// It serves the read-only registry API (/v2/ ping, manifests, blobs,
// tags/list, and the referrers of a manifest the caller may read, with
// referrer artifacts served as artifacts only: referrers.go) and the admin API for posted scan reports. Every request for
// content, and every write, is judged by decide (decide.go), the one place
// a refusal is reached, logged as a decision line and counted in
// trustproxy_decisions_total; every reason a refusal can give, with the
// registry error it is sent as, is in one table (reasons.go); every error
// body is written by writeError (errors.go).
//
// It never parses manifests (internal/manifest; referrers.go reads only a
// referrer's subject and artifactType), reads referrers lists
// (internal/referrers), keeps the reference graph
// (internal/refgraph), downloads blobs (internal/fill), talks to upstreams
// (internal/upstream) or verifies trust data (internal/trust) itself, and
// it does not open its parts: internal/wiring does, from the configuration.
package proxy
