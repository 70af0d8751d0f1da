// Package upstream decides which configured registry a repository name goes
// to, and fetches raw content from it: manifests by tag or digest (bounded),
// blob responses, blob lengths and tag lists, each request with a pull token
// for the one repository.
//
// The set of registries is static: a request chooses one by name only, and
// no URL is ever built from request input but the repository path and
// reference, already validated. Nothing fetched here is checked or trusted
// here; its callers verify every byte against signed digests. Failures are
// *Error values that carry the registry error the client is sent.
package upstream
