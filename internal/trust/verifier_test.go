package trust

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/opencontainers/go-digest"
	"github.com/theupdateframework/notary/tuf/data"
	"github.com/theupdateframework/notary/tuf/testutils"
	"github.com/theupdateframework/notary/tuf/utils"
	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/gun"
	"github.com/trustproxy/trustproxy/internal/testenv"
	"gopkg.in/yaml.v3"
)

type opts struct {
	rule    config.Rule
	signers []config.Signer
	pinning config.Pinning
	dataDir string
	ttl     time.Duration
	limits  config.Limits
	noURL   bool
	notary  config.Endpoint // credentials
}

// testVerifier is a Verifier with the configuration it was made from.
type testVerifier struct {
	v   *Verifier
	cfg *config.Config
}

// snapshot is Verifier.View with the rule found as the proxy finds it.
func (tv *testVerifier) snapshot(ctx context.Context, name string) (*View, error) {
	host, path, _ := strings.Cut(name, "/")
	n, err := gun.New(host, path)
	if err != nil {
		return nil, err
	}
	return tv.v.View(ctx, n, tv.cfg.Trust.RuleFor(name))
}

// newVerifier makes a Verifier for f's Notary server from the configuration
// o describes, written as YAML and read by config.Load as trustproxy reads
// its own. Signer public keys are file names (keyFile).
func newVerifier(t *testing.T, f *fixture, o opts) (*testVerifier, *testenv.LogBuffer) {
	t.Helper()
	if o.rule.Repositories == "" {
		o.rule.Repositories = "example.com/**"
	}
	if o.dataDir == "" {
		o.dataDir = t.TempDir()
	}
	if o.ttl == 0 {
		o.ttl = time.Minute
	}
	notary := map[string]any{}
	if !o.noURL {
		notary["url"] = f.srv.URL
		if o.notary.Username != "" {
			notary["username"], notary["password"] = o.notary.Username, o.notary.Password
		}
	}
	rule := map[string]any{"repositories": o.rule.Repositories, "tofu": o.rule.TOFU}
	if len(o.rule.Signers) > 0 {
		rule["signers"] = o.rule.Signers
	}
	if len(o.rule.Roles) > 0 {
		rule["roles"] = o.rule.Roles
	}
	if o.rule.Mode != "" {
		rule["mode"] = string(o.rule.Mode)
	}
	if o.rule.MaxStaleness != 0 {
		rule["max_staleness"] = o.rule.MaxStaleness.String()
	}
	var signers []map[string]any
	for _, s := range o.signers {
		m := map[string]any{"name": s.Name}
		if s.PublicKey != "" {
			m["public_key"] = s.PublicKey
		}
		if len(s.KeyIDs) > 0 {
			m["key_ids"] = s.KeyIDs
		}
		signers = append(signers, m)
	}
	limits := map[string]any{}
	if o.limits.UpstreamTimeout != 0 {
		limits["upstream_timeout"] = o.limits.UpstreamTimeout.String()
	}
	doc, err := yaml.Marshal(map[string]any{
		"data_dir":  o.dataDir,
		"upstreams": []any{map[string]any{"name": "example.com", "url": "https://example.com", "notary": notary}},
		"trust": map[string]any{
			"rules":       []any{rule},
			"signers":     signers,
			"pinning":     map[string]any{"certs": o.pinning.Certs, "ca": o.pinning.CA},
			"refresh_ttl": o.ttl.String(),
		},
		"limits": limits,
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(bytes.NewReader(doc), nil)
	if err != nil {
		t.Fatalf("config:\n%s\n%v", doc, err)
	}
	logs := &testenv.LogBuffer{}
	v, err := New(cfg, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), nil)
	if err != nil {
		t.Fatal(err)
	}
	return &testVerifier{v: v, cfg: cfg}, logs
}

// keyFile writes b to a new file and returns its name.
func keyFile(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func tofu() opts { return opts{rule: config.Rule{TOFU: true}} }

func reason(t *testing.T, err error) Reason {
	t.Helper()
	var r *RefusalError
	if !errors.As(err, &r) {
		t.Fatalf("error %v (%T) is not a *RefusalError", err, err)
	}
	return r.Reason
}

func wantReason(t *testing.T, err error, want Reason) *RefusalError {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want refusal %s", want)
	}
	if got := reason(t, err); got != want {
		t.Fatalf("refused %s, want %s: %v", got, want, err)
	}
	r := err.(*RefusalError)
	if r.Ref != "" || r.GUN != testGUN || r.Detail == "" {
		t.Errorf("refusal %+v: want GUN %s, no Ref and a detail", r, testGUN)
	}
	return r
}

func targetDigest(m data.FileMeta) digest.Digest {
	return digest.Digest("sha256:" + hex.EncodeToString(m.Hashes["sha256"]))
}

func TestSignedTagResolves(t *testing.T) {
	f := newFixture(t)
	meta := f.tag("targets", "v1", []byte("manifest v1"))
	f.publish()
	v, _ := newVerifier(t, f, tofu())

	snap, err := v.snapshot(t.Context(), testGUN)
	if err != nil {
		t.Fatal(err)
	}
	got, err := snap.Resolve("v1")
	if err != nil {
		t.Fatal(err)
	}
	targetsKey := f.repo.Root.Signed.Roles[data.CanonicalTargetsRole].KeyIDs[0]
	want := Target{Tag: "v1", Digest: targetDigest(meta), Size: meta.Length, Role: "targets", Signers: []string{targetsKey}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Resolve(v1) (-want +got):\n%s", diff)
	}
	if snap.Checked.IsZero() || !snap.Expires.After(time.Now()) {
		t.Errorf("snapshot checked %v expires %v", snap.Checked, snap.Expires)
	}
	if ts := f.repo.Timestamp.Signed.Expires; snap.Expires.After(ts) {
		t.Errorf("Expires %v is after the timestamp's expiry %v", snap.Expires, ts)
	}
	if _, err := snap.Resolve("v2"); reason(t, err) != NotSigned {
		t.Errorf("Resolve(v2): %v, want not_signed", err)
	}
	if got := snap.ByDigest(want.Digest); len(got) != 1 || got[0].Tag != "v1" {
		t.Errorf("ByDigest = %v", got)
	}
}

func pubPEM(t *testing.T, c *x509.Certificate) []byte {
	der, err := x509.MarshalPKIXPublicKey(c.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func TestTrustedSigner(t *testing.T) {
	f := newFixture(t)
	alice := f.delegate("targets/releases")
	meta := f.tag("targets/releases", "v1", []byte("manifest v1"))
	f.publish()
	certKey := data.NewECDSAx509PublicKey(pemCert(alice))
	bareID, err := canonicalID(certKey)
	if err != nil {
		t.Fatal(err)
	}
	other := newFixture(t).delegate("targets/releases")

	tests := []struct {
		name   string
		signer config.Signer
	}{
		{"certificate PEM", config.Signer{Name: "alice", PublicKey: keyFile(t, pemCert(alice))}},
		{"public key PEM", config.Signer{Name: "alice", PublicKey: keyFile(t, pubPEM(t, alice))}},
		{"another key, then the certificate", config.Signer{Name: "alice", PublicKey: keyFile(t, append(pubPEM(t, other), pemCert(alice)...))}},
		{"key ID over the certificate", config.Signer{Name: "alice", KeyIDs: []string{certKey.ID()}}},
		{"key ID over the public key", config.Signer{Name: "alice", KeyIDs: []string{bareID}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, _ := newVerifier(t, f, opts{rule: config.Rule{TOFU: true, Signers: []string{"alice"}}, signers: []config.Signer{tt.signer}})
			snap, err := v.snapshot(t.Context(), testGUN)
			if err != nil {
				t.Fatal(err)
			}
			got, err := snap.Resolve("v1")
			if err != nil {
				t.Fatal(err)
			}
			want := Target{Tag: "v1", Digest: targetDigest(meta), Size: meta.Length, Role: "targets/releases", Signers: []string{"alice"}}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestUntrustedSigner(t *testing.T) {
	f := newFixture(t)
	f.delegate("targets/releases") // bob's key
	f.tag("targets/releases", "v1", []byte("manifest v1"))
	f.publish()
	other := newFixture(t)
	alice := other.delegate("targets/releases")
	v, _ := newVerifier(t, f, opts{rule: config.Rule{TOFU: true, Signers: []string{"alice"}},
		signers: []config.Signer{{Name: "alice", PublicKey: keyFile(t, pemCert(alice))}}})

	snap, err := v.snapshot(t.Context(), testGUN)
	if err != nil {
		t.Fatal(err)
	}
	_, err = snap.Resolve("v1")
	if reason(t, err) != UntrustedSigner {
		t.Fatalf("Resolve(v1): %v, want untrusted_signer", err)
	}
	bobID := f.repo.Targets["targets"].Signed.Delegations.Roles[0].KeyIDs[0]
	if msg := err.Error(); !strings.Contains(msg, bobID) || !strings.Contains(msg, "alice") {
		t.Errorf("refusal %q should name the signing key %s and the wanted signer alice", msg, bobID)
	}
}

func TestOnlyDockerRolesCount(t *testing.T) {
	f := newFixture(t)
	f.delegate("targets/evil")
	f.tag("targets/evil", "v1", []byte("evil"))
	f.publish()
	v, _ := newVerifier(t, f, tofu())
	snap, err := v.snapshot(t.Context(), testGUN)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := snap.Resolve("v1"); reason(t, err) != NotSigned {
		t.Errorf("tag only in targets/evil: %v, want not_signed", err)
	}
}

func TestReleasesWinsOverTargets(t *testing.T) {
	f := newFixture(t)
	f.delegate("targets/releases")
	rel := f.tag("targets/releases", "v1", []byte("from releases"))
	tgt := f.tag("targets", "v1", []byte("from targets"))
	f.publish()
	v, _ := newVerifier(t, f, tofu())
	snap, err := v.snapshot(t.Context(), testGUN)
	if err != nil {
		t.Fatal(err)
	}
	got, err := snap.Resolve("v1")
	if err != nil || got.Digest != targetDigest(rel) || got.Role != "targets/releases" {
		t.Fatalf("Resolve(v1) = %+v, %v; want releases' %s", got, err, targetDigest(rel))
	}

	// notary skips an expired targets/releases and would resolve the tag
	// through targets; trustproxy refuses the repository instead (doc.go).
	s := f.swizzle()
	must(t, s.ExpireMetadata("targets/releases"))
	must(t, s.UpdateSnapshotHashes("targets/releases"))
	must(t, s.UpdateTimestampHash())
	v2, _ := newVerifier(t, f, tofu())
	snap, err = v2.snapshot(t.Context(), testGUN)
	r := wantReason(t, err, Expired)
	if !strings.Contains(r.Detail, "targets/releases expired") || snap != nil {
		t.Fatalf("with expired releases: %v, snapshot %v; want a refusal naming targets/releases (targets holds %s)", r, snap, targetDigest(tgt))
	}
}

func TestInvalidTargetMeta(t *testing.T) {
	f := newFixture(t)
	f.tag("targets", "v1", []byte("ok"))
	if _, err := f.repo.AddTargets("targets", data.Files{"nohash": {Length: 3, Hashes: data.Hashes{"sha512": make([]byte, 64)}}}); err != nil {
		t.Fatal(err)
	}
	f.publish()
	v, _ := newVerifier(t, f, tofu())
	snap, err := v.snapshot(t.Context(), testGUN)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := snap.Resolve("nohash"); reason(t, err) != InvalidMetadata {
		t.Errorf("target without sha256: %v, want invalid_metadata", err)
	}
	if _, err := snap.Resolve("v1"); err != nil {
		t.Errorf("v1: %v", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestRefusals(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(t *testing.T, f *fixture)
		opts   func(f *fixture) opts
		want   Reason
	}{
		{name: "expired timestamp", want: Expired, mutate: func(t *testing.T, f *fixture) {
			must(t, f.swizzle().ExpireMetadata(data.CanonicalTimestampRole))
		}},
		{name: "invalid targets signature", want: InvalidMetadata, mutate: func(t *testing.T, f *fixture) {
			s := f.swizzle()
			must(t, s.InvalidateMetadataSignatures(data.CanonicalTargetsRole))
			must(t, s.UpdateSnapshotHashes(data.CanonicalTargetsRole))
			must(t, s.UpdateTimestampHash())
		}},
		{name: "targets threshold not met", want: InvalidMetadata, mutate: func(t *testing.T, f *fixture) {
			s := f.swizzle()
			must(t, s.SetThreshold(data.CanonicalTargetsRole, 2))
			must(t, s.UpdateSnapshotHashes())
			must(t, s.UpdateTimestampHash())
		}},
		{name: "targets changed without snapshot", want: InvalidMetadata, mutate: func(t *testing.T, f *fixture) {
			s := f.swizzle()
			must(t, s.OffsetMetadataVersion(data.CanonicalTargetsRole, 1))
			// A malicious server answers the checksummed name with other bytes.
			f.srv.SetOverride(func(w http.ResponseWriter, r *http.Request, role string) bool {
				if role != "targets" {
					return false
				}
				b, err := s.MetadataCache.GetSized("targets", 1<<30)
				must(t, err)
				w.Write(b)
				return true
			})
		}},
		{name: "root not pinned and TOFU off", want: NotPinned, opts: func(*fixture) opts { return opts{} }},
		{name: "pinned to another certificate", want: NotPinned, opts: func(*fixture) opts {
			return opts{pinning: config.Pinning{Certs: map[string][]string{testGUN: {strings.Repeat("ab", 32)}}}}
		}},
		{name: "no trust data", want: NoTrustData, mutate: func(t *testing.T, f *fixture) {
			f.srv.ServeFrom(f.swizzle().MetadataCache)
			must(t, f.srv.Store().RemoveAll())
		}},
		{name: "no timestamp", want: NoTrustData, mutate: func(t *testing.T, f *fixture) {
			must(t, f.swizzle().RemoveMetadata(data.CanonicalTimestampRole))
		}},
		{name: "no notary url", want: NoTrustServer, opts: func(*fixture) opts { return opts{noURL: true, rule: config.Rule{TOFU: true}} }},
		{name: "no rule", want: NoRule, opts: func(*fixture) opts { return opts{rule: config.Rule{Repositories: "other.io/**", TOFU: true}} }},
		{name: "server down, nothing cached", want: TrustUnavailable, mutate: func(t *testing.T, f *fixture) { f.srv.Close() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.tag("targets", "v1", []byte("v1"))
			f.publish()
			if tt.mutate != nil {
				tt.mutate(t, f)
			}
			o := tofu()
			if tt.opts != nil {
				o = tt.opts(f)
			}
			v, _ := newVerifier(t, f, o)
			_, err := v.snapshot(t.Context(), testGUN)
			r := wantReason(t, err, tt.want)
			if tt.want == NoTrustServer && !strings.Contains(r.Error(), "upstreams[0].notary.url") {
				t.Errorf("message %q should say to set upstreams[0].notary.url", r.Error())
			}
		})
	}
}

func TestPinnedByCertID(t *testing.T) {
	f := newFixture(t)
	f.tag("targets", "v1", []byte("v1"))
	f.publish()
	v, _ := newVerifier(t, f, opts{pinning: config.Pinning{Certs: map[string][]string{testGUN: {f.rootID()}}}})
	snap, err := v.snapshot(t.Context(), testGUN)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := snap.Resolve("v1"); err != nil {
		t.Fatal(err)
	}
}

func TestRollback(t *testing.T) {
	f := newFixture(t)
	f.tag("targets", "v1", []byte("v1"))
	f.publish()
	old := f.srv.Store()
	s := f.swizzle()
	must(t, s.OffsetMetadataVersion(data.CanonicalTimestampRole, 1)) // the server moves to timestamp v2
	dir := t.TempDir()
	v, _ := newVerifier(t, f, opts{rule: config.Rule{TOFU: true}, dataDir: dir, ttl: time.Nanosecond})
	if _, err := v.snapshot(t.Context(), testGUN); err != nil {
		t.Fatal(err)
	}

	f.srv.ServeFrom(old) // then offers the older, still valid timestamp v1
	_, err := v.snapshot(t.Context(), testGUN)
	wantReason(t, err, Rollback)

	// A restart (a new Verifier on the same data_dir) keeps the floor.
	v2, _ := newVerifier(t, f, opts{rule: config.Rule{TOFU: true}, dataDir: dir})
	_, err = v2.snapshot(t.Context(), testGUN)
	wantReason(t, err, Rollback)
}

func TestUnreachableServesCache(t *testing.T) {
	f := newFixture(t)
	meta := f.tag("targets", "v1", []byte("v1"))
	f.publish()
	v, logs := newVerifier(t, f, opts{rule: config.Rule{TOFU: true}, ttl: time.Nanosecond})
	if _, err := v.snapshot(t.Context(), testGUN); err != nil {
		t.Fatal(err)
	}
	f.srv.Close()
	snap, err := v.snapshot(t.Context(), testGUN)
	if err != nil {
		t.Fatalf("with the server down and a valid cache: %v", err)
	}
	if got, err := snap.Resolve("v1"); err != nil || got.Digest != targetDigest(meta) {
		t.Fatalf("Resolve(v1) = %+v, %v", got, err)
	}
	if !strings.Contains(logs.String(), "notary unreachable, using cached metadata") {
		t.Errorf("no warning about using cached metadata in logs:\n%s", logs)
	}
}

func TestCacheHit(t *testing.T) {
	f := newFixture(t)
	f.tag("targets", "v1", []byte("v1"))
	f.publish()
	v, logs := newVerifier(t, f, tofu())
	for range 3 {
		if _, err := v.snapshot(t.Context(), testGUN); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.srv.Count("timestamp"); n != 1 {
		t.Errorf("%d timestamp fetches for 3 calls within the TTL, want 1", n)
	}
	if !strings.Contains(logs.String(), "trust cache hit") {
		t.Errorf("no debug line for cache hits")
	}
}

func TestConcurrentSnapshotsShareOneRefresh(t *testing.T) {
	f := newFixture(t)
	f.tag("targets", "v1", []byte("v1"))
	f.publish()
	f.srv.SetOverride(func(w http.ResponseWriter, r *http.Request, role string) bool {
		if role == "timestamp" {
			time.Sleep(100 * time.Millisecond) // let every caller arrive while the refresh runs
		}
		return false
	})
	v, _ := newVerifier(t, f, tofu())
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for range 50 {
		wg.Go(func() {
			_, err := v.snapshot(t.Context(), testGUN)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := f.srv.Count("timestamp"); n != 1 {
		t.Errorf("%d timestamp fetches for 50 concurrent calls, want 1", n)
	}
}

func TestEndlessTimestamp(t *testing.T) {
	tests := []struct {
		name  string
		serve func(w http.ResponseWriter, r *http.Request)
	}{
		{"endless chunked body", func(w http.ResponseWriter, r *http.Request) {
			chunk := bytes.Repeat([]byte("x"), 4096)
			for r.Context().Err() == nil {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}},
		{"huge content-length", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "1073741824")
			w.Write(bytes.Repeat([]byte("x"), 4096))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.tag("targets", "v1", []byte("v1"))
			f.publish()
			f.srv.SetOverride(func(w http.ResponseWriter, r *http.Request, role string) bool {
				if role != "timestamp" {
					return false
				}
				tt.serve(w, r)
				return true
			})
			v, _ := newVerifier(t, f, tofu())
			start := time.Now()
			_, err := v.snapshot(t.Context(), testGUN)
			r := wantReason(t, err, InvalidMetadata)
			if !errors.As(err, new(*LimitError)) {
				t.Errorf("refusal %v does not carry a *LimitError", r)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}

func TestSlowServerTimesOut(t *testing.T) {
	f := newFixture(t)
	f.tag("targets", "v1", []byte("v1"))
	f.publish()
	f.srv.SetOverride(func(w http.ResponseWriter, r *http.Request, role string) bool {
		if role != "timestamp" {
			return false
		}
		select {
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
		}
		return true
	})
	v, _ := newVerifier(t, f, opts{rule: config.Rule{TOFU: true}, limits: config.Limits{UpstreamTimeout: 300 * time.Millisecond}})
	start := time.Now()
	_, err := v.snapshot(t.Context(), testGUN)
	wantReason(t, err, TrustUnavailable)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %v with a 300ms upstream timeout", d)
	}
}

func TestRootRotationsCapped(t *testing.T) {
	f := newFixture(t)
	f.tag("targets", "v1", []byte("v1"))
	f.publish()
	v, _ := newVerifier(t, f, opts{rule: config.Rule{TOFU: true}, ttl: time.Nanosecond})
	if _, err := v.snapshot(t.Context(), testGUN); err != nil {
		t.Fatal(err)
	}

	// The server now claims root v1000 under a new key, and answers every
	// intermediate N.root with a valid root of version N signed by the old key.
	rootV1 := f.meta[data.CanonicalRootRole]
	s := f.swizzle()
	must(t, s.OffsetMetadataVersion(data.CanonicalRootRole, 999))
	must(t, s.ChangeRootKey())
	must(t, s.UpdateSnapshotHashes(data.CanonicalRootRole))
	must(t, s.UpdateTimestampHash())
	var mu sync.Mutex
	versioned := 0
	f.srv.SetOverride(func(w http.ResponseWriter, r *http.Request, role string) bool {
		var n int
		if _, err := fmtSscanRoot(role, &n); err != nil || n >= 1000 {
			return false
		}
		mu.Lock()
		versioned++
		mu.Unlock()
		sw := testutils.NewMetadataSwizzler(f.gun, map[data.RoleName][]byte{data.CanonicalRootRole: rootV1}, f.cs)
		must(t, sw.OffsetMetadataVersion(data.CanonicalRootRole, n-1))
		b, err := sw.MetadataCache.GetSized(data.CanonicalRootRole.String(), 1<<30)
		must(t, err)
		w.Write(b)
		return true
	})
	_, err := v.snapshot(t.Context(), testGUN)
	wantReason(t, err, InvalidMetadata)
	var le *LimitError
	if !errors.As(err, &le) || le.Field != "limits.max_root_rotations" {
		t.Errorf("refusal %v, want a *LimitError on limits.max_root_rotations", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if versioned == 0 || versioned > 32 {
		t.Errorf("%d versioned roots fetched, want 1..32", versioned)
	}
}

func TestCorruptCacheFailsClosed(t *testing.T) {
	f := newFixture(t)
	f.tag("targets", "v1", []byte("v1"))
	f.publish()
	dir := t.TempDir()
	v, _ := newVerifier(t, f, opts{rule: config.Rule{TOFU: true}, dataDir: dir})
	if _, err := v.snapshot(t.Context(), testGUN); err != nil {
		t.Fatal(err)
	}
	must(t, writeFile(cacheFile(t, dir, "timestamp"), []byte("{garbage")))
	v2, logs := newVerifier(t, f, opts{rule: config.Rule{TOFU: true}, dataDir: dir})
	_, err := v2.snapshot(context.Background(), testGUN)
	wantReason(t, err, InvalidMetadata)
	if !strings.Contains(logs.String(), "corrupt trust metadata") {
		t.Errorf("corrupt cache entry was not logged:\n%s", logs)
	}
}

func TestBasicAuth(t *testing.T) {
	f := newFixture(t)
	f.tag("targets", "v1", []byte("v1"))
	f.publish()
	f.srv.SetBasicAuth("reader", "s3cret")

	v, _ := newVerifier(t, f, opts{rule: config.Rule{TOFU: true}, notary: config.Endpoint{Username: "reader", Password: "s3cret"}})
	if _, err := v.snapshot(t.Context(), testGUN); err != nil {
		t.Fatalf("with credentials: %v", err)
	}
	v, _ = newVerifier(t, f, tofu())
	_, err := v.snapshot(t.Context(), testGUN)
	wantReason(t, err, TrustUnavailable)
}

// TestPinningChangeRechecksCachedRoot: notary trusts a cached root without
// asking the pinning again; a change of the operator's pinning must apply.
func TestPinningChangeRechecksCachedRoot(t *testing.T) {
	f := newFixture(t)
	f.tag("targets", "v1", []byte("v1"))
	f.publish()
	dir := t.TempDir()
	v, _ := newVerifier(t, f, opts{rule: config.Rule{TOFU: true}, dataDir: dir})
	if _, err := v.snapshot(t.Context(), testGUN); err != nil {
		t.Fatal(err)
	}

	// Restarted with TOFU off and a pin that names another root: refused,
	// though a root is cached.
	wrong := config.Pinning{Certs: map[string][]string{testGUN: {strings.Repeat("ab", 32)}}}
	v2, logs := newVerifier(t, f, opts{dataDir: dir, pinning: wrong})
	_, err := v2.snapshot(t.Context(), testGUN)
	wantReason(t, err, NotPinned)
	if !strings.Contains(logs.String(), "trust pinning changed") {
		t.Errorf("no warning about the pinning change:\n%s", logs.String())
	}

	// Pinned to the real root: served again, and the other roles kept their floors.
	v3, _ := newVerifier(t, f, opts{dataDir: dir, pinning: config.Pinning{Certs: map[string][]string{testGUN: {f.rootID()}}}})
	if _, err := v3.snapshot(t.Context(), testGUN); err != nil {
		t.Fatal(err)
	}
}

// TestSlowUpdateBounded: each response comes just inside the request
// timeout, but the whole update is bounded too.
func TestSlowUpdateBounded(t *testing.T) {
	f := newFixture(t)
	f.tag("targets", "v1", []byte("v1"))
	f.publish()
	// One request at a time, as a server with one worker answers: the
	// requests trustproxy sends at once queue up.
	var one sync.Mutex
	f.srv.SetOverride(func(w http.ResponseWriter, r *http.Request, role string) bool {
		one.Lock()
		defer one.Unlock()
		time.Sleep(200 * time.Millisecond)
		return false
	})
	v, _ := newVerifier(t, f, opts{rule: config.Rule{TOFU: true}, limits: config.Limits{UpstreamTimeout: 300 * time.Millisecond}})
	start := time.Now()
	_, err := v.snapshot(t.Context(), testGUN)
	wantReason(t, err, TrustUnavailable)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("update took %v with a 300ms request timeout", d)
	}
}

// TestCAFileReplacedInPlaceRechecksRoot: a root accepted under a CA file is
// checked again when the file's content changes, though its path does not.
func TestCAFileReplacedInPlaceRechecksRoot(t *testing.T) {
	f := newFixture(t)
	f.tag("targets", "v1", []byte("v1"))
	f.publish()
	dir := t.TempDir()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, issueRoot(t, f), 0o600); err != nil {
		t.Fatal(err)
	}
	pins := config.Pinning{CA: map[string]string{"example.com/": ca}}
	v, _ := newVerifier(t, f, opts{dataDir: dir, pinning: pins})
	if _, err := v.snapshot(t.Context(), testGUN); err != nil {
		t.Fatalf("root issued by the pinned CA: %v", err)
	}

	// The operator replaces the CA file with one that did not issue the
	// root, and restarts: the cached root is refused.
	if err := os.WriteFile(ca, pemCert(f.delegate("targets/other")), 0o600); err != nil {
		t.Fatal(err)
	}
	v2, _ := newVerifier(t, f, opts{dataDir: dir, pinning: pins})
	_, err := v2.snapshot(t.Context(), testGUN)
	wantReason(t, err, NotPinned)
}

// issueRoot rotates f's root to a certificate that a new CA issued for a
// new root key, publishes it, and returns the CA certificate as PEM.
func issueRoot(t *testing.T, f *fixture) []byte {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Add(-time.Hour)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: now, NotAfter: now.AddDate(1, 0, 0), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	pub, err := f.cs.Create(data.CanonicalRootRole, f.gun, data.ECDSAKey)
	if err != nil {
		t.Fatal(err)
	}
	rootPub, err := x509.ParsePKIXPublicKey(pub.Public())
	if err != nil {
		t.Fatal(err)
	}
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: f.gun.String()},
		NotBefore: now, NotAfter: now.AddDate(1, 0, 0), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning, x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, rootPub, caKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	if err := f.repo.ReplaceBaseKeys(data.CanonicalRootRole, utils.CertToKey(cert)); err != nil {
		t.Fatal(err)
	}
	f.publish()
	return pemCert(caCert)
}

// TestReconfigureRequestsEndUnderTheirConfiguration: after a reload, a
// request judged by a rule of the configuration before it (routed just
// before the reload) is verified with that configuration's pins, Notary
// servers and reuse times, not the new ones; a rule of the new
// configuration gets the new ones.
func TestReconfigureRequestsEndUnderTheirConfiguration(t *testing.T) {
	f := newFixture(t)
	f.tag("targets", "v1", []byte("v1"))
	f.publish()
	before, _ := newVerifier(t, f, opts{pinning: config.Pinning{Certs: map[string][]string{testGUN: {f.rootID()}}}})
	other := strings.Repeat("ab", 32) // a root nobody holds
	after, _ := newVerifier(t, f, opts{pinning: config.Pinning{Certs: map[string][]string{testGUN: {other}}}})
	oldRule := before.cfg.Trust.RuleFor(testGUN)
	host, path, _ := strings.Cut(testGUN, "/")
	n, err := gun.New(host, path)
	if err != nil {
		t.Fatal(err)
	}

	if err := before.v.Reconfigure(after.cfg); err != nil {
		t.Fatal(err)
	}
	view, err := before.v.View(t.Context(), n, oldRule)
	if err != nil {
		t.Fatalf("a request under the rule of the configuration before the reload: %v", err)
	}
	if _, err := view.Resolve("v1"); err != nil {
		t.Fatal(err)
	}
	if _, err := before.v.View(t.Context(), n, after.cfg.Trust.RuleFor(testGUN)); err == nil {
		t.Fatal("a request under the new configuration's rule was verified with the pins before the reload")
	}
}
