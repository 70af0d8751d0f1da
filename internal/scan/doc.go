// Package scan gates images on vulnerability scans through the Harbor
// Pluggable Scanner Adapter API v1.2 (github.com/goharbor/pluggable-scanner-spec).
//
// The Gate decides whether a manifest passes a rule's scan policy: a fresh
// report (kept by digest in a cache.ReportStore) finding nothing the policy
// blocks. Without one it starts a scan, one per digest however many ask,
// on every configured adapter that consumes the manifest's media type, and
// the policy says what the request gets meanwhile (block, wait, allow).
// Reports posted by CI are accepted through Gate.Accept.
//
// An Adapter is the client of one scanner adapter: Metadata says what it
// scans (Metadata.ReportType picks the report to ask for), Scan submits a
// scan request and Report polls for its result. ParseReport reads a
// HarborVulnerabilityReport and Report.Blocking says what in it blocks an
// image at a severity threshold, both on internal/severity's scale.
// Credentials mints the pull credential a scan request carries, for the
// adapter to pull the image from trustproxy.
//
// Everything an adapter sends is outside input: bodies are size-limited and
// refused, never truncated, when over their limit; a report is accepted only
// when every vulnerability has an id and a severity of the spec's enum, so a
// malformed report cannot pass as a clean one. The Adapter does not
// schedule: when to scan, how often to poll, what to keep and what a failed
// scan means for a pull are its caller's.
package scan
