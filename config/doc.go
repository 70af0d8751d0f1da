// Package config is trustproxy's configuration: the YAML schema, the embedded
// default, TRUSTPROXY_* environment overrides and validation with errors that
// name the field at fault.
//
// Load decides whether a configuration is well formed: keys known, words of
// enums known, files present and parseable as PEM, patterns, names and key
// IDs well formed, limits positive. It is the only place configuration is
// validated, and it compiles Trust once, so that nothing is parsed per
// request: each signer's public keys (every PEM block of its file, as PKIX
// DER), the root pins (certificate IDs by GUN, CA files by GUN prefix),
// each rule's repositories pattern, each rule's signers resolved into
// pointers to Trust.Signers, and each rule's scan policy, whose severity (a
// severity.Level) and missing (a Missing) are decoded into their types.
// Trust.RuleFor is the one way to find the rule for a GUN, and
// Pinning.For the one way to find its pins.
// Load leaves what the settings mean to others: internal/trust judges trust
// data by the rule its caller found, internal/proxy builds storage from
// Storage and clients from Upstreams.
package config
