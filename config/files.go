package config

import (
	"reflect"
	"slices"
)

// Files are the files c names (keys, certificates, CA bundles, secrets),
// sorted and without repeats: a configuration reload watches them with the
// configuration file itself.
func (c *Config) Files() []string {
	files := []string{c.TLS.CertFile, c.TLS.KeyFile, c.Scan.ReportTokenFile, c.Redis.PasswordFile, c.Redis.SentinelPasswordFile, c.Redis.StateKeyFile, c.Redis.TLS.CAFile,
		c.Redis.PeerTLS.CAFile, c.Redis.PeerTLS.CertFile, c.Redis.PeerTLS.KeyFile}
	for _, u := range c.Upstreams {
		files = append(files, u.CAFile, u.PasswordFile, u.DockerConfig,
			u.Notary.CAFile, u.Notary.PasswordFile, u.Notary.DockerConfig)
	}
	for _, f := range c.Trust.Pinning.CA {
		files = append(files, f)
	}
	for _, s := range c.Trust.Signers {
		files = append(files, s.PublicKey, s.CosignKey, s.NotationCA)
	}
	files = append(files, c.Trust.Cosign.TrustedRoot)
	for _, s := range c.Scan.Scanners {
		files = append(files, s.CAFile, s.AuthorizationFile)
	}
	files = slices.DeleteFunc(files, func(f string) bool { return f == "" })
	slices.Sort(files)
	return slices.Compact(files)
}

// RestartNeeded names the settings of next that differ from those of c and
// take effect only at a restart: what the listeners, storage, Redis, the
// limits and the scan gate's scanners were built from. The others (the
// upstreams, trust, the scan policies in the rules, the report token, the
// log level) change while trustproxy runs.
func (c *Config) RestartNeeded(next *Config) []string {
	var fields []string
	for _, f := range []struct {
		name      string
		was, will any
	}{
		{"listen", c.Listen, next.Listen},
		{"tls", c.TLS, next.TLS},
		{"data_dir", c.DataDir, next.DataDir},
		{"storage", c.Storage, next.Storage},
		{"storage_verify_blobs", c.VerifyStoredBlobs(), next.VerifyStoredBlobs()},
		{"redis", c.Redis, next.Redis},
		{"limits", c.Limits, next.Limits},
		{"retention", c.Retention, next.Retention},
		{"metrics", c.Metrics, next.Metrics},
		{"debug", c.Debug, next.Debug},
		{"scan.registry_url", c.Scan.RegistryURL, next.Scan.RegistryURL},
		{"scan.scanners", c.Scan.Scanners, next.Scan.Scanners},
		{"scan.credential_ttl", c.Scan.CredentialTTL, next.Scan.CredentialTTL},
		{"scan.timeout", c.Scan.Timeout, next.Scan.Timeout},
	} {
		if !reflect.DeepEqual(f.was, f.will) {
			fields = append(fields, f.name)
		}
	}
	return fields
}

// KeepRestartSettings returns next with c's values for the settings
// RestartNeeded names: what a running trustproxy applies of next.
func (c *Config) KeepRestartSettings(next *Config) *Config {
	kept := *next
	kept.Listen, kept.TLS, kept.DataDir, kept.Storage, kept.Redis = c.Listen, c.TLS, c.DataDir, c.Storage, c.Redis
	kept.StorageVerifyBlobs = c.StorageVerifyBlobs
	kept.Limits, kept.Metrics, kept.Debug = c.Limits, c.Metrics, c.Debug
	kept.Scan.RegistryURL, kept.Scan.Scanners, kept.Scan.CredentialTTL, kept.Scan.Timeout =
		c.Scan.RegistryURL, c.Scan.Scanners, c.Scan.CredentialTTL, c.Scan.Timeout
	return &kept
}
