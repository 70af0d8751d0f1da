package config

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/sigstore/sigstore-go/pkg/root"

	"github.com/trustproxy/trustproxy/internal/severity"
)

// ignoreCompiled leaves out of comparisons the compiled pattern of a Rule,
// which TestMatch checks, and the compiled pins of a Pinning, which
// TestPinningFor checks.
var ignoreCompiled = cmp.Options{cmpopts.IgnoreUnexported(Rule{}, Pinning{}), cmpopts.IgnoreFields(Signer{}, "CosignPEM", "NotationPEM")}

// defaults is the configuration that an empty file gives.
func defaults() *Config {
	return &Config{
		Listen:    "127.0.0.1:5000",
		DataDir:   "./trustproxy-data",
		Storage:   map[string]map[string]any{"filesystem": {"rootdirectory": "trustproxy-data/storage"}},
		Upstreams: []Upstream{{Name: "docker.io", Endpoint: Endpoint{URL: "https://registry-1.docker.io", TokenRealms: []string{"https://auth.docker.io"}}}},
		Trust: Trust{
			Rules:        []Rule{{Repositories: "**", Roles: []string{"targets/releases", "targets"}, Mode: Enforce, MaxStaleness: 24 * time.Hour, Sources: notaryOnly, Require: RequireAny}},
			RefreshTTL:   time.Minute,
			MaxStaleness: 24 * time.Hour,
			RefusalTTL:   10 * time.Second,
			Cosign:       Cosign{ReverifyTTL: 5 * time.Minute},
		},
		Scan:      Scan{CredentialTTL: 15 * time.Minute, Timeout: 10 * time.Minute},
		Redis:     Redis{KeyPrefix: "trustproxy:", Timeout: 250 * time.Millisecond, FloorWait: 250 * time.Millisecond, FloorReplicas: new(0)},
		Retention: Retention{Interval: time.Hour},
		Limits: Limits{
			ManifestBytes:      4 << 20,
			RootBytes:          512000,
			TimestampBytes:     16384,
			SnapshotBytes:      2_000_000,
			TargetsBytes:       5_000_000,
			MaxRootRotations:   32,
			MaxDelegations:     64,
			UpstreamTimeout:    30 * time.Second,
			BlobIdleTimeout:    60 * time.Second,
			MinTransferRate:    256 << 10,
			ClientWriteTimeout: 60 * time.Second,
			ShutdownTimeout:    30 * time.Second,
		},
		Log: Log{Level: "info"},
	}
}

// pems is a self-signed ECDSA CA certificate with its key, in PEM, and its
// public key in PKIX DER (spki).
type pems struct{ cert, key, pub, spki []byte }

func newCert(t testing.TB) pems {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "trustproxy test"},
		DNSNames:              []string{"localhost"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return pems{
		cert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		key:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: priv}),
		// As `docker trust key generate alice` writes alice.pub.
		pub:  pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Headers: map[string]string{"role": "alice"}, Bytes: pub}),
		spki: pub,
	}
}

// writeFiles creates files, named relative to dir.
func writeFiles(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for name, b := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func TestDefaults(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want func(c *Config)
	}{
		{name: "empty", yaml: ""},
		{name: "only comments", yaml: "# nothing here\n\n"},
		{name: "empty mapping", yaml: "{}"},
		{name: "null document", yaml: "~"},
		{name: "listen only", yaml: "listen: 127.0.0.1:5000\n"},
		{
			name: "storage follows data_dir",
			yaml: "data_dir: /var/lib/trustproxy\n",
			want: func(c *Config) {
				c.DataDir = "/var/lib/trustproxy"
				c.Storage["filesystem"]["rootdirectory"] = "/var/lib/trustproxy/storage"
			},
		},
		{
			name: "filesystem without rootdirectory",
			yaml: "storage:\n  filesystem:\n",
		},
		{
			name: "rule defaults",
			yaml: "trust:\n  rules:\n    - repositories: docker.io/**\n    - repositories: '**'\n      mode: audit\n      roles: [targets]\n",
			want: func(c *Config) {
				c.Trust.Rules = []Rule{
					{Repositories: "docker.io/**", Roles: []string{"targets/releases", "targets"}, Mode: Enforce, MaxStaleness: 24 * time.Hour, Sources: notaryOnly, Require: RequireAny},
					{Repositories: "**", Roles: []string{"targets"}, Mode: Audit, MaxStaleness: 24 * time.Hour, Sources: notaryOnly, Require: RequireAny, Index: 1},
				}
			},
		},
		{
			name: "scan policy defaults",
			yaml: "scan:\n  registry_url: http://127.0.0.1:5000\n  scanners: [{name: trivy, url: http://trivy:8080}]\n" +
				"trust:\n  rules:\n    - repositories: docker.io/**\n      scan: {}\n    - repositories: '**'\n      scan: {severity: '', missing: '', max_report_age: 1h}\n",
			want: func(c *Config) {
				c.Scan.RegistryURL = "http://127.0.0.1:5000"
				c.Scan.Scanners = []Scanner{{Name: "trivy", URL: "http://trivy:8080"}}
				policy := func(age time.Duration) *ScanPolicy {
					return &ScanPolicy{Severity: severity.Critical, MaxReportAge: age, Missing: MissingWait, Wait: 30 * time.Second}
				}
				c.Trust.Rules = []Rule{
					{Repositories: "docker.io/**", Roles: []string{"targets/releases", "targets"}, Mode: Enforce, MaxStaleness: 24 * time.Hour, Sources: notaryOnly, Require: RequireAny, Scan: policy(168 * time.Hour)},
					{Repositories: "**", Roles: []string{"targets/releases", "targets"}, Mode: Enforce, MaxStaleness: 24 * time.Hour, Sources: notaryOnly, Require: RequireAny, Scan: policy(time.Hour), Index: 1},
				}
			},
		},
		{
			name: "other driver gets no rootdirectory",
			yaml: "storage:\n  inmemory: {}\n",
			want: func(c *Config) { c.Storage = map[string]map[string]any{"inmemory": {}} },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Load(strings.NewReader(tt.yaml), nil)
			if err != nil {
				t.Fatal(err)
			}
			want := defaults()
			if tt.want != nil {
				tt.want(want)
			}
			if diff := cmp.Diff(want, got, ignoreCompiled); diff != "" {
				t.Errorf("Load(%q) mismatch (-want +got):\n%s", tt.yaml, diff)
			}
		})
	}
}

// TestEmbeddedDefault checks the embedded default.yaml, which an empty file
// gives: it must be safe, since it is what runs without a configuration.
func TestEmbeddedDefault(t *testing.T) {
	c, err := Load(bytes.NewReader(defaultYAML), nil)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(defaults(), c, ignoreCompiled); diff != "" {
		t.Errorf("default.yaml differs from the defaults Load fills (-want +got):\n%s", diff)
	}
	for i, u := range c.Upstreams {
		if u.Notary.URL != "" {
			t.Errorf("upstreams[%d].notary.url = %q, want none: notary.docker.io shuts down on 2026-12-08", i, u.Notary.URL)
		}
	}
	for i, r := range c.Trust.Rules {
		if r.Mode != Enforce || r.TOFU {
			t.Errorf("trust.rules[%d]: mode %s, tofu %v; want enforce without tofu", i, r.Mode, r.TOFU)
		}
	}
}

func TestEnv(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "notary-ca.pem")
	writeFiles(t, dir, map[string][]byte{"notary-ca.pem": newCert(t).cert})
	twoUpstreams := "upstreams:\n  - name: a.example\n    url: https://a.example\n  - name: b.example\n    url: https://b.example\n"

	tests := []struct {
		name string
		yaml string
		env  []string
		want func(c *Config)
	}{
		{
			name: "every variable",
			env: []string{
				"TRUSTPROXY_LISTEN=:5443",
				"TRUSTPROXY_DATA_DIR=/data",
				"TRUSTPROXY_LOG_LEVEL=debug",
				"TRUSTPROXY_UPSTREAM_NAME=mirror.example.com",
				"TRUSTPROXY_UPSTREAM_URL=https://mirror.example.com",
				"TRUSTPROXY_UPSTREAM_USERNAME=user",
				"TRUSTPROXY_UPSTREAM_PASSWORD=secret",
				"TRUSTPROXY_NOTARY_URL=https://notary.example.com",
				"TRUSTPROXY_NOTARY_CA_FILE=" + ca,
				"TRUSTPROXY_NOTARY_USERNAME=nuser",
				"TRUSTPROXY_NOTARY_PASSWORD=nsecret",
			},
			want: func(c *Config) {
				c.Listen = ":5443"
				c.DataDir = "/data"
				c.Storage["filesystem"]["rootdirectory"] = "/data/storage"
				c.Log.Level = "debug"
				c.Upstreams[0] = Upstream{
					Name:     "mirror.example.com",
					Endpoint: Endpoint{URL: "https://mirror.example.com", Username: "user", Password: "secret"},
					Notary:   Endpoint{URL: "https://notary.example.com", CAFile: ca, Username: "nuser", Password: "nsecret"},
				}
			},
		},
		{
			name: "notary url on the default upstream",
			yaml: "listen: 127.0.0.1:5000\n",
			env:  []string{"TRUSTPROXY_NOTARY_URL=https://notary.example.com"},
			want: func(c *Config) { c.Upstreams[0].Notary.URL = "https://notary.example.com" },
		},
		{
			name: "last wins, empty and foreign ignored",
			env:  []string{"TRUSTPROXY_LISTEN=:1", "TRUSTPROXY_LISTEN=:2", "TRUSTPROXY_LOG_LEVEL=", "LISTEN=:3", "TRUSTPROXY_UNKNOWN=x", "junk"},
			want: func(c *Config) { c.Listen = ":2" },
		},
		{
			name: "first of several upstreams",
			yaml: twoUpstreams,
			env:  []string{"TRUSTPROXY_UPSTREAM_URL=http://127.0.0.1:5001"},
			want: func(c *Config) {
				c.Upstreams = []Upstream{{Name: "a.example", Endpoint: Endpoint{URL: "http://127.0.0.1:5001"}}, {Name: "b.example", Endpoint: Endpoint{URL: "https://b.example"}}}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Load(strings.NewReader(tt.yaml), tt.env)
			if err != nil {
				t.Fatal(err)
			}
			want := defaults()
			tt.want(want)
			if diff := cmp.Diff(want, got, ignoreCompiled); diff != "" {
				t.Errorf("mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	ca := newCert(t)
	rule := func(yaml string) string { return "trust:\n  rules:\n" + yaml }
	tests := []struct {
		name  string
		yaml  string
		env   []string
		files map[string][]byte
		want  []string // substrings of the error
	}{
		{name: "unknown key", yaml: "listen: :5000\nlisten_addr: :5001\n", want: []string{"line 2", "listen_addr"}},
		{name: "retention size unit", yaml: "retention:\n  max_bytes: 5 GiBs\n", want: []string{"line 2", "5 GiBs", "500GiB"}},
		{name: "retention negative size", yaml: "retention:\n  max_bytes: -1\n", want: []string{"line 2", "-1"}},
		{name: "retention negative age", yaml: "retention:\n  max_age: -1h\n", want: []string{"retention.max_age"}},
		{name: "retention interval", yaml: "retention:\n  max_age: 1h\n  interval: 10ms\n", want: []string{"retention.interval", "10ms"}},
		{
			name: "unknown nested key",
			yaml: "upstreams:\n  - name: docker.io\n    url: https://registry-1.docker.io\n    notary:\n      uri: https://notary.example.com\n",
			want: []string{"line 5", "uri"},
		},
		{name: "bad mode", yaml: rule("    - repositories: '**'\n      mode: enforcing\n"), want: []string{"line 4", `mode "enforcing": want enforce or audit`}},
		{name: "mode not a word", yaml: rule("    - repositories: '**'\n      mode: [audit]\n"), want: []string{"line 4", "mode: want enforce or audit"}},
		{name: "duration without unit", yaml: "trust:\n  refresh_ttl: 60\n", want: []string{"line 2", "time.Duration"}},
		{name: "two documents", yaml: "listen: :5000\n---\nlisten: :5001\n", want: []string{"line 2", "second YAML document"}},
		{name: "bad listen", yaml: "listen: localhost\n", want: []string{"listen: ", "host:port"}},
		{name: "bad listen port", yaml: "listen: localhost:http\n", want: []string{`listen: port "http"`}},
		{name: "tls without key", yaml: "tls:\n  cert_file: tls.crt\n", want: []string{"tls.key_file: required"}},
		{name: "tls missing files", yaml: "tls:\n  cert_file: tls.crt\n  key_file: tls.key\n", want: []string{"tls.cert_file: file ", "tls.key_file: file ", "does not exist"}},
		{
			name:  "tls key does not match",
			yaml:  "tls:\n  cert_file: tls.crt\n  key_file: tls.key\n",
			files: map[string][]byte{"tls.crt": ca.cert, "tls.key": newCert(t).key},
			want:  []string{"tls: ", "private key does not match"},
		},
		{name: "two storage drivers", yaml: "storage:\n  filesystem: {}\n  s3: {}\n", want: []string{"storage: 2 drivers (filesystem, s3)"}},
		{name: "unknown storage driver", yaml: "storage:\n  swift: {}\n", want: []string{"storage.swift: unknown storage driver"}},
		{name: "bad rootdirectory", yaml: "storage:\n  filesystem:\n    rootdirectory: 7\n", want: []string{"storage.filesystem.rootdirectory"}},
		{
			name: "duplicate upstream name",
			yaml: "upstreams:\n  - name: docker.io\n    url: https://a.example\n  - name: docker.io\n    url: https://b.example\n",
			want: []string{`upstreams[1].name: "docker.io" is also upstreams[0].name`},
		},
		{name: "upstream name with scheme", yaml: "upstreams:\n  - name: https://docker.io\n    url: https://registry-1.docker.io\n", want: []string{`upstreams[0].name: "https://docker.io" is not a host`}},
		{name: "upstream name upper case", yaml: "upstreams:\n  - name: Docker.io\n    url: https://registry-1.docker.io\n", want: []string{`upstreams[0].name: "Docker.io" is not a host name`}},
		// Two spellings of one IPv6 address would be two upstreams stored
		// under one storage name (gun.Name.StorageName): one spelling only.
		{name: "upstream name ipv6 not canonical", yaml: "upstreams:\n  - name: \"[0:0::1]:5000\"\n    url: https://reg.example\n", want: []string{`upstreams[0].name: "[0:0::1]:5000": write the IPv6 address as [::1]`}},
		{name: "upstream name ipv6 upper case", yaml: "upstreams:\n  - name: \"[FD00::1]\"\n    url: https://reg.example\n", want: []string{`upstreams[0].name: "[FD00::1]": write the IPv6 address as [fd00::1]`}},
		{name: "upstream name ipv4-mapped", yaml: "upstreams:\n  - name: \"[::ffff:127.0.0.1]:5000\"\n    url: https://reg.example\n", want: []string{`upstreams[0].name: "[::ffff:127.0.0.1]:5000": write the IPv6 address as 127.0.0.1`}},
		{name: "upstream name bad port", yaml: "upstreams:\n  - name: reg.example:x\n    url: https://reg.example\n", want: []string{`upstreams[0].name: "reg.example:x": port "x"`}},
		{name: "upstream without name", yaml: "upstreams:\n  - url: https://reg.example\n", want: []string{"upstreams[0].name: required"}},
		{name: "upstream url scheme", yaml: "upstreams:\n  - name: reg.example\n    url: ftp://reg.example\n", want: []string{"upstreams[0].url: ", "https://"}},
		{name: "upstream url missing", yaml: "upstreams:\n  - name: reg.example\n", want: []string{"upstreams[0].url: "}},
		{
			name: "token realm with path",
			yaml: "upstreams:\n  - name: reg.example\n    url: https://reg.example\n    token_realms: [https://auth.example/token]\n",
			want: []string{"upstreams[0].token_realms[0]: ", "scheme://host[:port]"},
		},
		{
			name: "token realm without scheme",
			yaml: "upstreams:\n  - name: reg.example\n    url: https://reg.example\n    notary:\n      url: https://n.example\n      token_realms: [auth.example]\n",
			want: []string{"upstreams[0].notary.token_realms[0]: ", "want an origin"},
		},
		{
			name: "redirect host with scheme",
			yaml: "upstreams:\n  - name: reg.example\n    url: https://reg.example\n    redirect_hosts: [https://s3.example]\n",
			want: []string{"upstreams[0].redirect_hosts[0]: ", "is not a host"},
		},
		{name: "max staleness zero", yaml: "trust:\n  max_staleness: -1s\n", want: []string{"trust.max_staleness: must be positive"}},
		{name: "rule max staleness negative", yaml: rule("    - repositories: '**'\n      max_staleness: -1h\n"), want: []string{"trust.rules[0].max_staleness: must be positive"}},
		{name: "min transfer rate negative", yaml: "limits:\n  min_transfer_rate: -1\n", want: []string{"limits.min_transfer_rate: must be positive"}},
		{
			name: "scan policy without scanners",
			yaml: rule("    - repositories: '**'\n      scan: {severity: high}\n"),
			want: []string{"scan: a rule has a scan policy, but no scanner", "trust.rules[0].scan.missing: wait needs a scanner"},
		},
		{
			name: "bad scan policy",
			yaml: "scan:\n  registry_url: http://127.0.0.1:5000\n  scanners: [{name: trivy, url: http://trivy:8080}]\n" +
				rule("    - repositories: '**'\n      scan: {wait: -1s, allowlist: [{id: CVE-2024-3094}]}\n"),
			want: []string{"trust.rules[0].scan.wait: must be positive",
				"trust.rules[0].scan.allowlist[0].expires: required", "trust.rules[0].scan.allowlist[0].reason: required"},
		},
		{
			name: "bad scan words",
			yaml: rule("    - repositories: '**'\n      scan:\n        severity: severe\n        missing: later\n"),
			want: []string{`line 5: severity "severe": want one of unknown, negligible, low, medium, high, critical`,
				`line 6: missing "later": want block, wait or allow`},
		},
		{
			name: "severity in the spec's case",
			yaml: rule("    - repositories: '**'\n      scan: {severity: Critical}\n"),
			want: []string{`line 4: severity "Critical": want one of unknown, negligible, low, medium, high, critical`},
		},
		{
			name: "scan words not words",
			yaml: rule("    - repositories: '**'\n      scan:\n        severity: [high]\n        missing: {wait: 1s}\n"),
			want: []string{"line 5: severity: want one of unknown,", "line 6: missing: want block, wait or allow"},
		},
		{
			name: "scanners without registry url",
			yaml: "scan:\n  scanners: [{name: trivy, url: http://trivy:8080}, {name: trivy, url: 'trivy:8080'}]\n",
			want: []string{"scan.registry_url: required with scanners", `scan.scanners[1].name: "trivy" is used`, "scan.scanners[1].url: "},
		},
		{
			name:  "short report token",
			yaml:  "scan:\n  report_token_file: token\n",
			files: map[string][]byte{"token": []byte("secret\n")},
			want:  []string{"scan.report_token_file: the token is 6 characters"},
		},
		{name: "missing report token file", yaml: "scan:\n  report_token_file: token\n", want: []string{"scan.report_token_file: file ", "does not exist"}},
		{
			name: "bad redis",
			yaml: "redis:\n  addrs: [redis.internal, 'r:x']\n  db: -1\n  key_prefix: '{tp}'\n  password_file: nope\n",
			want: []string{"redis.addrs[0]: ", "redis.addrs[1]: port \"x\"", "redis.db: must be 0 or more", "redis.key_prefix: ", "redis.password_file: file "},
		},
		{
			name:  "short redis state key",
			yaml:  "redis:\n  addrs: [127.0.0.1:6379]\n  state_key_file: key\n",
			files: map[string][]byte{"key": []byte("too short\n")},
			want:  []string{"redis.state_key_file: the key is 9 characters"},
		},
		{
			name:  "bad redis floor and timeout",
			yaml:  "redis:\n  addrs: [127.0.0.1:6379, 127.0.0.1:6380]\n  db: 2\n  state_key_file: key\n  timeout: -1s\n  floor_wait: -1s\n  floor_replicas: -1\n",
			files: map[string][]byte{"key": []byte("0123456789abcdef0123456789abcdef")},
			want:  []string{"redis.db: must be 0 with a Redis Cluster", "redis.timeout: must be positive", "redis.floor_wait: must be positive", "redis.floor_replicas: must be 0"},
		},
		{
			name:  "sentinel password without sentinels",
			yaml:  "redis:\n  addrs: [127.0.0.1:6379]\n  state_key_file: key\n  sentinel_password_file: missing\n",
			files: map[string][]byte{"key": []byte("0123456789abcdef0123456789abcdef\n")},
			want:  []string{"redis.sentinel_password_file: only with redis.master_name", "redis.sentinel_password_file: "},
		},
		{name: "redis settings without addrs", yaml: "redis:\n  master_name: mymaster\n", want: []string{"redis.addrs: required"}},
		{name: "redis without state key", yaml: "redis:\n  addrs: [127.0.0.1:6379]\n", want: []string{"redis.state_key_file: required with redis"}},
		{
			name:  "bad peer networks",
			yaml:  "redis:\n  addrs: [127.0.0.1:6379]\n  state_key_file: key\n  peer_networks: [10.0.0.0/8, 10.0.0.1]\n",
			files: map[string][]byte{"key": []byte("0123456789abcdef0123456789abcdef\n")},
			want:  []string{"redis.peer_networks[1]: ", "redis.peer_networks: needs redis.replica_url"},
		},
		{
			name:  "peer tls with a plain replica url",
			yaml:  "redis:\n  addrs: [127.0.0.1:6379]\n  state_key_file: key\n  replica_url: http://10.0.0.7:5001\n  peer_listen: :5001\n  peer_tls: {ca_file: nope.pem}\n",
			files: map[string][]byte{"key": []byte("0123456789abcdef0123456789abcdef\n")},
			want:  []string{"redis.replica_url: \"http://10.0.0.7:5001\": with redis.peer_tls, peers are reached only over https", "redis.peer_tls.cert_file: required", "redis.peer_tls.key_file: required", "redis.peer_tls.ca_file: file "},
		},
		{
			name:  "peer tls without peer listen",
			yaml:  "redis:\n  addrs: [127.0.0.1:6379]\n  state_key_file: key\n  replica_url: https://10.0.0.7:5001\n  peer_tls: {ca_file: nope.pem}\n",
			files: map[string][]byte{"key": []byte("0123456789abcdef0123456789abcdef\n")},
			want:  []string{"redis.peer_listen: required with redis.peer_tls"},
		},
		{name: "shutdown timeout negative", yaml: "limits:\n  shutdown_timeout: -1s\n", want: []string{"limits.shutdown_timeout: must be positive"}},
		{name: "notary url without host", yaml: "upstreams:\n  - name: reg.example\n    url: https://reg.example\n    notary:\n      url: https:///path\n", want: []string{"upstreams[0].notary.url: ", "no host"}},
		{name: "notary ca without url", yaml: "upstreams:\n  - name: reg.example\n    url: https://reg.example\n    notary:\n      ca_file: ca.pem\n", want: []string{"upstreams[0].notary.url: required"}},
		{name: "missing ca file", yaml: "upstreams:\n  - name: reg.example\n    url: https://reg.example\n    ca_file: certs/ca.pem\n", want: []string{"upstreams[0].ca_file: file ", "certs/ca.pem does not exist"}},
		{
			name:  "ca file without certificate",
			yaml:  "upstreams:\n  - name: reg.example\n    url: https://reg.example\n    notary:\n      url: https://notary.example\n      ca_file: ca.pem\n",
			files: map[string][]byte{"ca.pem": ca.pub},
			want:  []string{"upstreams[0].notary.ca_file: ", "no PEM CERTIFICATE block"},
		},
		{
			name:  "ca file is a directory",
			yaml:  "upstreams:\n  - name: reg.example\n    url: https://reg.example\n    ca_file: certs\n",
			files: map[string][]byte{"certs/x": nil},
			want:  []string{"upstreams[0].ca_file: ", "not a regular file"},
		},
		{
			name:  "signer key not PEM",
			yaml:  "trust:\n  signers:\n    - name: alice\n      public_key: alice.pub\n",
			files: map[string][]byte{"alice.pub": []byte("not a key\n")},
			want:  []string{"trust.signers[0].public_key: ", "no PEM block"},
		},
		{
			name:  "signer key is private",
			yaml:  "trust:\n  signers:\n    - name: alice\n      public_key: alice.key\n",
			files: map[string][]byte{"alice.key": ca.key},
			want:  []string{"trust.signers[0].public_key: ", "holds a PRIVATE KEY"},
		},
		{
			name:  "signer key does not parse",
			yaml:  "trust:\n  signers:\n    - name: alice\n      public_key: alice.pub\n",
			files: map[string][]byte{"alice.pub": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte("junk")})},
			want:  []string{"trust.signers[0].public_key: "},
		},
		{
			name:  "second signer PEM block is private",
			yaml:  "trust:\n  signers:\n    - name: alice\n      public_key: alice.pem\n",
			files: map[string][]byte{"alice.pem": append(append([]byte{}, ca.pub...), ca.key...)},
			want:  []string{"trust.signers[0].public_key: ", "holds a PRIVATE KEY (PEM block 2)"},
		},
		{
			name:  "second signer certificate does not parse",
			yaml:  "trust:\n  signers:\n    - name: alice\n      public_key: alice.pem\n",
			files: map[string][]byte{"alice.pem": append(append([]byte{}, ca.cert...), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")})...)},
			want:  []string{"trust.signers[0].public_key: ", "PEM block 2: parse CERTIFICATE"},
		},
		{name: "signer without key", yaml: "trust:\n  signers:\n    - name: alice\n", want: []string{"trust.signers[0]: set public_key, key_ids (Notary), cosign_key or cosign_identity (cosign), or notation_ca (Notation), or several"}},
		{name: "unknown source", yaml: "trust:\n  rules:\n    - repositories: '**'\n      sources: [notary2]\n", want: []string{"line 4", `source "notary2"`}},
		{name: "unknown require", yaml: "trust:\n  rules:\n    - repositories: '**'\n      require: most\n", want: []string{"line 4", `require "most"`}},
		{name: "source twice", yaml: "trust:\n  rules:\n    - repositories: '**'\n      sources: [notary, notary]\n", want: []string{`trust.rules[0].sources[1]: "notary" is listed twice`}},
		{name: "cosign rule without signers", yaml: "trust:\n  rules:\n    - repositories: '**'\n      sources: [cosign]\n      allow_no_tlog: true\n", want: []string{"trust.rules[0].signers: a rule listing cosign needs signers with a cosign_key or a cosign_identity"}},
		{name: "allow_no_tlog without cosign", yaml: "trust:\n  rules:\n    - repositories: '**'\n      allow_no_tlog: true\n", want: []string{"trust.rules[0].allow_no_tlog: set on a rule whose sources do not list cosign"}},
		{name: "cosign key missing", yaml: "trust:\n  signers:\n    - name: ci\n      cosign_key: /nonexistent/cosign.pub\n", want: []string{"trust.signers[0].cosign_key:", "/nonexistent/cosign.pub"}},
		{name: "trusted root missing", yaml: "trust:\n  cosign:\n    trusted_root: /nonexistent/trusted_root.json\n", want: []string{"trust.cosign.trusted_root:", "trusted_root.json"}},
		{name: "notation rule without signers", yaml: "trust:\n  rules:\n    - repositories: '**'\n      sources: [notation]\n", want: []string{"trust.rules[0].signers: a rule listing notation needs signers with a notation_ca"}},
		{name: "notation ca missing", yaml: "trust:\n  signers:\n    - name: ci\n      notation_ca: /nonexistent/ca.pem\n      notation_identities: ['*']\n", want: []string{"trust.signers[0].notation_ca:", "/nonexistent/ca.pem"}},
		{name: "notation identities without ca", yaml: "trust:\n  signers:\n    - name: ci\n      public_key: /nonexistent/k.pem\n      notation_identities: ['*']\n", want: []string{"trust.signers[0].notation_identities: set without notation_ca"}},
		{name: "notation level audit", yaml: "trust:\n  notation:\n    level: audit\n", want: []string{"trust.notation.level: \"audit\" does not check that a trusted signer signed"}},
		{name: "notation revocation", yaml: "trust:\n  notation:\n    revocation: maybe\n", want: []string{"trust.notation.revocation: \"maybe\": want off or on"}},
		{name: "notation revocation host with scheme", yaml: "trust:\n  notation:\n    revocation: \"on\"\n    revocation_hosts: [\"http://crl.example\"]\n", want: []string{"trust.notation.revocation_hosts[0]: ", "is not a host"}},
		{name: "reverify_ttl negative", yaml: "trust:\n  cosign:\n    reverify_ttl: -1s\n", want: []string{"trust.cosign.reverify_ttl: must be positive"}},
		{name: "signer without name", yaml: "trust:\n  signers:\n    - key_ids: [" + strings.Repeat("a", 64) + "]\n", want: []string{"trust.signers[0].name: required"}},
		{
			name: "duplicate signer",
			yaml: "trust:\n  signers:\n    - name: a\n      key_ids: [" + strings.Repeat("a", 64) + "]\n    - name: a\n      key_ids: [" + strings.Repeat("b", 64) + "]\n",
			want: []string{`trust.signers[1].name: "a" is used by another signer`},
		},
		{name: "bad key id", yaml: "trust:\n  signers:\n    - name: a\n      key_ids: [" + strings.Repeat("A", 64) + "]\n", want: []string{"trust.signers[0].key_ids[0]: ", "64 lower-case hex"}},
		{
			name: "bad pattern",
			yaml: rule("    - repositories: docker.io/**\n    - repositories: '['\n"),
			want: []string{`trust.rules[1].repositories: bad pattern "[": syntax error in pattern`},
		},
		{name: "** inside pattern", yaml: rule("    - repositories: docker.io/**/alpine\n"), want: []string{`trust.rules[0].repositories: bad pattern "docker.io/**/alpine": ** may only`}},
		{name: "empty segment", yaml: rule("    - repositories: docker.io//alpine\n"), want: []string{`trust.rules[0].repositories: bad pattern "docker.io//alpine": empty path segment`}},
		{name: "no pattern", yaml: rule("    - mode: audit\n"), want: []string{"trust.rules[0].repositories: required"}},
		{
			name: "unknown signer in rule",
			yaml: "trust:\n  signers:\n    - name: alice\n      key_ids: [" + strings.Repeat("a", 64) + "]\n  rules:\n    - repositories: '**'\n      signers: [alice, carol]\n",
			want: []string{`trust.rules[0].signers[1]: no signer named "carol" in trust.signers`},
		},
		{name: "bad role", yaml: rule("    - repositories: '**'\n      roles: [targets/releases, releases]\n"), want: []string{`trust.rules[0].roles[1]: "releases" is not a targets role`}},
		{name: "bare targets/ role", yaml: rule("    - repositories: '**'\n      roles: [targets/]\n"), want: []string{`trust.rules[0].roles[0]`}},
		{name: "debug listen", yaml: "debug:\n  listen: localhost\n  block_profile_rate: -1\n", want: []string{"debug.listen: ", "debug: block_profile_rate"}},
		{name: "negative refresh", yaml: "trust:\n  refresh_ttl: -1m\n", want: []string{"trust.refresh_ttl: must be positive"}},
		{
			name: "pinning certs",
			yaml: "trust:\n  pinning:\n    certs:\n      Docker.io/x: [" + strings.Repeat("a", 64) + "]\n      docker.io/library/alpine: [abc]\n      docker.io/library/busybox: []\n",
			want: []string{
				`trust.pinning.certs["Docker.io/x"]: GUN "Docker.io/x"`,
				`trust.pinning.certs["docker.io/library/alpine"][0]: "abc" is not a certificate ID`,
				`trust.pinning.certs["docker.io/library/busybox"]: no certificate IDs`,
			},
		},
		{name: "pinning ca missing", yaml: "trust:\n  pinning:\n    ca:\n      docker.io/: ca.pem\n", want: []string{`trust.pinning.ca["docker.io/"]: file `}},
		{name: "pinning ca no file", yaml: "trust:\n  pinning:\n    ca:\n      docker.io/: ''\n", want: []string{`trust.pinning.ca["docker.io/"]: no file named`}},
		{
			name: "limits",
			yaml: "limits:\n  manifest_bytes: -1\n  max_delegations: -2\n  upstream_timeout: -1s\n",
			want: []string{"limits.manifest_bytes: must be positive", "limits.max_delegations: must be positive", "limits.upstream_timeout: must be positive"},
		},
		{name: "log level", yaml: "log:\n  level: verbose\n", want: []string{`log.level: "verbose"`}},
		{name: "env is validated", env: []string{"TRUSTPROXY_UPSTREAM_URL=registry-1.docker.io"}, want: []string{"upstreams[0].url: "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, tt.files)
			writeFiles(t, dir, map[string][]byte{"trustproxy.yaml": []byte(tt.yaml)})
			_, err := LoadFile(filepath.Join(dir, "trustproxy.yaml"), tt.env)
			if err == nil {
				t.Fatalf("LoadFile succeeded, want an error with %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestEndpointErrors: a registry and a Notary server are checked alike, by
// one validator, each problem named by the field of its kind.
func TestEndpointErrors(t *testing.T) {
	tests := []struct {
		name     string
		endpoint string   // YAML lines of the endpoint, unindented
		want     []string // after the endpoint's field path
	}{
		{name: "url scheme", endpoint: "url: ftp://x.example", want: []string{`.url: "ftp://x.example": want an https:// or http:// URL`}},
		{name: "url credentials", endpoint: "url: https://u:hunter2@x.example", want: []string{".url: credentials in the URL"}},
		{name: "url query", endpoint: "url: https://x.example/?token=t", want: []string{".url: remove the query"}},
		{name: "password without username", endpoint: "url: https://x.example\npassword: p", want: []string{".username: required with a password"}},
		{name: "ca file missing", endpoint: "url: https://x.example\nca_file: nope.pem", want: []string{".ca_file: file ", "does not exist"}},
		{
			name:     "two credential sources",
			endpoint: "url: https://x.example\nusername: u\npassword: hunter2\ndocker_config: nope.json",
			want:     []string{".docker_config: set together with password: give the credentials from one source only"},
		},
		{
			name:     "password and password file",
			endpoint: "url: https://x.example\nusername: u\npassword: hunter2\npassword_file: nope",
			want:     []string{".password_file: set together with password"},
		},
		{name: "password file without username", endpoint: "url: https://x.example\npassword_file: nope", want: []string{".username: required with a password_file"}},
		{name: "password file missing", endpoint: "url: https://x.example\nusername: u\npassword_file: nope", want: []string{".password_file: file ", "does not exist"}},
		{name: "docker config with username", endpoint: "url: https://x.example\nusername: u\ndocker_config: nope.json", want: []string{".username: not allowed with docker_config"}},
		{name: "docker config missing", endpoint: "url: https://x.example\ndocker_config: nope.json", want: []string{".docker_config: file ", "does not exist"}},
		{name: "docker config not JSON", endpoint: "url: https://x.example\ndocker_config: default.yaml", want: []string{".docker_config: ", "is not a docker config file"}},
		{
			name:     "token realms",
			endpoint: "url: https://x.example\ntoken_realms: [https://auth.example/token, auth.example]",
			want:     []string{".token_realms[0]: ", "scheme://host[:port]", ".token_realms[1]: ", "want an origin"},
		},
	}
	indent := func(s, by string) string { return by + strings.ReplaceAll(s, "\n", "\n"+by) + "\n" }
	for _, tt := range tests {
		for _, kind := range []struct{ field, yaml string }{
			{"upstreams[0]", "upstreams:\n  - name: reg.example\n" + indent(tt.endpoint, "    ")},
			{"upstreams[0].notary", "upstreams:\n  - name: reg.example\n    url: https://reg.example\n    notary:\n" + indent(tt.endpoint, "      ")},
		} {
			t.Run(tt.name+" "+kind.field, func(t *testing.T) {
				_, err := Load(strings.NewReader(kind.yaml), nil)
				if err == nil {
					t.Fatalf("Load succeeded, want %s%s", kind.field, tt.want[0])
				}
				for _, w := range tt.want {
					if w[0] == '.' {
						w = kind.field + w
					}
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error does not contain %q:\n%v", w, err)
					}
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Errorf("error shows a password:\n%v", err)
				}
			})
		}
	}

	// Only a Notary server may be left out, and then wholly.
	_, err := Load(strings.NewReader("upstreams:\n  - name: reg.example\n    url: https://reg.example\n    notary:\n      username: u\n"), nil)
	if want := "upstreams[0].notary.url: required with notary ca_file, credentials or token_realms"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("notary credentials without a URL: %v, want %q", err, want)
	}
	if _, err := Load(strings.NewReader("upstreams:\n  - name: reg.example\n    url: https://reg.example\n    notary: {}\n"), nil); err != nil {
		t.Errorf("upstream without a Notary server: %v", err)
	}
}

// TestLoadCompilesTrust: Load reads every key of a signer's file, resolves
// each rule's signers and reports what it cannot compile by field.
func TestLoadCompilesTrust(t *testing.T) {
	dir := t.TempDir()
	alice, bob := newCert(t), newCert(t)
	writeFiles(t, dir, map[string][]byte{
		"keys.pem": append(append([]byte{}, alice.pub...), bob.cert...),
		"bad.pem":  alice.key,
	})
	good := "trust:\n  signers:\n    - name: team\n      public_key: " + filepath.Join(dir, "keys.pem") + "\n" +
		"  rules:\n    - repositories: docker.io/**\n      signers: [team]\n"
	c, err := Load(strings.NewReader(good), nil)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([][]byte{alice.spki, bob.spki}, c.Trust.Signers[0].Keys); diff != "" {
		t.Errorf("signer keys (-want +got):\n%s", diff)
	}
	if r := c.Trust.RuleFor("docker.io/library/alpine"); r == nil || len(r.TrustedSigners) != 1 || r.TrustedSigners[0] != &c.Trust.Signers[0] {
		t.Errorf("RuleFor(docker.io/library/alpine) = %+v, want trust.rules[0] trusting trust.signers[0]", r)
	}

	bad := "trust:\n  signers:\n    - name: team\n      public_key: " + filepath.Join(dir, "bad.pem") + "\n" +
		"  rules:\n    - repositories: docker.io/**/app\n      signers: [team, nobody]\n"
	_, err = Load(strings.NewReader(bad), nil)
	if err == nil {
		t.Fatal("Load succeeded, want errors")
	}
	for _, w := range []string{
		"trust.signers[0].public_key: " + filepath.Join(dir, "bad.pem") + " holds a PRIVATE KEY",
		`trust.rules[0].repositories: bad pattern "docker.io/**/app": ** may only stand alone`,
		`trust.rules[0].signers[1]: no signer named "nobody" in trust.signers`,
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error does not contain %q:\n%v", w, err)
		}
	}
}

func TestErrorsHidePasswords(t *testing.T) {
	yaml := `
upstreams:
  - name: Bad.Name
    url: https://user:hunter2@reg.example
    password: hunter2
    notary:
      url: "https://user:hunter2@notary.example/%zz"
      password: hunter2
storage:
  s3:
    secretkey: hunter2
  gcs: {}
`
	_, err := Load(strings.NewReader(yaml), []string{"TRUSTPROXY_NOTARY_PASSWORD=hunter2"})
	if err == nil {
		t.Fatal("Load succeeded, want errors")
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error shows a password:\n%v", err)
	}
}

func TestMatch(t *testing.T) {
	tests := []struct {
		pattern, gun string
		want         bool
		wantErr      string
	}{
		{pattern: "**", gun: "docker.io/library/alpine", want: true},
		{pattern: "**", gun: "registry.example.com:5443/a/b/c", want: true},
		{pattern: "docker.io/**", gun: "docker.io/library/alpine", want: true},
		{pattern: "docker.io/**", gun: "docker.io/a/b/c/d", want: true},
		{pattern: "docker.io/**", gun: "docker.io", want: false},
		{pattern: "docker.io/**", gun: "quay.io/library/alpine", want: false},
		{pattern: "docker.io/**", gun: "docker.io.evil.example/library/alpine", want: false},
		{pattern: "docker.io/library/*", gun: "docker.io/library/alpine", want: true},
		{pattern: "docker.io/library/*", gun: "docker.io/library/alpine/extra", want: false},
		{pattern: "docker.io/library/*", gun: "docker.io/library", want: false},
		{pattern: "docker.io/library/*", gun: "docker.io/myorg/alpine", want: false},
		{pattern: "docker.io/*/alpine", gun: "docker.io/library/alpine", want: true},
		{pattern: "docker.io/*", gun: "docker.io/library/alpine", want: false},
		{pattern: "docker.io/library/alpine", gun: "docker.io/library/alpine", want: true},
		{pattern: "docker.io/library/alpine", gun: "docker.io/library/alpine2", want: false},
		{pattern: "docker.io/library/alpine", gun: "docker.io/library", want: false},
		{pattern: "docker.io/library/alp?ne", gun: "docker.io/library/alpine", want: true},
		{pattern: "docker.io/library/[ab]*", gun: "docker.io/library/busybox", want: true},
		{pattern: "docker.io/library/[ab]*", gun: "docker.io/library/centos", want: false},
		{pattern: "*/library/**", gun: "quay.io/library/x/y", want: true},
		{pattern: "registry.example.com:5443/**", gun: "registry.example.com:5443/team/app", want: true},
		{pattern: "[", gun: "[", wantErr: `bad pattern "[": syntax error in pattern`},
		{pattern: "quay.io/[", gun: "docker.io/x", wantErr: "syntax error in pattern"},
		{pattern: "docker.io/[/**", gun: "docker.io/[/x", wantErr: "syntax error in pattern"},
		{pattern: "docker.io/**/alpine", gun: "docker.io/library/alpine", wantErr: "** may only stand alone"},
		{pattern: "docker.io/a**", gun: "docker.io/abc", wantErr: "** may only stand alone"},
		{pattern: "docker.io//alpine", gun: "docker.io//alpine", wantErr: "empty path segment"},
		{pattern: "/**", gun: "/x", wantErr: "empty path segment"},
		{pattern: "", gun: "", wantErr: "required"},
	}
	for _, tt := range tests {
		t.Run(tt.pattern+" "+tt.gun, func(t *testing.T) {
			p, err := compilePattern(tt.pattern)
			if (err == nil) != (tt.wantErr == "") || err != nil && !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("compilePattern(%q) = %v, want an error with %q", tt.pattern, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if r := (&Rule{Repositories: tt.pattern, pattern: p}); r.Matches(tt.gun) != tt.want {
				t.Errorf("%q: Matches(%q) = %v, want %v", tt.pattern, tt.gun, !tt.want, tt.want)
			}
		})
	}
	if (&Rule{Repositories: "**"}).Matches("docker.io/library/alpine") {
		t.Error("a Rule not compiled by Load matches")
	}
}

func TestRuleFor(t *testing.T) {
	c, err := Load(strings.NewReader("trust:\n  rules:\n    - repositories: docker.io/library/*\n    - repositories: docker.io/**\n      mode: audit\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		gun  string
		want *Rule
	}{
		{"docker.io/library/alpine", &c.Trust.Rules[0]},
		{"docker.io/myorg/app", &c.Trust.Rules[1]},
		{"docker.io/library/alpine/extra", &c.Trust.Rules[1]},
		{"quay.io/myorg/app", nil},
	}
	for _, tt := range tests {
		t.Run(tt.gun, func(t *testing.T) {
			if got := c.Trust.RuleFor(tt.gun); got != tt.want {
				t.Errorf("RuleFor(%q) = %p, want %p (rules at %p, %p)", tt.gun, got, tt.want, &c.Trust.Rules[0], &c.Trust.Rules[1])
			}
		})
	}
	for i, r := range c.Trust.Rules {
		if r.Index != i {
			t.Errorf("trust.rules[%d].Index = %d", i, r.Index)
		}
	}
}

func TestPinningFor(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string][]byte{"a.pem": newCert(t).cert, "b.pem": newCert(t).cert, "c.pem": newCert(t).cert})
	a, b, c := filepath.Join(dir, "a.pem"), filepath.Join(dir, "b.pem"), filepath.Join(dir, "c.pem")
	id1, id2 := strings.Repeat("1", 64), strings.Repeat("2", 64)
	cfg, err := Load(strings.NewReader("trust:\n  pinning:\n    certs:\n"+
		"      docker.io/library/alpine: ["+id2+", "+id1+"]\n      reg.example:5443/team/app: ["+id1+"]\n"+
		"    ca:\n      reg.example:5443/: "+a+"\n      reg.example:5443/team/: "+b+"\n      docker.io/lib: "+c+"\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		gun  string
		want Pins
	}{
		{"docker.io/library/alpine", Pins{CertIDs: []string{id1, id2}, CAs: []CAPin{{"docker.io/lib", c}}}},
		{"docker.io/library/alpine2", Pins{CAs: []CAPin{{"docker.io/lib", c}}}},
		{"docker.io/library", Pins{CAs: []CAPin{{"docker.io/lib", c}}}},
		{"docker.io/li", Pins{}},
		{"docker.io/myorg/app", Pins{}},
		{"reg.example:5443/team/app", Pins{CertIDs: []string{id1}, CAs: []CAPin{{"reg.example:5443/", a}, {"reg.example:5443/team/", b}}}},
		{"reg.example:5443/team/other", Pins{CAs: []CAPin{{"reg.example:5443/", a}, {"reg.example:5443/team/", b}}}},
		{"reg.example:5443/other/app", Pins{CAs: []CAPin{{"reg.example:5443/", a}}}},
		{"reg.example:5443", Pins{}},
		{"reg.example:54430/x", Pins{}},
		{"", Pins{}},
	}
	if !cfg.Trust.Pinning.Compiled() {
		t.Error("Load's pinning is not compiled")
	}
	if raw := (Pinning{Certs: map[string][]string{"docker.io/library/alpine": {id1}}}); raw.Compiled() {
		t.Error("a Pinning Load did not build says it is compiled: its pins would pin nothing")
	}
	for _, tt := range tests {
		t.Run(tt.gun, func(t *testing.T) {
			got := cfg.Trust.Pinning.For(tt.gun)
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("For(%q) (-want +got):\n%s", tt.gun, diff)
			}
			if got.Pinned() != (len(tt.want.CertIDs)+len(tt.want.CAs) > 0) {
				t.Errorf("For(%q).Pinned() = %v", tt.gun, got.Pinned())
			}
		})
	}
	notLoaded := Pinning{Certs: map[string][]string{"docker.io/library/alpine": {id1}}}
	if got := notLoaded.For("docker.io/library/alpine"); got.Pinned() {
		t.Errorf("a Pinning not compiled by Load pins %+v", got)
	}
}

func TestModeUnmarshalText(t *testing.T) {
	tests := []struct {
		in      string
		want    Mode
		wantErr bool
	}{
		{"enforce", Enforce, false},
		{"audit", Audit, false},
		{"Enforce", "", true},
		{"", "", true},
		{"warn", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var m Mode
			err := m.UnmarshalText([]byte(tt.in))
			if m != tt.want || (err != nil) != tt.wantErr {
				t.Errorf("UnmarshalText(%q) = %q, %v; want %q, error %v", tt.in, m, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestMissingUnmarshalText(t *testing.T) {
	tests := []struct {
		in      string
		want    Missing
		wantErr bool
	}{
		{"block", MissingBlock, false},
		{"wait", MissingWait, false},
		{"allow", MissingAllow, false},
		{"", "", false}, // Load fills the default
		{"Wait", MissingAllow, true},
		{"later", MissingAllow, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			m := MissingAllow
			err := m.UnmarshalText([]byte(tt.in))
			if m != tt.want || (err != nil) != tt.wantErr {
				t.Errorf("UnmarshalText(%q) = %q, %v; want %q, error %v", tt.in, m, err, tt.want, tt.wantErr)
			}
		})
	}
}

// TestExample loads config/trustproxy.yaml with the files it names laid out
// beside it.
func TestExample(t *testing.T) {
	example, err := os.ReadFile("trustproxy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tlsPair, registryCA, notaryCA, rootCA, alice, bob := newCert(t), newCert(t), newCert(t), newCert(t), newCert(t), newCert(t)
	writeFiles(t, dir, map[string][]byte{
		"trustproxy.yaml":             example,
		"certs/tls.crt":               tlsPair.cert,
		"certs/tls.key":               tlsPair.key,
		"certs/registry-ca.pem":       registryCA.cert,
		"certs/notary-ca.pem":         notaryCA.cert,
		"certs/root-ca.pem":           rootCA.cert,
		"keys/alice.pub":              alice.pub,
		"keys/bob.crt":                bob.cert,
		"keys/release-ci-cosign.pub":  alice.pub,
		"certs/trivy-ca.pem":          registryCA.cert,
		"secrets/trivy-authorization": []byte("Bearer trivy-adapter-token\n"),
		"secrets/ci-report-token":     []byte("0123456789abcdef0123456789abcdef\n"),
		"secrets/dockerhub-password":  []byte("change-me\n"),
		"secrets/docker-config.json":  []byte(`{"credHelpers": {"registry.example.com:5443": "ecr-login"}}`),
	})
	got, err := LoadFile(filepath.Join(dir, "trustproxy.yaml"), nil)
	if err != nil {
		t.Fatal(err)
	}

	path := func(name string) string { return filepath.Join(dir, name) }
	want := &Config{
		Listen:             "0.0.0.0:5000",
		DataDir:            path("data"),
		TLS:                TLS{CertFile: path("certs/tls.crt"), KeyFile: path("certs/tls.key")},
		Storage:            map[string]map[string]any{"filesystem": {"rootdirectory": path("data/storage")}},
		StorageVerifyBlobs: new(true),
		Upstreams: []Upstream{
			{
				Name: "docker.io",
				Endpoint: Endpoint{URL: "https://registry-1.docker.io", CAFile: path("certs/registry-ca.pem"),
					Username: "trustproxy", PasswordFile: path("secrets/dockerhub-password"), TokenRealms: []string{"https://auth.docker.io"}},
				RedirectHosts: []string{},
				Notary: Endpoint{URL: "https://notary.example.internal", CAFile: path("certs/notary-ca.pem"), Username: "trustproxy", Password: "change-me",
					TokenRealms: []string{"https://auth.example.internal"}},
			},
			{
				Name: "registry.example.com:5443",
				Endpoint: Endpoint{URL: "https://registry.example.com:5443", CAFile: path("certs/registry-ca.pem"),
					DockerConfig: path("secrets/docker-config.json")},
				RedirectHosts: []string{"minio.example.com:9000"},
				Notary:        Endpoint{URL: "https://notary.example.com:4443", CAFile: path("certs/notary-ca.pem"), Username: "mirror", Password: "change-me"},
			},
		},
		Trust: Trust{
			Pinning: Pinning{
				Certs: map[string][]string{"docker.io/library/alpine": {"8f1a4c6e0b2d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c5e7b9d1f3a"}},
				CA:    map[string]string{"registry.example.com:5443/": path("certs/root-ca.pem")},
			},
			Signers: []Signer{
				{Name: "alice", PublicKey: path("keys/alice.pub"), Keys: [][]byte{alice.spki}},
				{Name: "release-ci", KeyIDs: []string{"3c5e7b9d1f3a8f1a4c6e0b2d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a"}, CosignKey: path("keys/release-ci-cosign.pub")},
				{Name: "bob", PublicKey: path("keys/bob.crt"), Keys: [][]byte{bob.spki}, KeyIDs: []string{"5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c5e7b9d1f3a8f1a4c6e0b2d3f"}},
			},
			Rules: []Rule{
				{Repositories: "registry.example.com:5443/**", Signers: []string{"release-ci", "bob"}, Roles: []string{"targets/releases"}, Mode: Enforce, MaxStaleness: 24 * time.Hour,
					Sources: []Source{SourceNotary, SourceCosign}, Require: RequireAll, AllowNoTlog: true,
					Scan: &ScanPolicy{Severity: severity.High, MaxReportAge: 72 * time.Hour, Missing: MissingWait, Wait: 30 * time.Second,
						Allowlist: []AllowedVulnerability{{ID: "CVE-2024-3094", Expires: time.Date(2027, 1, 31, 0, 0, 0, 0, time.UTC),
							Reason: "xz-utils is not installed at run time; rebuild tracked in OPS-1234"}}}},
				{Repositories: "docker.io/library/*", Signers: []string{"alice"}, Roles: []string{"targets/releases", "targets"}, Mode: Enforce, MaxStaleness: 6 * time.Hour, Sources: notaryOnly, Require: RequireAny, Index: 1},
				{Repositories: "docker.io/**", Roles: []string{"targets/releases", "targets"}, Mode: Audit, TOFU: true, MaxStaleness: 24 * time.Hour, Sources: notaryOnly, Require: RequireAny, Index: 2},
			},
			RefreshTTL:   5 * time.Minute,
			MaxStaleness: 24 * time.Hour,
			RefusalTTL:   10 * time.Second,
			Cosign:       Cosign{ReverifyTTL: 5 * time.Minute},
		},
		Scan: Scan{
			RegistryURL: "https://trustproxy.example.internal:5000",
			Scanners: []Scanner{{Name: "trivy", URL: "https://trivy-adapter.example.internal:8443", CAFile: path("certs/trivy-ca.pem"),
				AuthorizationFile: path("secrets/trivy-authorization"), Authorization: "Bearer trivy-adapter-token"}},
			ReportTokenFile: path("secrets/ci-report-token"), ReportToken: "0123456789abcdef0123456789abcdef",
			CredentialTTL: 15 * time.Minute, Timeout: 10 * time.Minute,
		},
		Redis:     defaults().Redis,
		Retention: Retention{MaxAge: 720 * time.Hour, MaxBytes: 500 << 30, Interval: time.Hour},
		Limits:    defaults().Limits,
		Log:       Log{Level: "info"},
		Metrics:   Metrics{Listen: "127.0.0.1:9090"},
	}
	s := want.Trust.Signers
	want.Trust.Rules[0].TrustedSigners = []*Signer{&s[1], &s[2]}
	want.Trust.Rules[1].TrustedSigners = []*Signer{&s[0]}
	if got.Trust.Signers[1].CosignPEM == nil {
		t.Error("the example's cosign key is not read")
	}
	if diff := cmp.Diff(want, got, ignoreCompiled); diff != "" {
		t.Errorf("LoadFile(example) mismatch (-want +got):\n%s", diff)
	}
	for i, r := range got.Trust.Rules {
		for j, s := range r.TrustedSigners {
			if k := slices.IndexFunc(got.Trust.Signers, func(x Signer) bool { return x.Name == r.Signers[j] }); s != &got.Trust.Signers[k] {
				t.Errorf("trust.rules[%d].TrustedSigners[%d] does not point into Trust.Signers", i, j)
			}
		}
	}
}

func TestByteSizeUnmarshalText(t *testing.T) {
	tests := []struct {
		in   string
		want ByteSize
		err  bool
	}{
		{in: "0", want: 0},
		{in: "1024", want: 1024},
		{in: "500GiB", want: 500 << 30},
		{in: "2 TB", want: 2e12},
		{in: "10MB", want: 10e6},
		{in: "7B", want: 7},
		{in: "1.5GiB", err: true},
		{in: "GiB", err: true},
		{in: "-5", err: true},
		{in: "9999999TiB", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var b ByteSize
			err := b.UnmarshalText([]byte(tt.in))
			if (err != nil) != tt.err || b != tt.want {
				t.Errorf("UnmarshalText(%q) = %d, %v; want %d, error %v", tt.in, b, err, tt.want, tt.err)
			}
		})
	}
}

var notaryOnly = []Source{SourceNotary}

// TestCosignRule: a rule listing cosign has its signers' cosign keys read
// and checked at load; without allow_no_tlog and without a trusted
// root it does not load, naming the field; a signer without a cosign key
// under a cosign-only rule is named.
func TestCosignRule(t *testing.T) {
	dir := t.TempDir()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, dir, map[string][]byte{
		"cosign.pub": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		"bad.pub":    []byte("not a key"),
	})
	signers := "trust:\n  signers:\n    - name: ci\n      cosign_key: " + filepath.Join(dir, "cosign.pub") +
		"\n    - name: bad\n      cosign_key: " + filepath.Join(dir, "bad.pub") + "\n    - name: alice\n      key_ids: [" + strings.Repeat("a", 64) + "]\n"
	load := func(rule string) (*Config, error) {
		return Load(strings.NewReader(signers+"  rules:\n    - repositories: '**'\n"+rule), nil)
	}
	if _, err := load("      sources: [cosign]\n      signers: [ci]\n"); err == nil || !strings.Contains(err.Error(), "trust.rules[0].allow_no_tlog: cosign signatures must have a transparency-log entry") {
		t.Errorf("no tlog, no trusted root: %v", err)
	}
	if _, err := load("      sources: [cosign]\n      signers: [alice]\n      allow_no_tlog: true\n"); err == nil || !strings.Contains(err.Error(), `trust.rules[0].signers[0]: signer "alice" has no key for any source of this rule [cosign]`) {
		t.Errorf("signer without cosign key: %v", err)
	}
	if _, err := load("      signers: [ci]\n"); err == nil || !strings.Contains(err.Error(), `signer "ci" has no key for any source of this rule [notary]`) {
		t.Errorf("a cosign signer under a Notary rule: %v", err)
	}
	if _, err := load("      signers: [bad]\n"); err == nil || !strings.Contains(err.Error(), "trust.signers[1].cosign_key: not a PEM public key") {
		t.Errorf("bad cosign key: %v", err)
	}
	c, err := Load(strings.NewReader(strings.Replace(signers, "    - name: bad\n      cosign_key: "+filepath.Join(dir, "bad.pub")+"\n", "", 1)+
		"  rules:\n    - repositories: '**'\n      sources: [notary, cosign]\n      require: all\n      signers: [ci, alice]\n      allow_no_tlog: true\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	r := c.Trust.RuleFor("docker.io/library/app")
	if c.Trust.Signers[0].CosignPEM == nil || r.Require != RequireAll || !r.Has(SourceCosign) || !r.Has(SourceNotary) || r.NotaryOnly() {
		t.Errorf("rule not compiled: %+v", r)
	}
	if !slices.Contains(c.Files(), filepath.Join(dir, "cosign.pub")) {
		t.Errorf("Files() = %v, want the cosign key watched", c.Files())
	}
}

// TestCosignIdentity: a keyless signer's identity names exactly one of
// each pair, its regular expressions compile, and a rule with such a
// signer needs trust.cosign.trusted_root, whose content is summed.
func TestCosignIdentity(t *testing.T) {
	dir := t.TempDir()
	tr, err := root.NewTrustedRoot(root.TrustedRootMediaType01, nil, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	rootJSON, err := json.Marshal(tr)
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, dir, map[string][]byte{"trusted_root.json": rootJSON})
	signer := func(id string) string {
		return "trust:\n  signers:\n    - name: ci\n      cosign_identity: {" + id + "}\n"
	}
	rule := "  rules:\n    - repositories: '**'\n      sources: [cosign]\n      signers: [ci]\n"
	withRoot := "  cosign:\n    trusted_root: " + filepath.Join(dir, "trusted_root.json") + "\n"
	tests := []struct {
		name, yaml string
		want       string // "" when it loads
	}{
		{"exact", signer("issuer: https://accounts.example.test, subject: ci@example.test") + withRoot + rule, ""},
		{"regexps", signer(`issuer_regexp: 'https://.*\.example\.test', subject_regexp: '.*@example\.test'`) + withRoot + rule, ""},
		{"no issuer", signer("subject: ci@example.test"), "trust.signers[0].cosign_identity: set issuer or issuer_regexp"},
		{"both subjects", signer("issuer: x, subject: a, subject_regexp: b"), "trust.signers[0].cosign_identity: set subject or subject_regexp, not both"},
		{"bad regexp", signer("issuer: x, subject_regexp: '(unclosed'"), "trust.signers[0].cosign_identity.subject_regexp: error parsing regexp"},
		{"no trusted root", signer("issuer: x, subject: y") + rule + "      allow_no_tlog: true\n",
			"trust.rules[0].signers: a signer of this rule has a cosign_identity (keyless), and trust.cosign.trusted_root is not set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(strings.NewReader(tt.yaml), nil)
			switch {
			case tt.want == "" && err != nil:
				t.Fatal(err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v, want %q", err, tt.want)
			case tt.want == "" && (c.Trust.Cosign.RootSum != sha256.Sum256(rootJSON) || c.Trust.Signers[0].CosignIdentity == nil):
				t.Fatalf("trusted root sum %x, identity %+v", c.Trust.Cosign.RootSum, c.Trust.Signers[0].CosignIdentity)
			}
		})
	}
}

// TestRedisFloorReplicasDefault: a trust floor write waits for one Redis
// replica where a failover can promote one (Sentinel, Cluster), for none on
// a single node, and for what the file says when it says so.
func TestRedisFloorReplicasDefault(t *testing.T) {
	key := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(key, []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, redis string
		want        int
	}{
		{"single node", "addrs: [127.0.0.1:6379]", 0},
		{"sentinel", "addrs: [127.0.0.1:26379], master_name: m", 1},
		{"cluster", "addrs: [127.0.0.1:7000, 127.0.0.1:7001]", 1},
		{"cluster, none asked", "addrs: [127.0.0.1:7000, 127.0.0.1:7001], floor_replicas: 0", 0},
		{"single node, two asked", "addrs: [127.0.0.1:6379], floor_replicas: 2", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(strings.NewReader("redis: {"+tt.redis+", state_key_file: "+key+"}\n"), nil)
			if err != nil {
				t.Fatal(err)
			}
			if c.Redis.FloorReplicas == nil || *c.Redis.FloorReplicas != tt.want {
				t.Fatalf("floor_replicas = %v, want %d", c.Redis.FloorReplicas, tt.want)
			}
		})
	}
}
