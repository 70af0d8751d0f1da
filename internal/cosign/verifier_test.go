package cosign

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
)

// TestVerify signs images on a real registry the ways cosign does and
// checks each verdict.
func TestVerify(t *testing.T) {
	up := newUpstream(t)
	alice, bob, carol := newKey(t, "ecdsa", "alice"), newKey(t, "ed25519", "bob"), newKey(t, "rsa", "carol")
	mallory := newKey(t, "ecdsa", "mallory")
	v, err := New(Options{Signers: []Signer{alice.signer, bob.signer, carol.signer}, AllowNoTlog: true})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		sign   func(t *testing.T, img ocispec.Descriptor)
		reason Reason
		signer string
		format Format
	}{{
		name: "trusted ECDSA key",
		sign: func(t *testing.T, img ocispec.Descriptor) {
			up.attachBundle(t, img, signBundle(t, alice, statement(img.Digest, SignPredicate)), SignPredicate, 0)
		},
		reason: Verified, signer: "alice", format: Bundle,
	}, {
		name: "trusted Ed25519 key",
		sign: func(t *testing.T, img ocispec.Descriptor) {
			up.attachBundle(t, img, signBundle(t, bob, statement(img.Digest, SignPredicate)), SignPredicate, 0)
		},
		reason: Verified, signer: "bob", format: Bundle,
	}, {
		name: "trusted RSA key",
		sign: func(t *testing.T, img ocispec.Descriptor) {
			up.attachBundle(t, img, signBundle(t, carol, statement(img.Digest, SignPredicate)), SignPredicate, 0)
		},
		reason: Verified, signer: "carol", format: Bundle,
	}, {
		name: "untrusted key",
		sign: func(t *testing.T, img ocispec.Descriptor) {
			up.attachBundle(t, img, signBundle(t, mallory, statement(img.Digest, SignPredicate)), SignPredicate, 0)
		},
		reason: UntrustedKey,
	}, {
		name:   "unsigned",
		sign:   func(t *testing.T, img ocispec.Descriptor) {},
		reason: Unsigned,
	}, {
		name: "statement names another digest",
		sign: func(t *testing.T, img ocispec.Descriptor) {
			other := digest.FromString("another image")
			up.attachBundle(t, img, signBundle(t, alice, statement(other, SignPredicate)), SignPredicate, 0)
		},
		reason: OtherDigest,
	}, {
		name: "tampered signature",
		sign: func(t *testing.T, img ocispec.Descriptor) {
			up.attachBundle(t, img, tamper(t, signBundle(t, alice, statement(img.Digest, SignPredicate))), SignPredicate, 0)
		},
		reason: BadSignature,
	}, {
		name: "tampered statement",
		sign: func(t *testing.T, img ocispec.Descriptor) {
			b := signBundle(t, alice, statement(img.Digest, SignPredicate))
			other := digest.FromString("another image")
			b = bytes.Replace(b, []byte(b64(statement(img.Digest, SignPredicate))), []byte(b64(statement(other, SignPredicate))), 1)
			up.attachBundle(t, img, b, SignPredicate, 0)
		},
		reason: BadSignature,
	}, {
		name: "attestation only",
		sign: func(t *testing.T, img ocispec.Descriptor) {
			up.attachBundle(t, img, signBundle(t, alice, statement(img.Digest, "https://slsa.dev/provenance/v1")), "https://slsa.dev/provenance/v1", 0)
		},
		reason: Unsigned,
	}, {
		name: "attestation without annotation",
		sign: func(t *testing.T, img ocispec.Descriptor) {
			up.attachBundle(t, img, signBundle(t, alice, statement(img.Digest, "https://slsa.dev/provenance/v1")), "", 0)
		},
		reason: Unsigned,
	}, {
		name: "untrusted, then trusted",
		sign: func(t *testing.T, img ocispec.Descriptor) {
			up.attachBundle(t, img, signBundle(t, mallory, statement(img.Digest, SignPredicate)), SignPredicate, 0)
			up.attachBundle(t, img, signBundle(t, carol, statement(img.Digest, SignPredicate)), SignPredicate, 0)
		},
		reason: Verified, signer: "carol", format: Bundle,
	}, {
		name:   "legacy .sig by a trusted key",
		sign:   func(t *testing.T, img ocispec.Descriptor) { up.attachLegacy(t, img.Digest, img.Digest, alice) },
		reason: Verified, signer: "alice", format: SimpleSigning,
	}, {
		name:   "legacy .sig by Ed25519",
		sign:   func(t *testing.T, img ocispec.Descriptor) { up.attachLegacy(t, img.Digest, img.Digest, bob) },
		reason: Verified, signer: "bob", format: SimpleSigning,
	}, {
		name: "legacy .sig of another digest",
		sign: func(t *testing.T, img ocispec.Descriptor) {
			up.attachLegacy(t, img.Digest, digest.FromString("another image"), alice)
		},
		reason: OtherDigest,
	}, {
		name:   "legacy .sig by an untrusted key",
		sign:   func(t *testing.T, img ocispec.Descriptor) { up.attachLegacy(t, img.Digest, img.Digest, mallory) },
		reason: UntrustedKey,
	}}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := up.image(t, fmt.Sprintf("v%d", i))
			tt.sign(t, img)
			got, err := v.Verify(t.Context(), up.Upstream(), img.Digest)
			if got.Reason != tt.reason || got.Signer != tt.signer || got.Format != tt.format || got.Digest != img.Digest {
				t.Fatalf("verdict %+v (err %v), want reason %s signer %q format %q", got, err, tt.reason, tt.signer, tt.format)
			}
			r, refused := errors.AsType[*RefusalError](err)
			switch {
			case tt.reason == Verified && err != nil:
				t.Fatalf("verified with error %v", err)
			case tt.reason != Verified && (!refused || r.Reason != tt.reason || r.Detail == ""):
				t.Fatalf("refusal error %v, want a *RefusalError of %s", err, tt.reason)
			}
			t.Logf("%+v: %v", got, err)
		})
	}
}

// tamper flips a bit of the DSSE signature in a bundle's JSON.
func tamper(t *testing.T, bundle []byte) []byte {
	t.Helper()
	var doc map[string]any
	if err := json.Unmarshal(bundle, &doc); err != nil {
		t.Fatal(err)
	}
	sigs := doc["dsseEnvelope"].(map[string]any)["signatures"].([]any)
	s := sigs[0].(map[string]any)
	raw := []byte(s["sig"].(string))
	if raw[10] == 'A' {
		raw[10] = 'B'
	} else {
		raw[10] = 'A'
	}
	s["sig"] = string(raw)
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// b64 is b as protojson writes bytes.
func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// TestNoTlogRequired: a rule without allow_no_tlog refuses a keyed
// signature made without a transparency-log entry, and a rule without a
// trusted root to check entries against is refused when compiled.
func TestNoTlogRequired(t *testing.T) {
	up := newUpstream(t)
	alice := newKey(t, "ecdsa", "alice")
	if _, err := New(Options{Signers: []Signer{alice.signer}}); err == nil {
		t.Fatal("compiled a rule that requires a tlog entry without a trusted root")
	}
	v, err := New(Options{Signers: []Signer{alice.signer}, TrustedRoot: rekorRoot(t)})
	if err != nil {
		t.Fatal(err)
	}
	img := up.image(t, "v1")
	up.attachBundle(t, img, signBundle(t, alice, statement(img.Digest, SignPredicate)), SignPredicate, 0)
	got, err := v.Verify(t.Context(), up.Upstream(), img.Digest)
	if got.Reason != NoTlog {
		t.Fatalf("verdict %+v (%v), want %s", got, err, NoTlog)
	}
	img2 := up.image(t, "v2")
	up.attachLegacy(t, img2.Digest, img2.Digest, alice)
	if got, err := v.Verify(t.Context(), up.Upstream(), img2.Digest); got.Reason != NoTlog {
		t.Fatalf("legacy verdict %+v (%v), want %s", got, err, NoTlog)
	}
}

// rekorRoot is a trusted root naming one Rekor log, of a key made here.
func rekorRoot(t *testing.T) root.TrustedMaterial {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := cryptoutils.MarshalPublicKeyToDER(k.Public())
	id := digest.FromBytes(der)
	tl := &root.TransparencyLog{BaseURL: "https://rekor.invalid", ID: []byte(id.Encoded()), HashFunc: crypto.SHA256,
		PublicKey: k.Public(), SignatureHashFunc: crypto.SHA256, ValidityPeriodStart: time.Now().Add(-time.Hour)}
	tr, err := root.NewTrustedRoot(root.TrustedRootMediaType01, nil, nil, nil, map[string]*root.TransparencyLog{id.Encoded(): tl})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// TestHugeReferrersIndex: a referrers tag index of 100,000 entries is
// refused (too_large) after reading at most the limit, quickly, in little
// memory, even when no Content-Length announces it.
func TestHugeReferrersIndex(t *testing.T) {
	up := newUpstream(t)
	alice := newKey(t, "ecdsa", "alice")
	v, err := New(Options{Signers: []Signer{alice.signer}, AllowNoTlog: true})
	if err != nil {
		t.Fatal(err)
	}
	img := up.image(t, "v1")
	var body bytes.Buffer
	body.WriteString(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`)
	for i := range 100_000 {
		if i > 0 {
			body.WriteByte(',')
		}
		fmt.Fprintf(&body, `{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":600,"artifactType":%q}`,
			digest.FromString(fmt.Sprint(i)), BundleType)
	}
	body.WriteString(`]}`)
	t.Logf("index of %d bytes", body.Len())
	served := 0
	up.reg.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasSuffix(r.URL.Path, "/manifests/"+tagOf(img.Digest)) {
			return false
		}
		served++
		w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush() // no Content-Length: the read bound must hold
		_, _ = w.Write(body.Bytes())
		return true
	})
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	got, err := v.Verify(t.Context(), up.Upstream(), img.Digest)
	took := time.Since(start)
	runtime.ReadMemStats(&after)
	if got.Reason != TooLarge || served != 1 {
		t.Fatalf("verdict %+v (%v), index served %d times; want %s", got, err, served, TooLarge)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; took > 5*time.Second || alloc > 16<<20 {
		t.Fatalf("took %s and allocated %d bytes", took, alloc)
	}
	t.Logf("%v in %s", err, took)
}

// TestReferrersEntryBound: an index within the byte limit but over the
// entry limit is refused too_large, before any entry is fetched.
func TestReferrersEntryBound(t *testing.T) {
	up := newUpstream(t)
	alice := newKey(t, "ecdsa", "alice")
	v, err := New(Options{Signers: []Signer{alice.signer}, AllowNoTlog: true, Limits: Limits{Referrers: 3}})
	if err != nil {
		t.Fatal(err)
	}
	img := up.image(t, "v1")
	for range 4 {
		up.attachBundle(t, img, signBundle(t, alice, statement(img.Digest, SignPredicate)), SignPredicate, 0)
	}
	got, err := v.Verify(t.Context(), up.Upstream(), img.Digest)
	if got.Reason != TooLarge {
		t.Fatalf("verdict %+v (%v), want %s", got, err, TooLarge)
	}
}

// TestSignaturesBound: only Limits.Signatures signatures are examined.
func TestSignaturesBound(t *testing.T) {
	up := newUpstream(t)
	alice, mallory := newKey(t, "ecdsa", "alice"), newKey(t, "ecdsa", "mallory")
	v, err := New(Options{Signers: []Signer{alice.signer}, AllowNoTlog: true, Limits: Limits{Signatures: 2}})
	if err != nil {
		t.Fatal(err)
	}
	img := up.image(t, "v1")
	var sigs []ocispec.Descriptor
	for range 3 {
		sigs = append(sigs, up.attachBundle(t, img, signBundle(t, mallory, statement(img.Digest, SignPredicate)), SignPredicate, 0))
	}
	sigs = append(sigs, up.attachBundle(t, img, signBundle(t, alice, statement(img.Digest, SignPredicate)), SignPredicate, 0))
	up.setReferrers(t, img.Digest, sigs...) // alice's last
	before := up.reg.Requests(http.MethodGet, "")
	got, err := v.Verify(t.Context(), up.Upstream(), img.Digest)
	if got.Reason != UntrustedKey {
		t.Fatalf("verdict %+v (%v), want %s", got, err, UntrustedKey)
	}
	// referrers API, referrers tag, 2 × (manifest, layer), legacy tag.
	if n := up.reg.Requests(http.MethodGet, "") - before; n != 7 {
		t.Fatalf("%d GETs, want 7", n)
	}
}

// TestHugeLayerNotRead: a signature manifest whose bundle layer claims
// 1 GiB is refused too_large without the layer being fetched.
func TestHugeLayerNotRead(t *testing.T) {
	up := newUpstream(t)
	alice := newKey(t, "ecdsa", "alice")
	v, err := New(Options{Signers: []Signer{alice.signer}, AllowNoTlog: true})
	if err != nil {
		t.Fatal(err)
	}
	img := up.image(t, "v1")
	bundle := signBundle(t, alice, statement(img.Digest, SignPredicate))
	up.attachBundle(t, img, bundle, SignPredicate, 1<<30)
	got, err := v.Verify(t.Context(), up.Upstream(), img.Digest)
	if got.Reason != TooLarge {
		t.Fatalf("verdict %+v (%v), want %s", got, err, TooLarge)
	}
	if n := up.reg.Requests(http.MethodGet, "/blobs/"+digest.FromBytes(bundle).String()); n != 0 {
		t.Fatalf("the layer was fetched %d times", n)
	}
}

// TestUpstreamFailureIsNoVerdict: a registry failing is an error that is
// not a refusal: the caller retries rather than refusing the image.
func TestUpstreamFailureIsNoVerdict(t *testing.T) {
	up := newUpstream(t)
	alice := newKey(t, "ecdsa", "alice")
	v, err := New(Options{Signers: []Signer{alice.signer}, AllowNoTlog: true})
	if err != nil {
		t.Fatal(err)
	}
	img := up.image(t, "v1")
	up.reg.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		w.WriteHeader(http.StatusServiceUnavailable)
		return true
	})
	_, err = v.Verify(t.Context(), up.Upstream(), img.Digest)
	if _, refused := errors.AsType[*RefusalError](err); err == nil || refused {
		t.Fatalf("err %v, want an error that is no refusal", err)
	}
	if _, ok := errors.AsType[*StatusError](err); !ok {
		t.Fatalf("err %v, want a *StatusError", err)
	}
}

// TestTimeout: an upstream that does not answer is given Limits.Timeout.
func TestTimeout(t *testing.T) {
	up := newUpstream(t)
	alice := newKey(t, "ecdsa", "alice")
	v, err := New(Options{Signers: []Signer{alice.signer}, AllowNoTlog: true, Limits: Limits{Timeout: 200 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	img := up.image(t, "v1")
	up.reg.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		<-r.Context().Done()
		return true
	})
	start := time.Now()
	_, err = v.Verify(t.Context(), up.Upstream(), img.Digest)
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("err %v after %s", err, time.Since(start))
	}
}

// TestNew refuses what a rule must not compile to.
func TestNew(t *testing.T) {
	alice := newKey(t, "ecdsa", "alice")
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384PEM, _ := cryptoutils.MarshalPublicKeyToPEM(p384.Public())
	if _, err := ParseSigner("p384", p384PEM); err == nil {
		t.Error("accepted a P-384 key")
	}
	if _, err := ParseSigner("junk", []byte("not a key")); err == nil {
		t.Error("accepted junk as a key")
	}
	tests := []struct {
		name string
		opts Options
	}{
		{"no signers", Options{AllowNoTlog: true}},
		{"repeated name", Options{Signers: []Signer{alice.signer, alice.signer}, AllowNoTlog: true}},
		{"unnamed", Options{Signers: []Signer{{Key: alice.signer.Key}}, AllowNoTlog: true}},
		{"tlog without a root", Options{Signers: []Signer{alice.signer}}},
		{"P-384", Options{Signers: []Signer{{Name: "p384", Key: p384.Public()}}, AllowNoTlog: true}},
	}
	for _, tt := range tests {
		if _, err := New(tt.opts); err == nil {
			t.Errorf("%s: compiled", tt.name)
		}
	}
}
