package config

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/trustproxy/trustproxy/internal/severity"
)

// defaultYAML is the configuration used when none is given.
//
//go:embed default.yaml
var defaultYAML []byte

// Load decodes a YAML configuration from r, applies the TRUSTPROXY_*
// overrides found in env (KEY=value strings as os.Environ returns them; the
// last of a key wins, empty values are ignored), fills defaults and validates
// the result. Input holding no YAML document (empty, or only comments) means
// the embedded default. Unknown keys are errors naming the key and its line;
// validation errors name the field, e.g. trust.rules[1].repositories, and
// several are joined with newlines; no error shows a password. Relative file
// paths are relative to the working directory.
//
// The overrides, each replacing what the file says:
//
//	TRUSTPROXY_LISTEN            listen
//	TRUSTPROXY_METRICS_LISTEN    metrics.listen
//	TRUSTPROXY_DATA_DIR          data_dir
//	TRUSTPROXY_LOG_LEVEL         log.level
//	TRUSTPROXY_UPSTREAM_NAME     upstreams[0].name
//	TRUSTPROXY_UPSTREAM_URL      upstreams[0].url
//	TRUSTPROXY_UPSTREAM_USERNAME upstreams[0].username
//	TRUSTPROXY_UPSTREAM_PASSWORD upstreams[0].password
//	TRUSTPROXY_UPSTREAM_PASSWORD_FILE upstreams[0].password_file
//	TRUSTPROXY_UPSTREAM_DOCKER_CONFIG upstreams[0].docker_config
//	TRUSTPROXY_NOTARY_URL        upstreams[0].notary.url
//	TRUSTPROXY_REPLICA_URL       redis.replica_url
//	TRUSTPROXY_NOTARY_CA_FILE    upstreams[0].notary.ca_file
//	TRUSTPROXY_NOTARY_USERNAME   upstreams[0].notary.username
//	TRUSTPROXY_NOTARY_PASSWORD   upstreams[0].notary.password
//	TRUSTPROXY_NOTARY_PASSWORD_FILE upstreams[0].notary.password_file
//	TRUSTPROXY_NOTARY_DOCKER_CONFIG upstreams[0].notary.docker_config
//
// When the file lists no upstream, upstreams[0] is the default one, docker.io.
// A URL set from env drops the token_realms (and redirect_hosts) written for
// the URL it replaces. Other TRUSTPROXY_ variables are left to the caller.
func Load(r io.Reader, env []string) (*Config, error) {
	return load(r, env, "")
}

// LoadFile is Load on the file at path, except that relative paths written
// in the file (tls files, ca_file, password_file and docker_config of
// upstreams and notary servers, pinning CA
// files, signer public keys, storage.filesystem.rootdirectory and data_dir)
// are relative to the file's folder. Paths from env or from defaults stay
// relative to the working directory.
func LoadFile(path string, env []string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	c, err := load(f, env, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// load is Load, resolving relative paths of the file against dir unless dir
// is empty.
func load(r io.Reader, env []string, dir string) (*Config, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	c, err := decode(b)
	if errors.Is(err, io.EOF) {
		c, err = decode(defaultYAML)
		dir = "" // the default's paths are not the file's
	}
	if err != nil {
		return nil, fmt.Errorf("decode config: %w", err)
	}
	if dir != "" {
		c.resolve(dir)
	}
	c.applyEnv(env)
	c.setDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// decode reads the one YAML document in b, rejecting unknown keys. It returns
// io.EOF when b holds no document.
func decode(b []byte) (*Config, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	c := new(Config)
	if err := dec.Decode(c); err != nil {
		if te, ok := errors.AsType[*yaml.TypeError](err); ok {
			for i, e := range te.Errors {
				// yaml.v3 says "line N: field K not found in type config.T".
				line, rest, _ := strings.Cut(e, ": field ")
				if key, _, ok := strings.Cut(rest, " not found in type "); ok {
					te.Errors[i] = fmt.Sprintf("%s: unknown key %q; config/trustproxy.yaml shows every option", line, key)
				}
			}
		}
		return nil, err
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		return nil, fmt.Errorf("line %d: a second YAML document; keep the whole configuration in one", next.Line)
	case !errors.Is(err, io.EOF):
		return nil, err
	}
	return c, nil
}

// resolve makes the relative file paths written in the file relative to dir.
func (c *Config) resolve(dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.DataDir)
	abs(&c.TLS.CertFile)
	abs(&c.TLS.KeyFile)
	for i := range c.Upstreams {
		for _, e := range []*Endpoint{&c.Upstreams[i].Endpoint, &c.Upstreams[i].Notary} {
			abs(&e.CAFile)
			abs(&e.PasswordFile)
			abs(&e.DockerConfig)
		}
	}
	for prefix, file := range c.Trust.Pinning.CA {
		abs(&file)
		c.Trust.Pinning.CA[prefix] = file
	}
	abs(&c.Trust.Cosign.TrustedRoot)
	for i := range c.Trust.Signers {
		abs(&c.Trust.Signers[i].PublicKey)
		abs(&c.Trust.Signers[i].CosignKey)
	}
	abs(&c.Scan.ReportTokenFile)
	abs(&c.Redis.PasswordFile)
	abs(&c.Redis.SentinelPasswordFile)
	abs(&c.Redis.StateKeyFile)
	abs(&c.Redis.TLS.CAFile)
	abs(&c.Redis.PeerTLS.CAFile)
	abs(&c.Redis.PeerTLS.CertFile)
	abs(&c.Redis.PeerTLS.KeyFile)
	for i := range c.Scan.Scanners {
		abs(&c.Scan.Scanners[i].CAFile)
		abs(&c.Scan.Scanners[i].AuthorizationFile)
	}
	if root, ok := c.Storage["filesystem"]["rootdirectory"].(string); ok {
		abs(&root)
		c.Storage["filesystem"]["rootdirectory"] = root
	}
}

// applyEnv applies the TRUSTPROXY_* overrides listed on Load.
func (c *Config) applyEnv(env []string) {
	vars := make(map[string]string)
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, "TRUSTPROXY_") && v != "" {
			vars[k] = v
		}
	}
	if len(vars) == 0 {
		return
	}
	if len(c.Upstreams) == 0 {
		c.Upstreams = []Upstream{defaultUpstream()}
	}
	u := &c.Upstreams[0]
	// Token realms and redirect hosts belong to the URL they were written
	// for: a URL from env drops them.
	if v, ok := vars["TRUSTPROXY_UPSTREAM_URL"]; ok && v != u.URL {
		u.TokenRealms, u.RedirectHosts = nil, nil
	}
	if v, ok := vars["TRUSTPROXY_NOTARY_URL"]; ok && v != u.Notary.URL {
		u.Notary.TokenRealms = nil
	}
	for key, field := range map[string]*string{
		"TRUSTPROXY_LISTEN":                 &c.Listen,
		"TRUSTPROXY_METRICS_LISTEN":         &c.Metrics.Listen,
		"TRUSTPROXY_DATA_DIR":               &c.DataDir,
		"TRUSTPROXY_LOG_LEVEL":              &c.Log.Level,
		"TRUSTPROXY_UPSTREAM_NAME":          &u.Name,
		"TRUSTPROXY_UPSTREAM_URL":           &u.URL,
		"TRUSTPROXY_UPSTREAM_USERNAME":      &u.Username,
		"TRUSTPROXY_UPSTREAM_PASSWORD":      &u.Password,
		"TRUSTPROXY_UPSTREAM_PASSWORD_FILE": &u.PasswordFile,
		"TRUSTPROXY_UPSTREAM_DOCKER_CONFIG": &u.DockerConfig,
		"TRUSTPROXY_NOTARY_URL":             &u.Notary.URL,
		"TRUSTPROXY_NOTARY_CA_FILE":         &u.Notary.CAFile,
		"TRUSTPROXY_NOTARY_USERNAME":        &u.Notary.Username,
		"TRUSTPROXY_NOTARY_PASSWORD":        &u.Notary.Password,
		"TRUSTPROXY_NOTARY_PASSWORD_FILE":   &u.Notary.PasswordFile,
		"TRUSTPROXY_NOTARY_DOCKER_CONFIG":   &u.Notary.DockerConfig,
		"TRUSTPROXY_REPLICA_URL":            &c.Redis.ReplicaURL,
	} {
		if v, ok := vars[key]; ok {
			*field = v
		}
	}
}

// defaultUpstream is Docker Hub, without a Notary server: Docker's public one,
// notary.docker.io, shuts down on 2026-12-08.
func defaultUpstream() Upstream {
	return Upstream{Name: "docker.io", Endpoint: Endpoint{URL: "https://registry-1.docker.io", TokenRealms: []string{"https://auth.docker.io"}}}
}

// setDefaults fills what the file and env left unset.
func (c *Config) setDefaults() {
	orDefault(&c.Listen, "127.0.0.1:5000")
	orDefault(&c.DataDir, "./trustproxy-data")
	if len(c.Storage) == 0 {
		c.Storage = map[string]map[string]any{"filesystem": nil}
	}
	if fs, ok := c.Storage["filesystem"]; ok && fs["rootdirectory"] == nil {
		if fs == nil {
			fs = make(map[string]any)
			c.Storage["filesystem"] = fs
		}
		fs["rootdirectory"] = filepath.Join(c.DataDir, "storage")
	}
	if len(c.Upstreams) == 0 {
		c.Upstreams = []Upstream{defaultUpstream()}
	}

	orDefault(&c.Trust.RefreshTTL, time.Minute)
	orDefault(&c.Trust.MaxStaleness, 24*time.Hour)
	orDefault(&c.Trust.RefusalTTL, 10*time.Second)
	orDefault(&c.Trust.Cosign.ReverifyTTL, 5*time.Minute)
	if len(c.Trust.Rules) == 0 {
		c.Trust.Rules = []Rule{{Repositories: "**"}}
	}
	for i := range c.Trust.Rules {
		r := &c.Trust.Rules[i]
		if len(r.Roles) == 0 {
			r.Roles = []string{"targets/releases", "targets"}
		}
		orDefault(&r.Mode, Enforce)
		orDefault(&r.Require, RequireAny)
		if len(r.Sources) == 0 {
			r.Sources = []Source{SourceNotary}
		}
		orDefault(&r.MaxStaleness, c.Trust.MaxStaleness)
		if sp := r.Scan; sp != nil {
			orDefault(&sp.Severity, severity.Critical)
			orDefault(&sp.MaxReportAge, 7*24*time.Hour)
			orDefault(&sp.Missing, MissingWait)
			orDefault(&sp.Wait, 30*time.Second)
		}
	}
	orDefault(&c.Redis.KeyPrefix, "trustproxy:")
	orDefault(&c.Redis.Timeout, 250*time.Millisecond)
	orDefault(&c.Redis.FloorWait, 250*time.Millisecond)
	if c.Redis.FloorReplicas == nil {
		n := 0
		if c.Redis.MasterName != "" || c.Redis.Cluster() {
			n = 1 // failover promotes a replica: the floor must be on one
		}
		c.Redis.FloorReplicas = &n
	}
	orDefault(&c.Scan.CredentialTTL, 15*time.Minute)
	orDefault(&c.Scan.Timeout, 10*time.Minute)

	l := &c.Limits
	orDefault(&l.ManifestBytes, 4<<20)
	orDefault(&l.RootBytes, 512_000)
	orDefault(&l.TimestampBytes, 16_384)
	orDefault(&l.SnapshotBytes, 2_000_000)
	orDefault(&l.TargetsBytes, 5_000_000)
	orDefault(&l.MaxRootRotations, 32)
	orDefault(&l.MaxDelegations, 64)
	orDefault(&l.UpstreamTimeout, 30*time.Second)
	orDefault(&l.BlobIdleTimeout, 60*time.Second)
	orDefault(&l.MinTransferRate, 256<<10)
	orDefault(&l.ClientWriteTimeout, 60*time.Second)
	orDefault(&l.ShutdownTimeout, 30*time.Second)

	orDefault(&c.Retention.Interval, time.Hour)

	orDefault(&c.Log.Level, "info")
}

// orDefault sets *p to v if *p is the zero value.
func orDefault[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}
