// Package config is trustproxy's configuration: the YAML schema, the embedded
// default, TRUSTPROXY_* environment overrides and validation with errors that
// name the field at fault.
//
// Load decides whether a configuration is well formed: keys known, files
// present and parseable as PEM, patterns, names and key IDs well formed,
// limits positive. It leaves what the settings mean to others: internal/trust
// compiles Trust into a policy, internal/proxy builds storage from Storage and
// clients from Upstreams. Rule.Matches and Config.RuleFor are the one
// definition of how a rule's pattern matches a GUN.
package config
