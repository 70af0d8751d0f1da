package config

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sigstore/sigstore-go/pkg/root"
)

// problems collects validation errors, each prefixed with its field path.
type problems []error

func (p *problems) addf(field, format string, args ...any) {
	*p = append(*p, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
}

// validate checks c, after defaults are filled, and compiles its trust
// section: it compiles the pinning, reads each signer's public keys into
// Keys, compiles each rule's pattern and resolves its signers into
// TrustedSigners. It returns
// every problem found, joined. No error message contains a password.
func (c *Config) validate() error {
	var p problems
	if _, port, err := net.SplitHostPort(c.Listen); err != nil {
		p.addf("listen", "%v; want host:port, e.g. 127.0.0.1:5000 or :5000", err)
	} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		p.addf("listen", "port %q is not a number from 0 to 65535", port)
	}
	c.validateTLS(&p)
	c.validateStorage(&p)
	c.validateUpstreams(&p)
	c.validateTrust(&p)
	c.validateScan(&p)
	c.validateRedis(&p)
	c.validateLimits(&p)
	c.validateRetention(&p)
	validateListen(&p, "metrics.listen", c.Metrics.Listen, "127.0.0.1:9090")
	validateListen(&p, "debug.listen", c.Debug.Listen, "127.0.0.1:6060")
	if c.Debug.BlockProfileRate < 0 || c.Debug.MutexProfileFraction < 0 {
		p.addf("debug", "block_profile_rate and mutex_profile_fraction must not be negative")
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		p.addf("log.level", "%q: want debug, info, warn or error", c.Log.Level)
	}
	return errors.Join(p...)
}

func (c *Config) validateTLS(p *problems) {
	t := c.TLS
	switch {
	case t.CertFile == "" && t.KeyFile == "":
		return
	case t.CertFile == "":
		p.addf("tls.cert_file", "required with tls.key_file: set both to serve HTTPS, or neither")
		return
	case t.KeyFile == "":
		p.addf("tls.key_file", "required with tls.cert_file: set both to serve HTTPS, or neither")
		return
	}
	cert, err := readFile(t.CertFile)
	if err != nil {
		p.addf("tls.cert_file", "%v", err)
	}
	key, err2 := readFile(t.KeyFile)
	if err2 != nil {
		p.addf("tls.key_file", "%v", err2)
	}
	if err == nil && err2 == nil {
		if _, err := tls.X509KeyPair(cert, key); err != nil {
			p.addf("tls", "%v", err)
		}
	}
}

func (c *Config) validateStorage(p *problems) {
	drivers := []string{"filesystem", "inmemory", "s3", "gcs", "azure"}
	names := slices.Sorted(maps.Keys(c.Storage))
	for _, name := range names {
		if !slices.Contains(drivers, name) {
			p.addf("storage."+name, "unknown storage driver; use one of %s", strings.Join(drivers, ", "))
		}
	}
	if len(names) != 1 {
		p.addf("storage", "%d drivers (%s); configure exactly one", len(names), strings.Join(names, ", "))
	}
	if root, ok := c.Storage["filesystem"]["rootdirectory"]; ok {
		if s, ok := root.(string); !ok || s == "" {
			p.addf("storage.filesystem.rootdirectory", "want a directory path")
		}
	}
}

func (c *Config) validateUpstreams(p *problems) {
	if len(c.Upstreams) == 0 {
		p.addf("upstreams", "none configured; list at least one registry")
	}
	seen := make(map[string]int)
	for i, u := range c.Upstreams {
		f := fmt.Sprintf("upstreams[%d]", i)
		if err := checkHost(u.Name); err != nil {
			p.addf(f+".name", "%v", err)
		} else if j, dup := seen[u.Name]; dup {
			p.addf(f+".name", "%q is also upstreams[%d].name; names must be unique", u.Name, j)
		} else {
			seen[u.Name] = i
		}
		validateEndpoint(p, f, u.Endpoint)
		for j, h := range u.RedirectHosts {
			if err := checkHost(h); err != nil {
				p.addf(fmt.Sprintf("%s.redirect_hosts[%d]", f, j), "%v", err)
			}
		}
		// A Notary server is optional: without a URL, none is configured.
		switch n := u.Notary; {
		case n.URL != "":
			validateEndpoint(p, f+".notary", n)
		case n.CAFile != "" || n.Username != "" || n.Password != "" || n.PasswordFile != "" || n.DockerConfig != "" || len(n.TokenRealms) > 0:
			p.addf(f+".notary.url", "required with notary ca_file, credentials or token_realms")
		}
	}
}

// validateEndpoint checks e, the endpoint configured at field (upstreams[0]
// or upstreams[0].notary): its URL, CA file, credentials and token realms.
func validateEndpoint(p *problems, field string, e Endpoint) {
	if err := checkURL(e.URL); err != nil {
		p.addf(field+".url", "%v", err)
	}
	if e.CAFile != "" {
		if err := checkCAFile(e.CAFile); err != nil {
			p.addf(field+".ca_file", "%v", err)
		}
	}
	validateCredentials(p, field, e)
	checkRealms(p, field+".token_realms", e.TokenRealms)
}

// validateCredentials checks that e names one source of credentials at
// most (password, password_file or docker_config), with the username it
// needs, and that the file it names is readable now. The secret itself is
// read again when used (internal/egress), never kept here.
func validateCredentials(p *problems, field string, e Endpoint) {
	var set []string
	for _, s := range []struct{ name, v string }{{"password", e.Password}, {"password_file", e.PasswordFile}, {"docker_config", e.DockerConfig}} {
		if s.v != "" {
			set = append(set, s.name)
		}
	}
	if len(set) > 1 {
		p.addf(field+"."+set[1], "set together with %s: give the credentials from one source only (password, password_file or docker_config)", set[0])
		return
	}
	switch {
	case e.DockerConfig != "":
		if e.Username != "" {
			p.addf(field+".username", "not allowed with docker_config: the docker config gives the username")
		}
		b, err := readFile(e.DockerConfig)
		if err != nil {
			p.addf(field+".docker_config", "%v", err)
			break
		}
		var cf struct {
			Auths       map[string]json.RawMessage `json:"auths"`
			CredHelpers map[string]string          `json:"credHelpers"`
			CredsStore  string                     `json:"credsStore"`
		}
		if err := json.Unmarshal(b, &cf); err != nil {
			p.addf(field+".docker_config", "%s is not a docker config file (JSON with auths, credHelpers or credsStore): %v", e.DockerConfig, err)
		}
	case e.PasswordFile != "":
		if e.Username == "" {
			p.addf(field+".username", "required with a password_file")
		}
		if _, err := readSecret(e.PasswordFile); err != nil {
			p.addf(field+".password_file", "%v", err)
		}
	case e.Password != "" && e.Username == "":
		p.addf(field+".username", "required with a password")
	}
}

func (c *Config) validateTrust(p *problems) {
	t := &c.Trust
	for _, gun := range slices.Sorted(maps.Keys(t.Pinning.Certs)) {
		f := fmt.Sprintf("trust.pinning.certs[%q]", gun)
		if err := checkGUN(gun); err != nil {
			p.addf(f, "%v", err)
		}
		if len(t.Pinning.Certs[gun]) == 0 {
			p.addf(f, "no certificate IDs; list the root certificate IDs trusted for this GUN")
		}
		for i, id := range t.Pinning.Certs[gun] {
			if !isKeyID(id) {
				p.addf(fmt.Sprintf("%s[%d]", f, i), "%q is not a certificate ID: want 64 lower-case hex characters", id)
			}
		}
	}
	for _, prefix := range slices.Sorted(maps.Keys(t.Pinning.CA)) {
		f := fmt.Sprintf("trust.pinning.ca[%q]", prefix)
		host, _, _ := strings.Cut(prefix, "/")
		if err := checkHost(host); err != nil {
			p.addf(f, "GUN prefix: %v", err)
		}
		if err := checkCAFile(t.Pinning.CA[prefix]); err != nil {
			p.addf(f, "%v", err)
		}
	}
	t.Pinning.compiled = compilePins(t.Pinning)

	t.Cosign.Root, t.Cosign.RootSum = nil, [32]byte{}
	if t.Cosign.TrustedRoot != "" {
		b, err := readFile(t.Cosign.TrustedRoot)
		var tr *root.TrustedRoot
		if err == nil {
			tr, err = root.NewTrustedRootFromJSON(b)
		}
		if err != nil {
			p.addf("trust.cosign.trusted_root", "%v; want a Sigstore trusted_root.json", err)
		} else {
			t.Cosign.Root, t.Cosign.RootSum = tr, sha256.Sum256(b)
		}
	}
	signers := make(map[string]*Signer)
	for i := range t.Signers {
		s := &t.Signers[i]
		f := fmt.Sprintf("trust.signers[%d]", i)
		switch {
		case s.Name == "":
			p.addf(f+".name", "required")
		case signers[s.Name] != nil:
			p.addf(f+".name", "%q is used by another signer; names must be unique", s.Name)
		default:
			signers[s.Name] = s
		}
		if s.PublicKey == "" && len(s.KeyIDs) == 0 && s.CosignKey == "" && s.CosignIdentity == nil && s.NotationCA == "" {
			p.addf(f, "set public_key, key_ids (Notary), cosign_key or cosign_identity (cosign), or notation_ca (Notation), or several")
		}
		if s.CosignIdentity != nil {
			checkCosignIdentity(p, f+".cosign_identity", s.CosignIdentity)
		}
		checkNotationSigner(p, f, s)
		s.CosignPEM = nil
		if s.CosignKey != "" {
			if b, err := readFile(s.CosignKey); err != nil {
				p.addf(f+".cosign_key", "%v", err)
			} else if err := checkCosignKey(b); err != nil {
				p.addf(f+".cosign_key", "%v", err)
			} else {
				s.CosignPEM = b
			}
		}
		if s.PublicKey != "" {
			keys, err := readPublicKeys(s.PublicKey)
			if err != nil {
				p.addf(f+".public_key", "%v", err)
			}
			s.Keys = keys
		}
		for j, id := range s.KeyIDs {
			if !isKeyID(id) {
				p.addf(fmt.Sprintf("%s.key_ids[%d]", f, j), "%q is not a key ID: want 64 lower-case hex characters, as targets.json or `notary key list` show", id)
			}
		}
	}

	for i := range t.Rules {
		r := &t.Rules[i]
		r.Index = i
		f := fmt.Sprintf("trust.rules[%d]", i)
		pat, err := compilePattern(r.Repositories)
		if err != nil {
			p.addf(f+".repositories", "%v", err)
		}
		r.pattern = pat
		r.TrustedSigners = nil
		for j, name := range r.Signers {
			s := signers[name]
			if s == nil {
				p.addf(fmt.Sprintf("%s.signers[%d]", f, j), "no signer named %q in trust.signers; add it there or fix the name", name)
				continue
			}
			r.TrustedSigners = append(r.TrustedSigners, s)
		}
		for j, role := range r.Roles {
			if role != "targets" && (!strings.HasPrefix(role, "targets/") || role == "targets/") {
				p.addf(fmt.Sprintf("%s.roles[%d]", f, j), "%q is not a targets role: want targets or targets/<name>", role)
			}
		}
		if r.Mode != Enforce && r.Mode != Audit {
			p.addf(f+".mode", "%q: want %s or %s", r.Mode, Enforce, Audit)
		}
		if r.MaxStaleness < 0 {
			p.addf(f+".max_staleness", "must be positive, e.g. 24h; leave it out for trust.max_staleness")
		}
		c.checkSources(p, f, r)
	}
	if t.Cosign.ReverifyTTL <= 0 {
		p.addf("trust.cosign.reverify_ttl", "must be positive, e.g. 5m")
	}
	switch t.Notation.Level {
	case "", "strict", "permissive":
	case "audit", "skip":
		p.addf("trust.notation.level", "%q does not check that a trusted signer signed; want strict or permissive (a rule's mode: audit serves refused images and logs them)", t.Notation.Level)
	default:
		p.addf("trust.notation.level", "%q: want strict or permissive", t.Notation.Level)
	}
	if r := t.Notation.Revocation; r != "" && r != "off" && r != "on" {
		p.addf("trust.notation.revocation", "%q: want off or on", r)
	}
	for j, h := range t.Notation.RevocationHosts {
		if err := checkHost(h); err != nil {
			p.addf(fmt.Sprintf("trust.notation.revocation_hosts[%d]", j), "%v", err)
		}
	}
	if t.RefreshTTL <= 0 {
		p.addf("trust.refresh_ttl", "must be positive, e.g. 1m")
	}
	if t.RefusalTTL <= 0 {
		p.addf("trust.refusal_ttl", "must be positive, e.g. 10s")
	}
	if t.MaxStaleness <= 0 {
		p.addf("trust.max_staleness", "must be positive, e.g. 24h")
	}
}

// validateScan checks the scan section and every rule's scan policy, and
// reads the token files.
func (c *Config) validateScan(p *problems) {
	sc := &c.Scan
	gated := slices.ContainsFunc(c.Trust.Rules, func(r Rule) bool { return r.Scan != nil })
	if sc.RegistryURL != "" {
		if err := checkURL(sc.RegistryURL); err != nil {
			p.addf("scan.registry_url", "%v", err)
		}
	}
	names := map[string]bool{}
	for i := range sc.Scanners {
		s := &sc.Scanners[i]
		f := fmt.Sprintf("scan.scanners[%d]", i)
		switch {
		case s.Name == "":
			p.addf(f+".name", "required")
		case names[s.Name]:
			p.addf(f+".name", "%q is used by another scanner; names must be unique", s.Name)
		}
		names[s.Name] = true
		if err := checkURL(s.URL); err != nil {
			p.addf(f+".url", "%v", err)
		}
		if s.CAFile != "" {
			if err := checkCAFile(s.CAFile); err != nil {
				p.addf(f+".ca_file", "%v", err)
			}
		}
		if s.AuthorizationFile != "" {
			v, err := readSecret(s.AuthorizationFile)
			if err != nil {
				p.addf(f+".authorization_file", "%v", err)
			}
			s.Authorization = v
		}
	}
	if len(sc.Scanners) > 0 && sc.RegistryURL == "" {
		p.addf("scan.registry_url", "required with scanners: the URL at which the scanners reach trustproxy to pull what they scan")
	}
	sc.ReportToken = ""
	if sc.ReportTokenFile != "" {
		v, err := readSecret(sc.ReportTokenFile)
		switch {
		case err != nil:
			p.addf("scan.report_token_file", "%v", err)
		case len(v) < 16:
			p.addf("scan.report_token_file", "the token is %d characters; use at least 16 random ones", len(v))
		}
		sc.ReportToken = v
	}
	if gated && len(sc.Scanners) == 0 && sc.ReportTokenFile == "" {
		p.addf("scan", "a rule has a scan policy, but no scanner is configured and no report_token_file lets CI post reports: nothing could ever pass")
	}
	if sc.CredentialTTL <= 0 {
		p.addf("scan.credential_ttl", "must be positive, e.g. 15m")
	}
	if sc.Timeout <= 0 {
		p.addf("scan.timeout", "must be positive, e.g. 10m")
	}
	for i, r := range c.Trust.Rules {
		sp := r.Scan
		if sp == nil {
			continue
		}
		// Severity and Missing are typed: a bad word failed the decoding.
		f := fmt.Sprintf("trust.rules[%d].scan", i)
		if sp.MaxReportAge <= 0 {
			p.addf(f+".max_report_age", "must be positive, e.g. 168h")
		}
		if sp.Wait <= 0 {
			p.addf(f+".wait", "must be positive, e.g. 30s")
		}
		if sp.Missing == MissingWait && len(sc.Scanners) == 0 {
			p.addf(f+".missing", "wait needs a scanner in scan.scanners to start scans; use block to wait for reports from CI")
		}
		for j, a := range sp.Allowlist {
			g := fmt.Sprintf("%s.allowlist[%d]", f, j)
			if strings.TrimSpace(a.ID) == "" {
				p.addf(g+".id", "required, e.g. CVE-2024-3094")
			}
			if a.Expires.IsZero() {
				p.addf(g+".expires", "required: a date such as 2027-01-31; an excuse must end")
			}
			if strings.TrimSpace(a.Reason) == "" {
				p.addf(g+".reason", "required: say why the vulnerability is excused")
			}
		}
	}
}

// validateRedis checks the redis section and reads its password file.
func (c *Config) validateRedis(p *problems) {
	r := &c.Redis
	for i, a := range r.Addrs {
		if _, port, err := net.SplitHostPort(a); err != nil {
			p.addf(fmt.Sprintf("redis.addrs[%d]", i), "%v; want host:port, e.g. redis.internal:6379", err)
		} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			p.addf(fmt.Sprintf("redis.addrs[%d]", i), "port %q is not a number from 0 to 65535", port)
		}
	}
	if !r.Enabled() && (r.MasterName != "" || r.Username != "" || r.PasswordFile != "" || r.TLS.CAFile != "") {
		p.addf("redis.addrs", "required when other redis settings are given")
	}
	if r.MasterName == "" && (r.SentinelUsername != "" || r.SentinelPasswordFile != "") {
		p.addf("redis.sentinel_password_file", "only with redis.master_name: it is the Sentinels' password")
	}
	if r.DB < 0 {
		p.addf("redis.db", "must be 0 or more")
	}
	if r.DB > 0 && r.Cluster() {
		p.addf("redis.db", "must be 0 with a Redis Cluster (several redis.addrs without master_name): a Cluster has one database")
	}
	if r.Timeout < 0 {
		p.addf("redis.timeout", "must be positive, e.g. 250ms")
	}
	if r.FloorWait < 0 {
		p.addf("redis.floor_wait", "must be positive, e.g. 250ms")
	}
	if r.FloorReplicas != nil && *r.FloorReplicas < 0 {
		p.addf("redis.floor_replicas", "must be 0 (wait for no replica) or more")
	}
	if r.ReplicaURL != "" {
		if err := checkURL(r.ReplicaURL); err != nil {
			p.addf("redis.replica_url", "%v", err)
		}
		if !r.Enabled() {
			p.addf("redis.replica_url", "needs redis.addrs: the replicas find each other's fills on Redis")
		}
	}
	r.Password = ""
	if r.PasswordFile != "" {
		v, err := readSecret(r.PasswordFile)
		if err != nil {
			p.addf("redis.password_file", "%v", err)
		}
		r.Password = v
	}
	r.SentinelPassword = ""
	if r.SentinelPasswordFile != "" {
		v, err := readSecret(r.SentinelPasswordFile)
		if err != nil {
			p.addf("redis.sentinel_password_file", "%v", err)
		}
		r.SentinelPassword = v
	}
	if r.TLS.CAFile != "" {
		if err := checkCAFile(r.TLS.CAFile); err != nil {
			p.addf("redis.tls.ca_file", "%v", err)
		}
	}
	r.StateKey = ""
	switch {
	case r.StateKeyFile != "":
		v, err := readSecret(r.StateKeyFile)
		switch {
		case err != nil:
			p.addf("redis.state_key_file", "%v", err)
		case len(v) < 32:
			p.addf("redis.state_key_file", "the key is %d characters; use at least 32 random ones", len(v))
		case !r.Enabled():
			p.addf("redis.state_key_file", "needs redis.addrs")
		}
		r.StateKey = v
	case r.Enabled():
		p.addf("redis.state_key_file", "required with redis: a file holding at least 32 random characters, the same on every replica and never stored on Redis (e.g. head -c 32 /dev/urandom | base64 > state-key); it seals what replicas share on Redis")
	}
	r.Peers = nil
	for i, n := range r.PeerNetworks {
		pfx, err := netip.ParsePrefix(n)
		if err != nil {
			p.addf(fmt.Sprintf("redis.peer_networks[%d]", i), "%v; want a network such as 10.0.0.0/8", err)
			continue
		}
		r.Peers = append(r.Peers, pfx.Masked())
	}
	if len(r.PeerNetworks) > 0 && r.ReplicaURL == "" {
		p.addf("redis.peer_networks", "needs redis.replica_url: without it no fill is shared between replicas")
	}
	c.validatePeerTLS(p)
	if strings.ContainsAny(r.KeyPrefix, "{} ") {
		p.addf("redis.key_prefix", "%q: braces and spaces are not allowed (trustproxy adds its own hash tags)", r.KeyPrefix)
	}
}

// validatePeerTLS checks redis.peer_listen and redis.peer_tls.
func (c *Config) validatePeerTLS(p *problems) {
	r := &c.Redis
	t := r.PeerTLS
	if r.PeerListen == "" && !t.Enabled() {
		return
	}
	if r.PeerListen == "" {
		p.addf("redis.peer_listen", "required with redis.peer_tls: the address of the listener the other replicas' fill requests reach over TLS, e.g. :5001")
	} else if _, port, err := net.SplitHostPort(r.PeerListen); err != nil {
		p.addf("redis.peer_listen", "%v; want host:port or :port, e.g. :5001", err)
	} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		p.addf("redis.peer_listen", "port %q is not a number from 0 to 65535", port)
	}
	if r.ReplicaURL == "" {
		p.addf("redis.peer_listen", "needs redis.replica_url: the https:// URL of this listener as the other replicas reach it")
	} else if !strings.HasPrefix(r.ReplicaURL, "https://") {
		p.addf("redis.replica_url", "%q: with redis.peer_tls, peers are reached only over https; name the peer listener (redis.peer_listen) as https://", r.ReplicaURL)
	}
	for _, f := range []struct{ name, path string }{{"ca_file", t.CAFile}, {"cert_file", t.CertFile}, {"key_file", t.KeyFile}} {
		if f.path == "" {
			p.addf("redis.peer_tls."+f.name, "required with redis.peer_listen: peer traffic is mutual TLS under the cluster CA (ca_file), each replica with a certificate it issued (cert_file, key_file)")
		}
	}
	if t.CAFile != "" {
		if err := checkCAFile(t.CAFile); err != nil {
			p.addf("redis.peer_tls.ca_file", "%v", err)
		}
	}
	if t.CertFile != "" && t.KeyFile != "" {
		cert, err := readFile(t.CertFile)
		key, err2 := readFile(t.KeyFile)
		switch {
		case err != nil:
			p.addf("redis.peer_tls.cert_file", "%v", err)
		case err2 != nil:
			p.addf("redis.peer_tls.key_file", "%v", err2)
		default:
			if _, err := tls.X509KeyPair(cert, key); err != nil {
				p.addf("redis.peer_tls", "%v", err)
			}
		}
	}
}

// readSecret reads a token file: its content without surrounding white
// space, which must not be empty.
func readSecret(path string) (string, error) {
	b, err := readFile(path)
	if err != nil {
		return "", err
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	if strings.ContainsAny(v, "\r\n") {
		return "", fmt.Errorf("%s holds more than one line", path)
	}
	return v, nil
}

// checkRealms checks a token_realms list: each entry an origin,
// scheme://host[:port], with no path, query or credentials.
func checkRealms(p *problems, field string, realms []string) {
	for i, r := range realms {
		f := fmt.Sprintf("%s[%d]", field, i)
		u, err := url.Parse(r)
		switch {
		case err != nil:
			p.addf(f, "%q is not a URL", r)
		case u.Scheme != "https" && u.Scheme != "http":
			p.addf(f, "%q: want an origin such as https://auth.docker.io (http:// only if the token service has no TLS)", r)
		case u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
			p.addf(f, "%q: want only scheme://host[:port], e.g. https://auth.docker.io", r)
		default:
			if err := checkHost(strings.ToLower(u.Host)); err != nil {
				p.addf(f, "%v", err)
			}
		}
	}
}

func (c *Config) validateLimits(p *problems) {
	l := c.Limits
	for _, v := range []struct {
		name string
		n    int64
	}{
		{"manifest_bytes", l.ManifestBytes},
		{"root_bytes", l.RootBytes},
		{"timestamp_bytes", l.TimestampBytes},
		{"snapshot_bytes", l.SnapshotBytes},
		{"targets_bytes", l.TargetsBytes},
		{"max_root_rotations", int64(l.MaxRootRotations)},
		{"max_delegations", int64(l.MaxDelegations)},
		{"upstream_timeout", int64(l.UpstreamTimeout)},
		{"blob_idle_timeout", int64(l.BlobIdleTimeout)},
		{"min_transfer_rate", l.MinTransferRate},
		{"client_write_timeout", int64(l.ClientWriteTimeout)},
		{"shutdown_timeout", int64(l.ShutdownTimeout)},
	} {
		if v.n <= 0 {
			p.addf("limits."+v.name, "must be positive; leave it out for the default")
		}
	}
}

func (c *Config) validateRetention(p *problems) {
	r := c.Retention
	if r.MaxAge < 0 {
		p.addf("retention.max_age", "must not be negative; leave it out to remove content only over retention.max_bytes")
	}
	if r.Interval < time.Second {
		p.addf("retention.interval", "%v: want at least 1s, e.g. 1h", r.Interval)
	}
}

// checkHost says why name is not a registry host as it appears in image
// names and GUNs (docker.io, registry.example.com:5000, [::1]:5000), or
// returns nil.
func checkHost(name string) error {
	if name == "" {
		return errors.New("required: the registry host as in image names, e.g. docker.io")
	}
	if strings.Contains(name, "/") {
		return fmt.Errorf("%q is not a host: write it without scheme or path, e.g. docker.io", name)
	}
	host := name
	if h, port, err := net.SplitHostPort(name); err == nil {
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return fmt.Errorf("%q: port %q is not a number from 0 to 65535", name, port)
		}
		host = h
		if strings.Contains(h, ":") {
			host = "[" + h + "]"
		}
	}
	if ip, ok := strings.CutPrefix(host, "["); ok {
		if ip, ok := strings.CutSuffix(ip, "]"); ok && net.ParseIP(ip) != nil {
			// One spelling per address: two would be two upstreams of one
			// storage name (gun.Name.StorageName writes the address's bytes).
			if want := net.ParseIP(ip).String(); want != ip {
				if strings.Contains(want, ":") {
					want = "[" + want + "]"
				}
				return fmt.Errorf("%q: write the IPv6 address as %s", name, want)
			}
			return nil
		}
		return fmt.Errorf("%q: not an IPv6 address in brackets", name)
	}
	for label := range strings.SplitSeq(host, ".") {
		if label == "" || label[0] == '-' || label[len(label)-1] == '-' ||
			strings.Trim(label, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
			return fmt.Errorf("%q is not a host name: want lower-case letters, digits, dots and dashes, e.g. docker.io", name)
		}
	}
	return nil
}

// checkGUN says why gun is not a GUN (host/repository, e.g.
// docker.io/library/alpine), or returns nil.
func checkGUN(gun string) error {
	host, repo, _ := strings.Cut(gun, "/")
	if err := checkHost(host); err != nil {
		return fmt.Errorf("GUN %q: %w", gun, err)
	}
	for seg := range strings.SplitSeq(repo, "/") {
		if seg == "" || strings.Trim(seg, "abcdefghijklmnopqrstuvwxyz0123456789._-") != "" {
			return fmt.Errorf("GUN %q: want host/repository in lower case, e.g. docker.io/library/alpine", gun)
		}
	}
	return nil
}

// checkURL says why raw is not an http or https URL with a host, or returns
// nil. Its errors never show credentials.
func checkURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		if ue, ok := errors.AsType[*url.Error](err); ok {
			err = ue.Err
		}
		return fmt.Errorf("not a URL: %v", err)
	}
	switch {
	case u.User != nil:
		return errors.New("credentials in the URL: put them in username and password instead")
	case u.Scheme != "https" && u.Scheme != "http":
		return fmt.Errorf("%q: want an https:// or http:// URL", raw)
	case u.Host == "":
		return fmt.Errorf("%q has no host: want e.g. https://registry.example.com", raw)
	case u.RawQuery != "" || u.Fragment != "":
		return errors.New("remove the query or fragment: they may hold tokens, which belong in username and password")
	}
	return nil
}

// isKeyID reports whether id is a TUF key ID: 64 lower-case hex characters.
func isKeyID(id string) bool {
	return len(id) == 64 && strings.Trim(id, "0123456789abcdef") == ""
}

// maxFileBytes bounds the PEM files a configuration names.
const maxFileBytes = 1 << 20

// readFile reads the regular file at path, up to maxFileBytes.
func readFile(path string) ([]byte, error) {
	if path == "" {
		return nil, errors.New("no file named; give the path of a PEM file")
	}
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("file %s does not exist; create it or fix the path", path)
	}
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxFileBytes {
		return nil, fmt.Errorf("%s is larger than %d bytes; want a PEM file", path, maxFileBytes)
	}
	return b, nil
}

// checkCAFile checks that the file at path holds at least one PEM
// certificate and that every certificate in it parses.
func checkCAFile(path string) error {
	b, err := readFile(path)
	if err != nil {
		return err
	}
	n := 0
	for block, rest := pem.Decode(b); block != nil; block, rest = pem.Decode(rest) {
		if block.Type != "CERTIFICATE" {
			continue
		}
		n++
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return fmt.Errorf("%s: certificate %d: %w", path, n, err)
		}
	}
	if n == 0 {
		return fmt.Errorf("%s holds no PEM CERTIFICATE block; want CA certificates in PEM", path)
	}
	return nil
}

// readPublicKeys returns the PKIX DER public key of every PEM block of the
// file at path, each a PUBLIC KEY or a CERTIFICATE. Any other block, or none,
// is an error.
func readPublicKeys(path string) ([][]byte, error) {
	b, err := readFile(path)
	if err != nil {
		return nil, err
	}
	return parsePublicKeys(path, b)
}

// parsePublicKeys is readPublicKeys on b, the content of the file name.
func parsePublicKeys(name string, b []byte) ([][]byte, error) {
	var keys [][]byte
	for n := 1; ; n++ {
		var block *pem.Block
		if block, b = pem.Decode(b); block == nil {
			break
		}
		var pub any
		var err error
		switch block.Type {
		case "PUBLIC KEY":
			pub, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				pub = cert.PublicKey
			}
		default:
			return nil, fmt.Errorf("%s holds a %s (PEM block %d); want the signer's PUBLIC KEY or CERTIFICATE", name, block.Type, n)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: PEM block %d: parse %s: %w", name, n, block.Type, err)
		}
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return nil, fmt.Errorf("%s: PEM block %d: %s: %w", name, n, block.Type, err)
		}
		keys = append(keys, der)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s holds no PEM block; want a PUBLIC KEY or CERTIFICATE", name)
	}
	return keys, nil
}

// validateListen checks addr, an optional listener address of field.
func validateListen(p *problems, field, addr, example string) {
	if addr == "" {
		return
	}
	if _, port, err := net.SplitHostPort(addr); err != nil {
		p.addf(field, "%v; want host:port, e.g. %s", err, example)
	} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		p.addf(field, "port %q is not a number from 0 to 65535", port)
	}
}

// checkSources checks r's sources and require, and that a rule listing
// cosign has signers with cosign keys and a way to check transparency-log
// entries (trust.cosign.trusted_root or allow_no_tlog): a bad rule fails
// the load, not a request. internal/proxy compiles each cosign rule's
// verifier from these, per *Rule, when the configuration is taken. f is
// r's field path.
func (c *Config) checkSources(p *problems, f string, r *Rule) {
	seen := map[Source]bool{}
	for j, s := range r.Sources {
		if seen[s] {
			p.addf(fmt.Sprintf("%s.sources[%d]", f, j), "%q is listed twice", s)
		}
		seen[s] = true
	}
	if r.Require != RequireAny && r.Require != RequireAll {
		p.addf(f+".require", "%q: want %s or %s", r.Require, RequireAny, RequireAll)
	}
	for j, name := range r.Signers {
		if s := c.signer(name); s != nil && !slices.ContainsFunc(r.Sources, s.Signs) {
			p.addf(fmt.Sprintf("%s.signers[%d]", f, j), "signer %q has no key for any source of this rule %v: notary needs public_key or key_ids, cosign cosign_key or cosign_identity, notation notation_ca", name, r.Sources)
		}
	}
	c.checkNotation(p, f, r)
	if !r.Has(SourceCosign) {
		if r.AllowNoTlog {
			p.addf(f+".allow_no_tlog", "set on a rule whose sources do not list cosign")
		}
		return
	}
	keys, identities := 0, 0
	for _, name := range r.Signers {
		s := c.signer(name)
		if s == nil {
			continue // reported above
		}
		if s.CosignIdentity != nil {
			identities++
		}
		if s.CosignKey != "" {
			keys++
		}
	}
	switch {
	case keys == 0 && identities == 0:
		p.addf(f+".signers", "a rule listing cosign needs signers with a cosign_key or a cosign_identity (trust.signers[].cosign_key, .cosign_identity)")
	case identities > 0 && c.Trust.Cosign.Root == nil:
		p.addf(f+".signers", "a signer of this rule has a cosign_identity (keyless), and trust.cosign.trusted_root is not set: keyless signatures are checked against its certificate authorities and logs")
	case !r.AllowNoTlog && c.Trust.Cosign.Root == nil:
		p.addf(f+".allow_no_tlog", "cosign signatures must have a transparency-log entry, and trust.cosign.trusted_root is not set: give the trusted root, or set allow_no_tlog: true for signatures made with --tlog-upload=false")
	}
}

// checkCosignIdentity checks that id names exactly one of issuer and
// issuer_regexp and one of subject and subject_regexp, and that its
// regular expressions compile. internal/cosign anchors them.
func checkCosignIdentity(p *problems, f string, id *CosignIdentity) {
	pair := func(exact, expr, name string) {
		switch {
		case exact == "" && expr == "":
			p.addf(f, "set %s or %s_regexp", name, name)
		case exact != "" && expr != "":
			p.addf(f, "set %s or %s_regexp, not both", name, name)
		case expr != "":
			if _, err := regexp.Compile(expr); err != nil {
				p.addf(f+"."+name+"_regexp", "%v", err)
			}
		}
	}
	pair(id.Issuer, id.IssuerRegexp, "issuer")
	pair(id.Subject, id.SubjectRegexp, "subject")
}

// checkNotation checks that a rule listing notation has signers with
// notation_ca. (Each signer's having a key for some source of the rule is
// checked by checkSources.)
func (c *Config) checkNotation(p *problems, f string, r *Rule) {
	if !r.Has(SourceNotation) {
		return
	}
	cas := 0
	for _, name := range r.Signers {
		if s := c.signer(name); s != nil && s.NotationCA != "" {
			cas++
		}
	}
	if cas == 0 {
		p.addf(f+".signers", "a rule listing notation needs signers with a notation_ca (trust.signers[].notation_ca)")
	}
}

// checkNotationSigner reads s's notation_ca (PEM CERTIFICATE blocks, each
// a CA or self-signed certificate) and checks its notation_identities: "*"
// alone, or x509.subject:<DN> each. notation-go checks the DNs again when
// internal/proxy compiles the signer.
func checkNotationSigner(p *problems, f string, s *Signer) {
	s.NotationPEM = nil
	if s.NotationCA == "" {
		if len(s.NotationIdentities) > 0 {
			p.addf(f+".notation_identities", "set without notation_ca")
		}
		return
	}
	b, err := readFile(s.NotationCA)
	if err != nil {
		p.addf(f+".notation_ca", "%v", err)
		return
	}
	n := 0
	for rest := b; ; n++ {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if block.Type != "CERTIFICATE" || err != nil {
			p.addf(f+".notation_ca", "PEM block %d is not a certificate", n+1)
			return
		}
		if !c.IsCA && c.CheckSignatureFrom(c) != nil {
			p.addf(f+".notation_ca", "certificate %q is neither a CA nor self-signed", c.Subject)
			return
		}
	}
	if n == 0 {
		p.addf(f+".notation_ca", "no PEM certificate in %s", s.NotationCA)
		return
	}
	switch ids := s.NotationIdentities; {
	case len(ids) == 0:
		p.addf(f+".notation_identities", `required with notation_ca: list "x509.subject:C=..., ST=..., O=..., CN=..." subjects, or "*" for any the CAs issued`)
		return
	case slices.Contains(ids, "*") && len(ids) > 1:
		p.addf(f+".notation_identities", `"*" must be the only identity`)
		return
	default:
		for j, id := range ids {
			if v, ok := strings.CutPrefix(id, "x509.subject:"); id != "*" && (!ok || strings.TrimSpace(v) == "") {
				p.addf(fmt.Sprintf("%s.notation_identities[%d]", f, j), `%q: want x509.subject:<DN> or "*"`, id)
				return
			}
		}
	}
	s.NotationPEM = b
}

// checkCosignKey checks that b is a PEM public key cosign verifies with:
// ECDSA P-256, Ed25519, or RSA of 2048 bits or more.
func checkCosignKey(b []byte) error {
	block, _ := pem.Decode(b)
	if block == nil {
		return errors.New("not a PEM public key (cosign.pub, as cosign generate-key-pair writes it)")
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return fmt.Errorf("not a PEM public key: %w", err)
	}
	switch k := k.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return errors.New("ECDSA keys must be P-256")
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("RSA keys must have at least 2048 bits, not %d", k.N.BitLen())
		}
	default:
		return fmt.Errorf("key type %T is not supported (ECDSA P-256, Ed25519, RSA)", k)
	}
	return nil
}

// signer is the entry of trust.signers named name, or nil.
func (c *Config) signer(name string) *Signer {
	for i := range c.Trust.Signers {
		if c.Trust.Signers[i].Name == name {
			return &c.Trust.Signers[i]
		}
	}
	return nil
}
