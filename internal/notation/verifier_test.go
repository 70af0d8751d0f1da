package notation

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

// verify runs v on dgst and checks the verdict's reason; a refusal must
// come with a *RefusalError of the same reason and a detail.
func verify(t *testing.T, v *Verifier, u *upstream, dgst digest.Digest, want Reason) Verdict {
	t.Helper()
	got, err := v.Verify(t.Context(), u.Upstream(), dgst)
	if got.Reason != want {
		t.Fatalf("verdict %+v (err %v), want %s", got, err, want)
	}
	if want == Verified {
		if err != nil {
			t.Fatalf("verified with error %v", err)
		}
		return got
	}
	r, ok := errors.AsType[*RefusalError](err)
	if !ok || r.Reason != want || r.Detail == "" {
		t.Fatalf("err %v, want a *RefusalError %s with a detail", err, want)
	}
	t.Logf("%s", err)
	return got
}

// TestTrustedCAVerified: a JWS and a COSE signature by a leaf under the
// pinned CA verify, naming the signer; an unsigned image is unsigned.
func TestTrustedCAVerified(t *testing.T) {
	u := newUpstream(t)
	ca := testenv.NewNotationCA(t, "acme")
	k := ca.Key(t, "release", 0)
	v := newVerifier(t, Options{Signers: []Signer{signer(t, ca, k.Identity())}})
	for _, mt := range []string{testenv.NotationJWS, testenv.NotationCOSE} {
		img := u.image(t, "v1-"+strings.TrimSuffix(strings.TrimPrefix(mt, "application/"), "+json"))
		sig := u.reg.NotationAttach(t, "library/app", img, k.Envelope(t, img, mt), mt)
		got := verify(t, v, u, img.Digest, Verified)
		if got.Signer != "acme" || got.Signature != sig {
			t.Fatalf("%s: verdict %+v, want signer acme and signature %s", mt, got, sig)
		}
	}
	verify(t, v, u, u.image(t, "unsigned").Digest, Unsigned)
}

// TestOtherCARefused: a signature under a CA no signer pins is untrusted,
// and so is the envelope under a pinned CA whose chain is swapped for the
// other CA's.
func TestOtherCARefused(t *testing.T) {
	u := newUpstream(t)
	acme, evil := testenv.NewNotationCA(t, "acme"), testenv.NewNotationCA(t, "evil")
	v := newVerifier(t, Options{Signers: []Signer{signer(t, acme, "*")}})
	img := u.image(t, "v1")
	u.reg.NotationSign(t, "library/app", img.Digest, evil.Key(t, "release", 0))
	verify(t, v, u, img.Digest, Untrusted)

	// The chain is not signed: a genuine signature whose chain is made to
	// end in the pinned CA is no chain.
	img2 := u.image(t, "v2")
	ek := evil.Key(t, "release", 0)
	u.reg.NotationAttach(t, "library/app", img2, withChain(t, ek.Envelope(t, img2, testenv.NotationJWS), ek.Leaf, acme.Cert), testenv.NotationJWS)
	verify(t, v, u, img2.Digest, Malformed)
}

// TestIdentityMismatch: under the pinned CA, by a subject the signer does
// not list.
func TestIdentityMismatch(t *testing.T) {
	u := newUpstream(t)
	ca := testenv.NewNotationCA(t, "acme")
	release, intern := ca.Key(t, "release", 0), ca.Key(t, "intern", 0)
	v := newVerifier(t, Options{Signers: []Signer{signer(t, ca, release.Identity())}})
	img := u.image(t, "v1")
	u.reg.NotationSign(t, "library/app", img.Digest, intern)
	verify(t, v, u, img.Digest, IdentityMismatch)
	u.reg.NotationSign(t, "library/app", img.Digest, release)
	verify(t, v, u, img.Digest, Verified)
}

// TestSignedForOther: a trusted signature of image B attached to image A
// (its manifest's subject A, its payload B) is refused for A.
func TestSignedForOther(t *testing.T) {
	u := newUpstream(t)
	ca := testenv.NewNotationCA(t, "acme")
	k := ca.Key(t, "release", 0)
	v := newVerifier(t, Options{Signers: []Signer{signer(t, ca, "*")}})
	a, b := u.image(t, "a"), u.image(t, "b")
	u.reg.NotationAttach(t, "library/app", a, k.Envelope(t, b, testenv.NotationJWS), testenv.NotationJWS)
	got := verify(t, v, u, a.Digest, OtherDigest)
	if !strings.Contains(got.Detail, b.Digest.String()) {
		t.Fatalf("detail %q does not name %s", got.Detail, b.Digest)
	}
}

// TestSignedForOtherSubject: B's genuine signature manifest listed in A's
// referrers tag is refused for A without its envelope being read.
func TestSignedForOtherSubject(t *testing.T) {
	u := newUpstream(t)
	ca := testenv.NewNotationCA(t, "acme")
	v := newVerifier(t, Options{Signers: []Signer{signer(t, ca, "*")}})
	a, b := u.image(t, "a"), u.image(t, "b")
	sig := u.reg.NotationSign(t, "library/app", b.Digest, ca.Key(t, "release", 0))
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: ArtifactType, Digest: sig}
	desc.Size = u.reg.Describe(t, "library/app", sig).Size
	u.serveIndex(t, a.Digest, index(desc), nil)
	verify(t, v, u, a.Digest, OtherDigest)
}

// TestExpiredLeaf: a leaf that expired after signing is refused strict,
// and accepted permissive (which only logs expiry).
func TestExpiredLeaf(t *testing.T) {
	u := newUpstream(t)
	ca := testenv.NewNotationCA(t, "acme")
	k := ca.Key(t, "release", 2*time.Second)
	img := u.image(t, "v1")
	u.reg.NotationSign(t, "library/app", img.Digest, k)
	time.Sleep(time.Until(k.Leaf.NotAfter) + 1500*time.Millisecond)
	strict := newVerifier(t, Options{Signers: []Signer{signer(t, ca, "*")}})
	verify(t, strict, u, img.Digest, Expired)
	permissive := newVerifier(t, Options{Signers: []Signer{signer(t, ca, "*")}, Level: LevelPermissive})
	verify(t, permissive, u, img.Digest, Verified)
}

// TestGiantDescriptorUnread: a signature manifest, and an envelope, that
// claim 1 GiB are refused too_large without being requested.
func TestGiantDescriptorUnread(t *testing.T) {
	u := newUpstream(t)
	ca := testenv.NewNotationCA(t, "acme")
	v := newVerifier(t, Options{Signers: []Signer{signer(t, ca, "*")}})
	img := u.image(t, "v1")
	huge := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: ArtifactType, Digest: digest.FromString("huge manifest"), Size: 1 << 30}
	seen := u.serveIndex(t, img.Digest, index(huge), nil)
	verify(t, v, u, img.Digest, TooLarge)
	mustNot(t, seen, huge.Digest)

	img2 := u.image(t, "v2")
	layer := ocispec.Descriptor{MediaType: testenv.NotationJWS, Digest: digest.FromString("huge envelope"), Size: 1 << 30}
	m := sigManifestBytes(img2, layer)
	md := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: ArtifactType, Digest: digest.FromBytes(m), Size: int64(len(m))}
	seen = u.serveIndex(t, img2.Digest, index(md), map[string][]byte{"/manifests/" + md.Digest.String(): m})
	got := verify(t, v, u, img2.Digest, TooLarge)
	mustNot(t, seen, layer.Digest)
	if !strings.Contains(got.Detail, "1073741824") {
		t.Fatalf("detail %q does not give the claimed size", got.Detail)
	}
}

// TestHugeReferrersList: a referrers tag of 100,000 entries (several MiB,
// sent without a Content-Length) is refused too_large, in bounded time
// and memory, read once; an index under the byte limit but over the entry
// limit is refused too.
func TestHugeReferrersList(t *testing.T) {
	u := newUpstream(t)
	ca := testenv.NewNotationCA(t, "acme")
	v := newVerifier(t, Options{Signers: []Signer{signer(t, ca, "*")}})
	img := u.image(t, "v1")
	var body bytes.Buffer
	body.WriteString(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`)
	for i := range 100_000 {
		if i > 0 {
			body.WriteByte(',')
		}
		fmt.Fprintf(&body, `{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":600,"artifactType":%q}`, digest.FromString(fmt.Sprint(i)), ArtifactType)
	}
	body.WriteString(`]}`)
	seen := u.serveIndex(t, img.Digest, body.Bytes(), nil)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	verify(t, v, u, img.Digest, TooLarge)
	took := time.Since(start)
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; took > 5*time.Second || alloc > 16<<20 {
		t.Fatalf("took %s and allocated %d bytes", took, alloc)
	}
	if got := seen.snapshot(); len(got) > 2 { // the referrers API, the tag
		t.Fatalf("%d paths requested: %v", len(got), got)
	}

	few := newVerifier(t, Options{Signers: []Signer{signer(t, ca, "*")}, Limits: Limits{Referrers: 3}})
	var entries []ocispec.Descriptor
	for i := range 4 {
		entries = append(entries, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: ArtifactType, Digest: digest.FromString(fmt.Sprint(i)), Size: 600})
	}
	seen = u.serveIndex(t, img.Digest, index(entries...), nil)
	got := verify(t, few, u, img.Digest, TooLarge)
	if !strings.Contains(got.Detail, "entries") {
		t.Fatalf("detail %q", got.Detail)
	}
	mustNot(t, seen, entries[0].Digest)
}

// TestChainLoopRefused: an envelope whose (unsigned) chain loops, or is
// longer than the limit, is refused before notation-go walks it.
func TestChainLoopRefused(t *testing.T) {
	u := newUpstream(t)
	ca := testenv.NewNotationCA(t, "acme")
	k := ca.Key(t, "release", 0)
	v := newVerifier(t, Options{Signers: []Signer{signer(t, ca, "*")}})
	x, y := crossSigned(t)
	for name, tc := range map[string]struct {
		chain func() []*x509Cert
		says  string
	}{
		"cross-signed": {func() []*x509Cert { return []*x509Cert{k.Leaf, x, y} }, "loops"},
		"repeated":     {func() []*x509Cert { return []*x509Cert{k.Leaf, ca.Cert, k.Leaf, ca.Cert} }, "repeats"},
		"too long":     {func() []*x509Cert { return append([]*x509Cert{k.Leaf}, longChain(t, 9)...) }, "more than"},
	} {
		t.Run(name, func(t *testing.T) {
			img := u.image(t, "v1")
			u.reg.NotationAttach(t, "library/app", img, withChain(t, k.Envelope(t, img, testenv.NotationJWS), tc.chain()...), testenv.NotationJWS)
			got := verify(t, v, u, img.Digest, Malformed)
			if !strings.Contains(got.Detail, tc.says) {
				t.Fatalf("detail %q does not say %q", got.Detail, tc.says)
			}
		})
	}
}

// TestMalformedEnvelope: bytes that are no envelope, and a manifest layer
// of another media type, are malformed_sig; a tampered payload is
// bad_signature.
func TestMalformedEnvelope(t *testing.T) {
	u := newUpstream(t)
	ca := testenv.NewNotationCA(t, "acme")
	k := ca.Key(t, "release", 0)
	v := newVerifier(t, Options{Signers: []Signer{signer(t, ca, "*")}})
	img := u.image(t, "garbage")
	u.reg.NotationAttach(t, "library/app", img, []byte(`{"payload":"not an envelope"`), testenv.NotationJWS)
	verify(t, v, u, img.Digest, Malformed)
	img = u.image(t, "cose-garbage")
	u.reg.NotationAttach(t, "library/app", img, []byte{0xd2, 0x84, 0x00}, testenv.NotationCOSE)
	verify(t, v, u, img.Digest, Malformed)
	img = u.image(t, "wrong-type")
	u.reg.NotationAttach(t, "library/app", img, k.Envelope(t, img, testenv.NotationJWS), "application/octet-stream")
	verify(t, v, u, img.Digest, Malformed)

	img = u.image(t, "tampered")
	env := k.Envelope(t, img, testenv.NotationJWS)
	other := k.Envelope(t, u.image(t, "other"), testenv.NotationJWS)
	u.reg.NotationAttach(t, "library/app", img, swapPayload(t, env, other), testenv.NotationJWS)
	verify(t, v, u, img.Digest, BadSignature)
}

// TestLevelsAndRevocation: audit and skip are refused at New with a
// reason; revocation on verifies a chain that names no responder.
func TestLevelsAndRevocation(t *testing.T) {
	ca := testenv.NewNotationCA(t, "acme")
	for _, l := range []Level{"audit", "skip", "lax"} {
		if _, err := New(Options{Signers: []Signer{signer(t, ca, "*")}, Level: l}); err == nil {
			t.Fatalf("level %s accepted", l)
		} else {
			t.Log(err)
		}
	}
	for _, ids := range [][]string{nil, {"x509.subject:CN=release"}, {"*", "x509.subject:C=US,ST=WA,O=acme"}} {
		b, _ := os.ReadFile(ca.PEMFile)
		if _, err := ParseSigner("acme", b, ids); err == nil {
			t.Fatalf("identities %q accepted", ids)
		}
	}
	if _, err := ParseSigner("acme", []byte("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"), []string{"*"}); err == nil {
		t.Fatal("a public key accepted as CA certificates")
	}
	u := newUpstream(t)
	img := u.image(t, "v1")
	u.reg.NotationSign(t, "library/app", img.Digest, ca.Key(t, "release", 0))
	v := newVerifier(t, Options{Signers: []Signer{signer(t, ca, "*")}, Revocation: true})
	verify(t, v, u, img.Digest, Verified)
}

// TestRevocationByCRL: with revocation on, a signer whose leaf the CA's
// CRL revokes is refused revoked, at both levels (permissive does not turn
// revocation into a log line); one it does not list is served; when the
// CRL cannot be fetched, no signature verifies (unknown status is not "not
// revoked"): refused revocation_unknown.
func TestRevocationByCRL(t *testing.T) {
	ca := testenv.NewNotationCA(t, "acme")
	var crl atomic.Pointer[[]byte]
	var fetched atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetched.Add(1)
		b := crl.Load()
		if b == nil {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/pkix-crl")
		_, _ = w.Write(*b)
	}))
	t.Cleanup(srv.Close)
	good, revoked := ca.RevocableKey(t, "release", srv.URL+"/acme.crl"), ca.RevocableKey(t, "leaked", srv.URL+"/acme.crl")
	list := ca.CRL(t, revoked)
	crl.Store(&list)

	u := newUpstream(t)
	served, refused := u.image(t, "v1"), u.image(t, "v2")
	u.reg.NotationSign(t, "library/app", served.Digest, good)
	u.reg.NotationSign(t, "library/app", refused.Digest, revoked)
	v := newVerifier(t, Options{Signers: []Signer{signer(t, ca, "*")}, Revocation: true, RevocationClient: srv.Client()})
	verify(t, v, u, served.Digest, Verified)
	verify(t, v, u, refused.Digest, Revoked)
	if n := fetched.Load(); n != 1 {
		t.Fatalf("two verifications under one CA fetched its CRL %d times, want once", n)
	}
	// Permissive only logs expiry: a revoked signer is refused all the same.
	permissive := newVerifier(t, Options{Signers: []Signer{signer(t, ca, "*")}, Level: LevelPermissive, Revocation: true, RevocationClient: srv.Client()})
	verify(t, permissive, u, served.Digest, Verified)
	verify(t, permissive, u, refused.Digest, Revoked)

	off := newVerifier(t, Options{Signers: []Signer{signer(t, ca, "*")}})
	verify(t, off, u, refused.Digest, Verified) // revocation off: not asked

	crl.Store(nil) // the CRL server down: a verifier without it cached cannot learn the status
	down := newVerifier(t, Options{Signers: []Signer{signer(t, ca, "*")}, Revocation: true, RevocationClient: srv.Client()})
	verify(t, down, u, served.Digest, RevocationUnknown)
	down = newVerifier(t, Options{Signers: []Signer{signer(t, ca, "*")}, Level: LevelPermissive, Revocation: true, RevocationClient: srv.Client()})
	verify(t, down, u, served.Digest, RevocationUnknown)
}
