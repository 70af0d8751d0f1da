package notation

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"maps"
	"math/big"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

// upstream is a real registry with one repository, library/app.
type upstream struct {
	reg  *testenv.Registry
	repo name.Repository
}

func newUpstream(t testing.TB) *upstream {
	reg := testenv.NewRegistry(t)
	repo, err := name.NewRepository(reg.Host()+"/library/app", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return &upstream{reg: reg, repo: repo}
}

func (u *upstream) Upstream() Upstream { return Upstream{Repo: u.repo, Client: http.DefaultClient} }

// image pushes a fresh image under tag and returns its descriptor.
func (u *upstream) image(t testing.TB, tag string) ocispec.Descriptor {
	t.Helper()
	h := u.reg.Push(t, "library/app", tag, testenv.Image(t, t.Name()+"/"+tag, 1, 64))
	return u.reg.Describe(t, "library/app", digest.Digest(h.String()))
}

// signer is the Signer a rule would pin for ca: its PEM file read back,
// with identities.
func signer(t testing.TB, ca *testenv.NotationCA, identities ...string) Signer {
	t.Helper()
	b, err := os.ReadFile(ca.PEMFile)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ParseSigner(ca.Name, b, identities)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newVerifier(t testing.TB, opts Options) *Verifier {
	t.Helper()
	v, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// withChain is the JWS envelope env with its unprotected x5c header (the
// certificate chain, which the signature does not cover) replaced.
func withChain(t testing.TB, env []byte, chain ...*x509.Certificate) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(env, &m); err != nil {
		t.Fatal(err)
	}
	var x5c [][]byte
	for _, c := range chain {
		x5c = append(x5c, c.Raw)
	}
	m["header"].(map[string]any)["x5c"] = x5c
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// crossSigned makes two CAs each certified by the other: a chain loop.
func crossSigned(t testing.TB) (x, y *x509.Certificate) {
	t.Helper()
	kx, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ky, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := func(cn string, n int64) *x509.Certificate {
		return &x509.Certificate{SerialNumber: big.NewInt(n), Subject: pkix.Name{CommonName: cn, Organization: []string{"loop"}, Province: []string{"WA"}, Country: []string{"US"}},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	}
	tx, ty := tmpl("X", 1), tmpl("Y", 2)
	derX, err := x509.CreateCertificate(rand.Reader, tx, ty, &kx.PublicKey, ky) // X, issued by Y
	if err != nil {
		t.Fatal(err)
	}
	derY, err := x509.CreateCertificate(rand.Reader, ty, tx, &ky.PublicKey, kx) // Y, issued by X
	if err != nil {
		t.Fatal(err)
	}
	x, _ = x509.ParseCertificate(derX)
	y, _ = x509.ParseCertificate(derY)
	return x, y
}

// serveIndex makes the registry answer the referrers tag of subject with
// body (no Content-Length), and counts the requests for each path.
func (u *upstream) serveIndex(t testing.TB, subject digest.Digest, body []byte, extra map[string][]byte) *requested {
	t.Helper()
	seen := &requested{paths: map[string]int{}}
	tag := strings.Replace(subject.String(), ":", "-", 1)
	u.reg.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		seen.add(r.URL.Path)
		if strings.HasSuffix(r.URL.Path, "/manifests/"+tag) {
			w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			_, _ = w.Write(body)
			return true
		}
		for suffix, b := range extra {
			if strings.HasSuffix(r.URL.Path, suffix) {
				w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
				_, _ = w.Write(b)
				return true
			}
		}
		return false
	})
	return seen
}

func index(entries ...ocispec.Descriptor) []byte {
	b, _ := json.Marshal(ocispec.Index{Versioned: specsV2, MediaType: ocispec.MediaTypeImageIndex, Manifests: entries})
	return b
}

func sigManifestBytes(subject, layer ocispec.Descriptor) []byte {
	m := ocispec.Manifest{Versioned: specsV2, MediaType: ocispec.MediaTypeImageManifest, ArtifactType: ArtifactType,
		Config: ocispec.DescriptorEmptyJSON, Layers: []ocispec.Descriptor{layer}, Subject: &subject}
	b, _ := json.Marshal(m)
	return b
}

// requested counts the paths an upstream was asked for; the registry's
// handlers run concurrently.
type requested struct {
	mu    sync.Mutex
	paths map[string]int
}

func (r *requested) add(path string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.paths[path]++
}

// snapshot is a copy of the counts so far.
func (r *requested) snapshot() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.paths)
}

func mustNot(t testing.TB, seen *requested, d digest.Digest) {
	t.Helper()
	for p, n := range seen.snapshot() {
		if strings.HasSuffix(p, d.String()) {
			t.Fatalf("%s was requested %d times", p, n)
		}
	}
}

var specsV2 = specs.Versioned{SchemaVersion: 2}

type x509Cert = x509.Certificate

// longChain is n distinct self-signed CA certificates.
func longChain(t testing.TB, n int) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for i := range n {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 1)), Subject: pkix.Name{CommonName: fmt.Sprint("link ", i)},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		out = append(out, c)
	}
	return out
}

// swapPayload is the JWS envelope env carrying other's payload under its
// own signature.
func swapPayload(t testing.TB, env, other []byte) []byte {
	t.Helper()
	var m, o map[string]any
	if json.Unmarshal(env, &m) != nil || json.Unmarshal(other, &o) != nil {
		t.Fatal("not JSON envelopes")
	}
	m["payload"] = o["payload"]
	b, _ := json.Marshal(m)
	return b
}
