package config

import (
	"encoding"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sigstore/sigstore-go/pkg/root"
	"gopkg.in/yaml.v3"

	"github.com/trustproxy/trustproxy/internal/severity"
)

// Config is trustproxy's whole configuration, as read from YAML.
type Config struct {
	// Listen is the address the registry API listens on. Default 127.0.0.1:5000.
	Listen string `yaml:"listen"`
	// DataDir holds trust metadata caches and, by default, filesystem storage.
	DataDir string `yaml:"data_dir"`
	// TLS serves HTTPS when both files are set.
	TLS TLS `yaml:"tls"`
	// Storage is distribution's storage section: exactly one driver name
	// (filesystem, inmemory, s3, gcs, azure) with its parameters, passed through.
	// Default: filesystem under DataDir/storage.
	Storage map[string]map[string]any `yaml:"storage"`
	// StorageVerifyBlobs hashes every stored blob as it is served and
	// never sends its last byte unless the blob hashes to its digest, for
	// storage that others can write (a shared bucket). Default true; false
	// serves stored blobs as they are (VerifyStoredBlobs).
	StorageVerifyBlobs *bool `yaml:"storage_verify_blobs"`
	// Upstreams are the registries proxied. The first one is the default, used
	// when a request names no other (by ns parameter or path prefix).
	Upstreams []Upstream `yaml:"upstreams"`
	Trust     Trust      `yaml:"trust"`
	Scan      Scan       `yaml:"scan"`
	Redis     Redis      `yaml:"redis"`
	Retention Retention  `yaml:"retention"`
	Limits    Limits     `yaml:"limits"`
	Log       Log        `yaml:"log"`
	Metrics   Metrics    `yaml:"metrics"`
	Debug     Debug      `yaml:"debug"`
}

// VerifyStoredBlobs says whether stored blobs are hashed as they are
// served (storage_verify_blobs, default true).
func (c *Config) VerifyStoredBlobs() bool {
	return c.StorageVerifyBlobs == nil || *c.StorageVerifyBlobs
}

// Metrics is the listener of /metrics (Prometheus), apart from the
// registry API: off unless Listen is set. It serves /healthz and /readyz
// too; the registry listener serves those but not /metrics.
type Metrics struct {
	// Listen is its address, e.g. 127.0.0.1:9090 (TRUSTPROXY_METRICS_LISTEN).
	Listen string `yaml:"listen"`
}

// TLS names the certificate and key files of the listener.
type TLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Upstream is one proxied registry and the Notary server holding its trust data.
type Upstream struct {
	// Name is the registry host as it appears in Docker Content Trust GUNs
	// (docker.io for Docker Hub): the GUN of repository R is Name/R.
	Name string `yaml:"name"`
	// Endpoint is the registry: URL is its base URL, e.g.
	// https://registry-1.docker.io. Docker Hub's token realm is
	// https://auth.docker.io.
	Endpoint `yaml:",inline"`
	// RedirectHosts are hosts (host or host:port) the registry may redirect
	// to even though they resolve to loopback, private or link-local
	// addresses, e.g. an internal object store. Any other redirect target
	// must resolve to public addresses.
	RedirectHosts []string `yaml:"redirect_hosts"`
	// Notary is the trust server of the registry. An empty URL means none
	// is configured: every pull from that upstream is refused in enforce
	// mode.
	Notary Endpoint `yaml:"notary"`
}

// Endpoint is a server trustproxy connects to, a registry or a Notary
// server, and what it may make trustproxy send: internal/egress makes the
// client of one.
type Endpoint struct {
	// URL is the server's base URL: its origin receives the credentials.
	URL string `yaml:"url"`
	// CAFile is a PEM file of CA certificates trusted besides the system's.
	CAFile string `yaml:"ca_file"`
	// The credentials come from one source at most: Username with
	// Password, Username with PasswordFile, or DockerConfig.
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// PasswordFile is a file holding Username's password on one line. It
	// is read again whenever it changes, so a rotated password needs no
	// restart.
	PasswordFile string `yaml:"password_file"`
	// DockerConfig is a docker CLI config file (config.json) whose
	// credHelpers, credsStore or auths entry for URL's host gives the
	// credentials, resolved when they are used (a helper is asked again
	// after a minute, or at once when the server refuses its answer).
	DockerConfig string `yaml:"docker_config"`
	// TokenRealms are the origins (scheme://host[:port]) besides URL's own
	// that may receive token requests, with the credentials: a challenge
	// naming any other realm is refused.
	TokenRealms []string `yaml:"token_realms"`
}

// Trust is the trust policy: pinned roots, named signers and rules.
type Trust struct {
	Pinning Pinning  `yaml:"pinning"`
	Signers []Signer `yaml:"signers"`
	// Rules are matched in order against the GUN; the first match decides
	// (RuleFor). A GUN no rule matches is refused.
	Rules []Rule `yaml:"rules"`
	// RefreshTTL bounds how long verified trust data is used before the
	// Notary server is asked again. Default 1m.
	RefreshTTL time.Duration `yaml:"refresh_ttl"`
	// MaxStaleness is how long cached trust data may stand in for a fresh
	// timestamp from the Notary server (down, answering errors or 404)
	// before the repository is refused, even if the data has not expired.
	// Default 24h; a rule may set its own.
	MaxStaleness time.Duration `yaml:"max_staleness"`
	// RefusalTTL is how long a refusal of a whole repository (no trust
	// data, unreachable or invalid) is remembered before the Notary server
	// is asked again; never longer than RefreshTTL. Default 10s.
	RefusalTTL time.Duration `yaml:"refusal_ttl"`
	// Cosign holds the settings of the cosign trust source shared by the
	// rules that list it.
	Cosign Cosign `yaml:"cosign"`
	// Notation holds the settings of the Notation trust source shared by
	// the rules that list it.
	Notation Notation `yaml:"notation"`
}

// Notation configures the Notation trust source (rules with sources:
// [notation]). Its verdicts are kept for trust.cosign.reverify_ttl, as
// cosign's.
type Notation struct {
	// Level is the Notation verification level: strict ("" too: integrity,
	// authenticity, expiry and certificate validity enforced) or permissive
	// (expiry and validity only logged). audit and skip are refused: they do
	// not check authenticity (a rule's mode: audit is trustproxy's own).
	Level string `yaml:"level"`
	// Revocation is off ("" too) or on. On, every verification asks the
	// certificates' OCSP responders and CRL distribution points over the
	// network, each request bounded by a timeout; off, revocation is not
	// checked (a revoked signer's key is removed by removing its CA or
	// identity from the configuration).
	Revocation string `yaml:"revocation"`
	// RevocationHosts are the hosts (host or host:port) of revocation
	// servers that may be reached although they resolve to non-public
	// addresses (a CRL distribution point or OCSP responder of an in-house
	// CA). Any other host a certificate names is reached on public
	// addresses only: a signer cannot make trustproxy fetch from the
	// cluster's inside.
	RevocationHosts []string `yaml:"revocation_hosts"`
}

// Cosign configures the cosign trust source (rules with sources: [cosign]).
type Cosign struct {
	// TrustedRoot is a Sigstore trusted_root.json file naming the Rekor
	// logs (and, for keyless signatures, the Fulcio CAs) whose entries
	// count. Required by a cosign rule without allow_no_tlog. It is pinned:
	// trustproxy never updates it from Sigstore's TUF repository.
	TrustedRoot string `yaml:"trusted_root"`
	// ReverifyTTL is how long a digest's cosign verdict is used before its
	// signatures are read and verified again: a deleted signature stops
	// serving within it. Default 5m.
	ReverifyTTL time.Duration `yaml:"reverify_ttl"`

	// Root is TrustedRoot, read by Load; nil without it.
	Root root.TrustedMaterial `yaml:"-"`
	// RootSum is the SHA-256 of TrustedRoot's content as Load read it:
	// verdicts shared between replicas name it, so that a replaced root
	// voids them.
	RootSum [32]byte `yaml:"-"`
}

// Pinning says which root keys are trusted, as notary's trustpinning does.
type Pinning struct {
	// Certs maps a GUN to the IDs of the root certificates trusted for it.
	Certs map[string][]string `yaml:"certs"`
	// CA maps a GUN prefix to a PEM file of CA certificates that must have
	// issued the root certificate.
	CA map[string]string `yaml:"ca"`

	// compiled is Certs and CA compiled by Load, for For.
	compiled pins
}

// Signer is a named key the operator trusts to sign tags.
type Signer struct {
	Name string `yaml:"name"`
	// PublicKey is a PEM file holding a public key or an x509 certificate.
	PublicKey string `yaml:"public_key"`
	// KeyIDs are TUF key IDs of the signer, either form (over the certificate,
	// as targets.json lists it, or over the bare public key, as
	// `notary key list` shows it).
	KeyIDs []string `yaml:"key_ids,omitempty"`
	// CosignKey is a PEM file holding the signer's cosign public key (the
	// cosign.pub of `cosign generate-key-pair`): ECDSA P-256, Ed25519 or
	// RSA of 2048 bits or more.
	CosignKey string `yaml:"cosign_key,omitempty"`
	// CosignIdentity is who the signer's keyless cosign signatures are
	// certified for, by a CA of trust.cosign.trusted_root. A signer may
	// have a cosign_key, a cosign_identity or both: either makes a
	// signature the signer's.
	CosignIdentity *CosignIdentity `yaml:"cosign_identity,omitempty"`
	// NotationCA is a PEM file of the CA certificates (a Notation trust
	// store) under which the signer's Notation signing certificates are
	// issued.
	NotationCA string `yaml:"notation_ca,omitempty"`
	// NotationIdentities are the signing certificates' subjects trusted
	// under NotationCA, as Notation's trust policy writes them
	// ("x509.subject:C=US, ST=WA, O=Acme, CN=release"), or the one "*" for
	// any the CAs issued. Required with NotationCA: a CA that issues to
	// many must be trusted for all of them on purpose.
	NotationIdentities []string `yaml:"notation_identities,omitempty"`

	// Keys are the PKIX DER public keys of every PEM block of PublicKey
	// (the key itself, or a certificate's), as Load read them. Nil without
	// PublicKey.
	Keys [][]byte `yaml:"-"`
	// CosignPEM is CosignKey's content as Load read and checked it; nil
	// without CosignKey. internal/proxy compiles it (cosign.ParseSigner).
	CosignPEM []byte `yaml:"-"`
	// NotationPEM is NotationCA's content as Load read and checked it; nil
	// without NotationCA. internal/proxy compiles it (notation.ParseSigner).
	NotationPEM []byte `yaml:"-"`
}

// Signs says whether s has a key for source: notary a public_key or
// key_ids, cosign a cosign_key or cosign_identity, notation a notation_ca.
func (s *Signer) Signs(source Source) bool {
	switch source {
	case SourceNotary:
		return s.PublicKey != "" || len(s.KeyIDs) > 0
	case SourceCosign:
		return s.CosignKey != "" || s.CosignIdentity != nil
	case SourceNotation:
		return s.NotationCA != ""
	}
	return false
}

// CosignIdentity is a keyless signer's certificate identity: its OIDC
// issuer and its subject (the certificate's SAN: an email, or a URI such
// as a CI workflow's), each exact or a regular expression (RE2) that must
// match the whole value. Exactly one of issuer and issuer_regexp, and one
// of subject and subject_regexp.
type CosignIdentity struct {
	Issuer        string `yaml:"issuer,omitempty"`
	IssuerRegexp  string `yaml:"issuer_regexp,omitempty"`
	Subject       string `yaml:"subject,omitempty"`
	SubjectRegexp string `yaml:"subject_regexp,omitempty"`
}

// Mode says what a rule does with an image that fails verification.
type Mode string

const (
	// Enforce refuses what does not verify.
	Enforce Mode = "enforce"
	// Audit serves everything and logs what enforce would have refused.
	Audit Mode = "audit"
)

// UnmarshalText sets m from enforce or audit and rejects any other word.
func (m *Mode) UnmarshalText(b []byte) error {
	switch v := Mode(b); v {
	case Enforce, Audit:
		*m = v
		return nil
	}
	return fmt.Errorf("mode %q: want %s or %s", b, Enforce, Audit)
}

// UnmarshalYAML is UnmarshalText with the line of the YAML node in the error,
// which yaml.v3 leaves out for TextUnmarshaler errors.
func (m *Mode) UnmarshalYAML(n *yaml.Node) error {
	return unmarshalWord(n, m, fmt.Sprintf("mode: want %s or %s", Enforce, Audit))
}

// unmarshalWord is the UnmarshalYAML of an enum u: UnmarshalText of a scalar
// node, its error given the node's line, which yaml.v3 leaves out for
// TextUnmarshaler errors; any other node is refused with notWord.
func unmarshalWord(n *yaml.Node, u encoding.TextUnmarshaler, notWord string) error {
	err := errors.New(notWord)
	if n.Kind == yaml.ScalarNode {
		err = u.UnmarshalText([]byte(n.Value))
	}
	if err != nil {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %v", n.Line, err)}}
	}
	return nil
}

// Rule is the policy for the GUNs its pattern matches.
type Rule struct {
	// Repositories is a pattern over the GUN: path.Match syntax, where * stays
	// within one path segment, and a trailing /** (or ** alone) matches any depth.
	Repositories string `yaml:"repositories"`
	// Signers names entries of Trust.Signers; a tag counts as signed only when
	// a role holding one of their keys signed it. Empty: any valid signature of
	// an allowed role counts (what the docker CLI accepted).
	Signers []string `yaml:"signers"`
	// Roles are the roles searched for a tag, in order. Default
	// [targets/releases, targets], as the docker CLI does.
	Roles []string `yaml:"roles"`
	// Mode is enforce (default) or audit.
	Mode Mode `yaml:"mode"`
	// TOFU trusts a root on first use for GUNs that Pinning does not cover.
	// Off unless set: a replica's first fetch would otherwise decide the root.
	TOFU bool `yaml:"tofu"`
	// MaxStaleness overrides Trust.MaxStaleness for this rule's GUNs.
	MaxStaleness time.Duration `yaml:"max_staleness"`
	// Scan is the vulnerability scan policy of the rule's images; nil: no
	// scan gate.
	Scan *ScanPolicy `yaml:"scan"`
	// Sources are the trust sources that judge the rule's images: notary
	// (Docker Content Trust), cosign and notation. Default [notary].
	Sources []Source `yaml:"sources"`
	// Require says how many of Sources must verify an image: any (default)
	// or all (each of them, the same digest).
	Require Require `yaml:"require"`
	// AllowNoTlog accepts cosign signatures without a transparency-log
	// entry (cosign sign --tlog-upload=false). A rule listing cosign must
	// set it or trust.cosign.trusted_root must be given.
	AllowNoTlog bool `yaml:"allow_no_tlog"`

	// Index is the rule's position in Trust.Rules, set by Load: which rule
	// decided, in logs.
	Index int `yaml:"-"`
	// TrustedSigners are the entries of Trust.Signers that Signers names, in
	// that order, set by Load.
	TrustedSigners []*Signer `yaml:"-"`

	// pattern is Repositories compiled by Load; a Rule not from Load matches
	// nothing.
	pattern pattern
}

// Source is a trust source a rule may list.
type Source string

// The trust sources.
const (
	// SourceNotary is Docker Content Trust (Notary v1): signed tags.
	SourceNotary Source = "notary"
	// SourceCosign is cosign signatures of a digest, by keys the rule's
	// signers pin (cosign_key).
	SourceCosign Source = "cosign"
	// SourceNotation is Notation signatures of a digest, under the CA
	// certificates and identities the rule's signers pin (notation_ca,
	// notation_identities).
	SourceNotation Source = "notation"
)

// UnmarshalText sets s from notary, cosign or notation and rejects any other word.
func (s *Source) UnmarshalText(b []byte) error {
	switch v := Source(b); v {
	case SourceNotary, SourceCosign, SourceNotation:
		*s = v
		return nil
	}
	return fmt.Errorf("source %q: want %s, %s or %s", b, SourceNotary, SourceCosign, SourceNotation)
}

// UnmarshalYAML is UnmarshalText with the line of the YAML node in the error.
func (s *Source) UnmarshalYAML(n *yaml.Node) error {
	return unmarshalWord(n, s, fmt.Sprintf("source: want %s, %s or %s", SourceNotary, SourceCosign, SourceNotation))
}

// Require says how many of a rule's sources must verify an image.
type Require string

// The values of Rule.Require.
const (
	// RequireAny serves what one of the sources verifies.
	RequireAny Require = "any"
	// RequireAll serves only what every source verifies, the same digest.
	RequireAll Require = "all"
)

// UnmarshalText sets r from any or all and rejects any other word.
func (r *Require) UnmarshalText(b []byte) error {
	switch v := Require(b); v {
	case RequireAny, RequireAll:
		*r = v
		return nil
	}
	return fmt.Errorf("require %q: want %s or %s", b, RequireAny, RequireAll)
}

// UnmarshalYAML is UnmarshalText with the line of the YAML node in the error.
func (r *Require) UnmarshalYAML(n *yaml.Node) error {
	return unmarshalWord(n, r, fmt.Sprintf("require: want %s or %s", RequireAny, RequireAll))
}

// Has says whether r lists source.
func (r *Rule) Has(source Source) bool { return slices.Contains(r.Sources, source) }

// NotaryOnly says whether r is judged by Notary alone, as every rule was
// before other sources: the default.
func (r *Rule) NotaryOnly() bool { return len(r.Sources) == 1 && r.Sources[0] == SourceNotary }

// Scan configures the vulnerability scan gate: the scanners, how they
// reach trustproxy, and how CI posts reports. A rule's scan section says
// what passes.
type Scan struct {
	// RegistryURL is trustproxy's registry URL as the scanners reach it,
	// e.g. https://trustproxy.internal:5000: a scan request tells the
	// scanner to pull the image from there.
	RegistryURL string `yaml:"registry_url"`
	// Scanners are Harbor scanner adapters (API v1.2): Trivy's, Clair's,
	// Anchore's... Each image is sent to those whose metadata says they
	// consume its manifest type.
	Scanners []Scanner `yaml:"scanners"`
	// ReportTokenFile holds the bearer token that CI sends to post reports
	// to POST /admin/scan/reports/<digest>. Without it that endpoint is off.
	ReportTokenFile string `yaml:"report_token_file"`
	// CredentialTTL is how long the pull credential of a scan request is
	// valid. Default 15m.
	CredentialTTL time.Duration `yaml:"credential_ttl"`
	// Timeout bounds one scan, from the request to its report. Default 10m.
	Timeout time.Duration `yaml:"timeout"`

	// ReportToken is ReportTokenFile's content, read by Load.
	ReportToken string `yaml:"-"`
}

// Scanner is one Harbor scanner adapter.
type Scanner struct {
	Name string `yaml:"name"`
	// URL is the adapter's base URL, without /api/v1.
	URL    string `yaml:"url"`
	CAFile string `yaml:"ca_file"`
	// AuthorizationFile holds the Authorization header value trustproxy
	// sends to the adapter (e.g. "Bearer <token>"), when it wants one.
	AuthorizationFile string `yaml:"authorization_file"`

	// Authorization is AuthorizationFile's content, read by Load.
	Authorization string `yaml:"-"`
}

// ScanPolicy says which scan reports let a rule's images through. Load
// parses its words into their types: nothing is parsed per check.
type ScanPolicy struct {
	// Severity is the lowest severity that blocks: critical (default),
	// high, medium, low, negligible or unknown. The zero Level, in a
	// policy not from Load, is below them all: every finding blocks.
	Severity severity.Level `yaml:"severity"`
	// Allowlist excuses vulnerabilities by ID until each entry expires.
	Allowlist []AllowedVulnerability `yaml:"allowlist"`
	// MaxReportAge is how old a report may be; an older one is treated as
	// missing and a new scan is started. Default 168h.
	MaxReportAge time.Duration `yaml:"max_report_age"`
	// Missing is what no report (or one too old) means: block, wait
	// (default: start a scan and hold the request up to Wait) or allow.
	Missing Missing `yaml:"missing"`
	// Wait bounds how long a request waits for a scan under missing: wait.
	// Default 30s.
	Wait time.Duration `yaml:"wait"`
}

// AllowedVulnerability excuses one vulnerability ID until Expires.
type AllowedVulnerability struct {
	ID string `yaml:"id"`
	// Expires is a date (2027-01-31, meaning its start, UTC) or a time
	// (RFC 3339); required.
	Expires time.Time `yaml:"expires"`
	// Reason says why, for the next reader; required.
	Reason string `yaml:"reason"`
}

// Missing says what a scan policy does with an image that has no report,
// or only one older than its max_report_age. Every one starts a scan.
type Missing string

// The values of ScanPolicy.Missing.
const (
	// MissingBlock refuses the image until a report lets it through.
	MissingBlock Missing = "block"
	// MissingWait holds the request up to ScanPolicy.Wait for the scan.
	MissingWait Missing = "wait"
	// MissingAllow serves the image.
	MissingAllow Missing = "allow"
)

// UnmarshalText sets m from block, wait or allow, or from "" to "", which
// Load replaces with the default (wait), and rejects any other word.
func (m *Missing) UnmarshalText(b []byte) error {
	switch v := Missing(b); v {
	case "", MissingBlock, MissingWait, MissingAllow:
		*m = v
		return nil
	}
	return fmt.Errorf("missing %q: want %s, %s or %s", b, MissingBlock, MissingWait, MissingAllow)
}

// UnmarshalYAML is UnmarshalText with the line of the YAML node in the error.
func (m *Missing) UnmarshalYAML(n *yaml.Node) error {
	return unmarshalWord(n, m, fmt.Sprintf("missing: want %s, %s or %s", MissingBlock, MissingWait, MissingAllow))
}

// Redis is the shared state of several replicas. Without addrs everything
// stays in the process, as for a single replica.
type Redis struct {
	// Addrs are host:port addresses: one for a single node, the Sentinels
	// with MasterName, or the seed nodes of a Cluster.
	Addrs      []string `yaml:"addrs"`
	MasterName string   `yaml:"master_name"`
	// Username (an ACL user) and PasswordFile (its password, or the
	// requirepass password without a username).
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
	// SentinelUsername and SentinelPasswordFile authenticate to the
	// Sentinels (requirepass in sentinel.conf) when they have a password
	// of their own; with master_name only. Keep Sentinels behind one:
	// whoever can talk to a Sentinel can name another master.
	SentinelUsername     string `yaml:"sentinel_username"`
	SentinelPasswordFile string `yaml:"sentinel_password_file"`
	DB                   int    `yaml:"db"`
	// TLS, when CAFile is set: the CA that issued the servers' certificates.
	TLS RedisTLS `yaml:"tls"`
	// KeyPrefix starts every key trustproxy writes. Default "trustproxy:".
	KeyPrefix string `yaml:"key_prefix"`
	// ReplicaURL is the URL at which the other replicas reach this one's
	// listener, e.g. http://10.0.3.7:5000 (TRUSTPROXY_REPLICA_URL, from the
	// pod's IP): a cold blob is then fetched once across replicas, the
	// others streaming the fill from this one. Without it each replica
	// fetches cold blobs itself.
	ReplicaURL string `yaml:"replica_url"`
	// StateKeyFile holds a secret of at least 32 characters, the same for
	// every replica (from the Secret, never from Redis); required with
	// Redis. Redis is shared storage, not a trusted party: every entry that
	// could lead to serving, or names a place to connect to, is sealed with
	// a key derived from it, and the replicas' shared secrets (the peers'
	// key, the scan credential key) are derived from it instead of being
	// kept on Redis.
	StateKeyFile string `yaml:"state_key_file"`
	// PeerNetworks, when set, are the networks (CIDR) the other replicas'
	// addresses lie in: a fill lock naming a replica_url that resolves
	// elsewhere is not followed.
	PeerNetworks []string `yaml:"peer_networks"`
	// Timeout bounds each call to Redis, dialling included (default
	// 250ms): while Redis is down or hangs, no request waits on it longer
	// (then the replica keeps to its own state for a few seconds).
	Timeout time.Duration `yaml:"timeout"`
	// FloorReplicas is how many Redis replicas must have a trust floor
	// write before it counts as shared (WAIT after the write), so that a
	// failover does not lose the last floor written. Default 1 with
	// Sentinel or Cluster, 0 on a single node; 0 waits for none.
	FloorReplicas *int `yaml:"floor_replicas"`
	// FloorWait bounds that wait (default 250ms). When it ends first the
	// floor stays written on the master and on the replica's disk, and
	// trustproxy_redis_floor_unreplicated_total counts it.
	FloorWait time.Duration `yaml:"floor_wait"`
	// PeerListen is the address of a listener of its own for the other
	// replicas' fill requests (/internal/fills), e.g. :5001, served only
	// over TLS with PeerTLS: the registry port then no longer serves them.
	// replica_url then names this listener, as https://. Recommended: a
	// fill in progress is then neither readable nor forgeable on the
	// network. Without it peer traffic is plain HTTP on the registry port.
	PeerListen string `yaml:"peer_listen"`
	// PeerTLS is the cluster's TLS for peer traffic; required with
	// PeerListen.
	PeerTLS PeerTLS `yaml:"peer_tls"`

	// Password is PasswordFile's content, read by Load.
	Password string `yaml:"-"`
	// SentinelPassword is SentinelPasswordFile's content, read by Load.
	SentinelPassword string `yaml:"-"`
	// StateKey is StateKeyFile's content, read by Load.
	StateKey string `yaml:"-"`
	// Peers are PeerNetworks, parsed by Load.
	Peers []netip.Prefix `yaml:"-"`
}

// PeerTLS is mutual TLS between replicas under a cluster CA: each replica
// serves its peer listener with CertFile and KeyFile and presents them as
// its client certificate; a peer is trusted when its certificate chains to
// CAFile. The CA should issue certificates to the replicas only: any
// certificate it issued is taken for a replica's (host names are not
// checked, as pod addresses change). The files are read again when they
// change, so certificates rotate without a restart.
type PeerTLS struct {
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Enabled says whether peer TLS is configured.
func (t PeerTLS) Enabled() bool { return t != PeerTLS{} }

// RedisTLS turns on TLS to Redis.
type RedisTLS struct {
	CAFile     string `yaml:"ca_file"`
	ServerName string `yaml:"server_name"` // default: the host of each node as dialled
}

// Enabled says whether a Redis is configured.
func (r *Redis) Enabled() bool { return len(r.Addrs) > 0 }

// Cluster says whether Addrs are the seeds of a Redis Cluster: several
// addresses without MasterName.
func (r *Redis) Cluster() bool { return r.MasterName == "" && len(r.Addrs) > 1 }

// Limits bounds every input from the network.
type Limits struct {
	// ManifestBytes caps a manifest read from the upstream. Default 4 MiB.
	ManifestBytes int64 `yaml:"manifest_bytes"`
	// Metadata caps per TUF role. Defaults: root 512000, timestamp 16384,
	// snapshot 2 MB, targets (each role) 5 MB.
	RootBytes      int64 `yaml:"root_bytes"`
	TimestampBytes int64 `yaml:"timestamp_bytes"`
	SnapshotBytes  int64 `yaml:"snapshot_bytes"`
	TargetsBytes   int64 `yaml:"targets_bytes"`
	// MaxRootRotations caps the versioned roots walked in one update. Default 32.
	MaxRootRotations int `yaml:"max_root_rotations"`
	// MaxDelegations caps the delegation roles fetched per repository. Default 64.
	MaxDelegations int `yaml:"max_delegations"`
	// UpstreamTimeout bounds a manifest or trust request, and the wait for
	// response headers of a blob; one whole trust update may take twice
	// this. Default 30s.
	UpstreamTimeout time.Duration `yaml:"upstream_timeout"`
	// BlobIdleTimeout aborts a blob download that makes no progress. Default 60s.
	BlobIdleTimeout time.Duration `yaml:"blob_idle_timeout"`
	// MinTransferRate, in bytes per second, sets the overall deadline of a
	// blob download from an upstream: upstream_timeout + size / rate.
	// Default 262144 (256 KiB/s).
	MinTransferRate int64 `yaml:"min_transfer_rate"`
	// ClientWriteTimeout bounds each write to a client: one that stops
	// reading is disconnected after it. Default 60s.
	ClientWriteTimeout time.Duration `yaml:"client_write_timeout"`
	// ShutdownTimeout bounds how long a stopping trustproxy lets requests
	// in flight finish; then their connections are closed and blob
	// downloads still running are cancelled. Default 30s.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
}

// Retention removes stored content that is no longer pulled, online, by
// a collector (internal/retention): off unless MaxAge or MaxBytes is set.
// Content referenced by a current signed target of a repository pulled
// within MaxAge is never removed.
type Retention struct {
	// MaxAge removes content not pulled for this long (and not referenced
	// by a current signed target of a repository pulled within it). 0:
	// content is removed only to keep under MaxBytes.
	MaxAge time.Duration `yaml:"max_age"`
	// MaxBytes is the size budget of the stored blobs: over it, the least
	// recently pulled content that no live repository's signed targets
	// reference is removed until under it. A number of bytes or a string
	// with a unit (500GiB, 2TB). 0: no budget.
	MaxBytes ByteSize `yaml:"max_bytes"`
	// Interval is the time between collections. Default 1h.
	Interval time.Duration `yaml:"interval"`
	// DryRun logs and counts what a collection would remove, and removes
	// nothing.
	DryRun bool `yaml:"dry_run"`
}

// Enabled says whether stored content is collected at all.
func (r Retention) Enabled() bool { return r.MaxAge > 0 || r.MaxBytes > 0 }

// ByteSize is a number of bytes, written in YAML as an integer or as a
// string with a unit: B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB,
// TiB (powers of 1024).
type ByteSize int64

var byteUnits = []struct {
	suffix string
	n      int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
}

// UnmarshalText reads a number of bytes, with an optional unit.
func (b *ByteSize) UnmarshalText(text []byte) error {
	s := strings.TrimSpace(string(text))
	mult := int64(1)
	for _, u := range byteUnits {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(n), u.n
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return fmt.Errorf("%q: want a number of bytes, with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 500GiB", text)
	}
	*b = ByteSize(n * mult)
	return nil
}

// UnmarshalYAML is UnmarshalText with the line of the YAML node in the error.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	return unmarshalWord(n, b, "want a number of bytes, e.g. 500GiB")
}

// Debug is the profiling listener, off unless Listen is set.
type Debug struct {
	// Listen is the address serving net/http/pprof under /debug/pprof/,
	// apart from the registry API. Keep it on loopback: profiles show
	// request paths.
	Listen string `yaml:"listen"`
	// BlockProfileRate and MutexProfileFraction are passed to
	// runtime.SetBlockProfileRate and runtime.SetMutexProfileFraction when
	// Listen is set. Default 0: off.
	BlockProfileRate     int `yaml:"block_profile_rate"`
	MutexProfileFraction int `yaml:"mutex_profile_fraction"`
}

// Log configures the JSON logs.
type Log struct {
	// Level is debug, info, warn or error. Default info.
	Level string `yaml:"level"`
}
