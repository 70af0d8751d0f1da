// Package config is trustproxy's configuration: the YAML schema, the embedded
// default, TRUSTPROXY_* environment overrides and validation with errors that
// name the field at fault.
package config
