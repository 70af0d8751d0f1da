package cosign

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sigstore/sigstore-go/pkg/root"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

const (
	ciIssuer  = "https://token.actions.example.test"
	ciSubject = "release@example.test"
)

// TestKeyless signs images keylessly with a test Sigstore (a Fulcio-style
// CA and a Rekor log, its trusted_root.json read back as an operator's
// would be) and checks each verdict.
func TestKeyless(t *testing.T) {
	up := newUpstream(t)
	ss := testenv.NewTestSigstore(t)
	stranger := testenv.NewTestSigstore(t)
	tr, err := root.NewTrustedRootFromPath(ss.RootFile)
	if err != nil {
		t.Fatal(err)
	}
	alice := newKey(t, "ecdsa", "alice")
	v, err := New(Options{TrustedRoot: tr, Signers: []Signer{
		alice.signer,
		{Name: "release", Identity: &Identity{Issuer: ciIssuer, Subject: ciSubject}},
		{Name: "team", Identity: &Identity{IssuerRegexp: `https://token\.actions\.example\.test`, SubjectRegexp: `[a-z]+@team\.example\.test`}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	keyless := func(ss *testenv.TestSigstore, subject, issuer string, o testenv.Keyless) func(t *testing.T, img ocispec.Descriptor) {
		return func(t *testing.T, img ocispec.Descriptor) {
			up.attachBundle(t, img, ss.KeylessBundle(t, up.repo.String(), img.Digest, subject, issuer, o), SignPredicate, 0)
		}
	}
	tests := []struct {
		name   string
		sign   func(t *testing.T, img ocispec.Descriptor)
		reason Reason
		signer string
		detail string
	}{
		{name: "right identity", sign: keyless(ss, ciSubject, ciIssuer, testenv.Keyless{}), reason: Verified, signer: "release"},
		{name: "regexp identity", sign: keyless(ss, "bob@team.example.test", ciIssuer, testenv.Keyless{}), reason: Verified, signer: "team"},
		{name: "regexp is anchored at the end", sign: keyless(ss, "bob@team.example.test.evil.test", ciIssuer, testenv.Keyless{}),
			reason: IdentityMismatch, detail: "subject mismatch"},
		{name: "regexp is anchored at the start", sign: keyless(ss, "evil.test/bob@team.example.test", ciIssuer, testenv.Keyless{}),
			reason: IdentityMismatch, detail: "subject mismatch"},
		{name: "wrong subject", sign: keyless(ss, "mallory@example.test", ciIssuer, testenv.Keyless{}), reason: IdentityMismatch, detail: "subject mismatch"},
		{name: "wrong issuer", sign: keyless(ss, ciSubject, "https://accounts.evil.test", testenv.Keyless{}), reason: IdentityMismatch, detail: "issuer mismatch"},
		{name: "another CA", sign: keyless(stranger, ciSubject, ciIssuer, testenv.Keyless{}), reason: UntrustedKey, detail: "not issued by a certificate authority of the trusted root"},
		{name: "no inclusion proof", sign: keyless(ss, ciSubject, ciIssuer, testenv.Keyless{NoInclusionProof: true}), reason: NoTlog, detail: "no inclusion proof"},
		{name: "no tlog entry", sign: keyless(ss, ciSubject, ciIssuer, testenv.Keyless{NoTlog: true}), reason: NoTlog, detail: "whatever allow_no_tlog says"},
		{name: "expired certificate, logged in time", reason: Verified, signer: "release",
			sign: keyless(ss, ciSubject, ciIssuer, testenv.Keyless{Issued: time.Now().Add(-50 * time.Minute), Logged: time.Now().Add(-45 * time.Minute)})},
		{name: "logged after the certificate expired", reason: CertExpired, detail: "integrated at",
			sign: keyless(ss, ciSubject, ciIssuer, testenv.Keyless{Issued: time.Now().Add(-50 * time.Minute), Logged: time.Now().Add(-30 * time.Minute)})},
		{name: "signs another digest", reason: OtherDigest, sign: func(t *testing.T, img ocispec.Descriptor) {
			other := up.image(t, "other")
			up.attachBundle(t, img, ss.KeylessBundle(t, up.repo.String(), other.Digest, ciSubject, ciIssuer, testenv.Keyless{}), SignPredicate, 0)
		}},
		{name: "a certificate chain loop", reason: Malformed, detail: "certificate chain", sign: func(t *testing.T, img ocispec.Descriptor) {
			up.attachBundle(t, img, chainLoop(t, ss.KeylessBundle(t, up.repo.String(), img.Digest, ciSubject, ciIssuer, testenv.Keyless{})), SignPredicate, 0)
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := up.image(t, fmt.Sprintf("k%d", i))
			tt.sign(t, img)
			got, err := v.Verify(t.Context(), up.Upstream(), img.Digest)
			if got.Reason != tt.reason || got.Signer != tt.signer {
				t.Fatalf("verdict %+v (err %v), want reason %s signer %q", got, err, tt.reason, tt.signer)
			}
			r, refused := errors.AsType[*RefusalError](err)
			switch {
			case tt.reason == Verified && err != nil:
				t.Fatalf("verified with error %v", err)
			case tt.reason != Verified && (!refused || r.Reason != tt.reason || !strings.Contains(r.Detail, tt.detail)):
				t.Fatalf("refusal error %v, want a *RefusalError of %s saying %q", err, tt.reason, tt.detail)
			}
			t.Logf("%+v: %v", got, err)
		})
	}
}

// chainLoop rewrites a bundle's certificate as a chain of 100
// certificates that name each other in turn (leaf, then its CA and the
// leaf again, and again).
func chainLoop(t *testing.T, b []byte) []byte {
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	vm := m["verificationMaterial"].(map[string]any)
	leaf := vm["certificate"]
	delete(vm, "certificate")
	certs := make([]any, 100)
	for i := range certs {
		certs[i] = leaf
	}
	vm["x509CertificateChain"] = map[string]any{"certificates": certs}
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestKeyedWithTlog: a keyed signature logged in the test Sigstore's Rekor
// verifies under a rule that requires the log; the same signature without
// its entry is refused.
func TestKeyedWithTlog(t *testing.T) {
	up := newUpstream(t)
	ss := testenv.NewTestSigstore(t)
	k := testenv.NewCosignKey(t, "alice")
	pub, err := os.ReadFile(k.PubFile)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ParseSigner("alice", pub)
	if err != nil {
		t.Fatal(err)
	}
	v, err := New(Options{Signers: []Signer{s}, TrustedRoot: ss.Root})
	if err != nil {
		t.Fatal(err)
	}
	logged := up.image(t, "logged")
	up.attachBundle(t, logged, ss.Logged(t, k.Bundle(t, up.repo.String(), logged.Digest), k), SignPredicate, 0)
	if got, err := v.Verify(t.Context(), up.Upstream(), logged.Digest); err != nil || got.Signer != "alice" {
		t.Fatalf("logged keyed signature: %+v (%v), want verified by alice", got, err)
	}
	bare := up.image(t, "bare")
	up.attachBundle(t, bare, k.Bundle(t, up.repo.String(), bare.Digest), SignPredicate, 0)
	if got, err := v.Verify(t.Context(), up.Upstream(), bare.Digest); got.Reason != NoTlog {
		t.Fatalf("unlogged keyed signature: %+v (%v), want %s", got, err, NoTlog)
	}
}
