package cosign

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
)

// A Signer is a named public key whose cosign signatures a rule trusts.
type Signer struct {
	Name string
	Key  crypto.PublicKey // *ecdsa.PublicKey (P-256), ed25519.PublicKey or *rsa.PublicKey (2048 bits or more)
}

// ParseSigner reads a PEM public key (as `cosign generate-key-pair` writes
// cosign.pub) for the signer name. It refuses other key types and sizes.
func ParseSigner(name string, pemKey []byte) (Signer, error) {
	if name == "" {
		return Signer{}, errors.New("a cosign signer needs a name")
	}
	k, err := cryptoutils.UnmarshalPEMToPublicKey(pemKey)
	if err != nil {
		return Signer{}, fmt.Errorf("signer %s: not a PEM public key: %w", name, err)
	}
	s := Signer{Name: name, Key: k}
	if err := s.check(); err != nil {
		return Signer{}, err
	}
	return s, nil
}

func (s Signer) check() error {
	switch k := s.Key.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return fmt.Errorf("signer %s: ECDSA keys must be P-256", s.Name)
		}
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return fmt.Errorf("signer %s: Ed25519 key of %d bytes", s.Name, len(k))
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("signer %s: RSA keys must have at least 2048 bits, not %d", s.Name, k.N.BitLen())
		}
	default:
		return fmt.Errorf("signer %s: key type %T is not supported (ECDSA P-256, Ed25519, RSA)", s.Name, s.Key)
	}
	return nil
}

// Limits bound what one verification reads. A zero field takes its default.
type Limits struct {
	ReferrersBytes int64         // a referrers index (API answer or tag): DefaultReferrersBytes
	Referrers      int           // entries of a referrers index: DefaultReferrers
	ManifestBytes  int64         // a signature manifest (a bundle's, the .sig tag's): DefaultManifestBytes
	LayerBytes     int64         // a bundle or simple-signing layer: DefaultLayerBytes
	Signatures     int           // signatures examined per digest: DefaultSignatures
	Timeout        time.Duration // one Verify, all its requests: DefaultTimeout
}

// The default limits. A cosign v3 bundle with a certificate chain and a
// tlog entry is a few KiB; a simple-signing payload under 1 KiB.
const (
	DefaultReferrersBytes = 1 << 20
	DefaultReferrers      = 1000
	DefaultManifestBytes  = 64 << 10
	DefaultLayerBytes     = 256 << 10
	DefaultSignatures     = 16
	DefaultTimeout        = 30 * time.Second
)

func (l Limits) withDefaults() Limits {
	def := func(v *int64, d int64) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.ReferrersBytes, DefaultReferrersBytes)
	def(&l.ManifestBytes, DefaultManifestBytes)
	def(&l.LayerBytes, DefaultLayerBytes)
	if l.Referrers <= 0 {
		l.Referrers = DefaultReferrers
	}
	if l.Signatures <= 0 {
		l.Signatures = DefaultSignatures
	}
	if l.Timeout <= 0 {
		l.Timeout = DefaultTimeout
	}
	return l
}

// Options are what a Verifier is compiled from: one rule's cosign source.
type Options struct {
	Signers []Signer
	// AllowNoTlog accepts signatures without a transparency-log entry (cosign
	// sign --tlog-upload=false). The rule must say so: without it, a
	// signature needs an entry that verifies against TrustedRoot's Rekor logs.
	AllowNoTlog bool
	// TrustedRoot holds the Rekor logs whose entries count (a trusted_root.json,
	// root.NewTrustedRootFromPath). Required unless AllowNoTlog.
	TrustedRoot root.TrustedMaterial
	Limits      Limits
}

// A Verifier answers, for one rule, whether a digest carries a cosign
// signature by one of its signers. It is compiled once (New) and safe for
// concurrent use.
type Verifier struct {
	signers []keyed
	tlog    bool // a verified transparency-log entry is required
	limits  Limits
}

// keyed is one signer compiled: its key ID as cosign and sigstore-go hint
// it, the verifier of legacy signatures, and sigstore-go's verifier whose
// trusted material is this signer's key alone (so that a success names it).
type keyed struct {
	Signer
	hint   string
	legacy signature.Verifier
	bundle *verify.Verifier // the signature alone
	tlog   *verify.Verifier // the signature and a transparency-log entry; nil under AllowNoTlog
}

// New compiles opts. It fails on a signer without a name, a duplicate
// name, an unsupported key, no signers, or no trusted root without
// AllowNoTlog.
func New(opts Options) (*Verifier, error) {
	if len(opts.Signers) == 0 {
		return nil, errors.New("cosign: a rule needs at least one signer")
	}
	if !opts.AllowNoTlog && opts.TrustedRoot == nil {
		return nil, errors.New("cosign: signatures must have a transparency-log entry, and no trusted root names the logs; give one, or set allow_no_tlog")
	}
	v := &Verifier{tlog: !opts.AllowNoTlog, limits: opts.Limits.withDefaults()}
	seen := map[string]bool{}
	for _, s := range opts.Signers {
		if s.Name == "" || seen[s.Name] {
			return nil, fmt.Errorf("cosign: signer name %q is empty or repeated", s.Name)
		}
		seen[s.Name] = true
		if err := s.check(); err != nil {
			return nil, fmt.Errorf("cosign: %w", err)
		}
		der, err := x509.MarshalPKIXPublicKey(s.Key)
		if err != nil {
			return nil, fmt.Errorf("cosign: signer %s: %w", s.Name, err)
		}
		sum := sha256.Sum256(der)
		legacy, err := signature.LoadVerifier(s.Key, crypto.SHA256)
		if err != nil {
			return nil, fmt.Errorf("cosign: signer %s: %w", s.Name, err)
		}
		// The bundle's hint is not trusted: this material answers with the
		// signer's key whatever the hint says, and the signature decides.
		key := root.NewExpiringKey(legacy, time.Time{}, time.Time{})
		material := root.TrustedMaterialCollection{root.NewTrustedPublicKeyMaterial(func(string) (root.TimeConstrainedVerifier, error) {
			return key, nil
		})}
		// Signatures are checked first without the log, so that a refusal
		// says which of key, signature or digest failed; the log after.
		sigOnly, err := verify.NewVerifier(material, verify.WithNoObserverTimestamps(), verify.WithoutStatementPredicate())
		if err != nil {
			return nil, fmt.Errorf("cosign: signer %s: %w", s.Name, err)
		}
		k := keyed{Signer: s, hint: base64.StdEncoding.EncodeToString(sum[:]), legacy: legacy, bundle: sigOnly}
		if v.tlog {
			k.tlog, err = verify.NewVerifier(append(material, opts.TrustedRoot),
				verify.WithTransparencyLog(1), verify.WithNoObserverTimestamps(), verify.WithoutStatementPredicate())
			if err != nil {
				return nil, fmt.Errorf("cosign: signer %s: %w", s.Name, err)
			}
		}
		v.signers = append(v.signers, k)
	}
	return v, nil
}

// Upstream is where a repository's signatures are read: the repository
// (its registry's scheme and host come from it) and the client that sends
// the requests with the caller's credentials, redirect and egress policy
// (an *http.Client, or internal/egress's Client.Do with its scope).
type Upstream struct {
	Repo   name.Repository
	Client Doer
}

// A Doer sends one request and follows redirects as its owner allows.
type Doer interface {
	Do(req *http.Request) (*http.Response, error)
}

// Format is the kind of cosign signature that verified.
type Format string

const (
	Bundle        Format = "bundle"         // a Sigstore bundle v0.3 referrer (cosign v3)
	SimpleSigning Format = "simple_signing" // a layer of the legacy sha256-<hex>.sig tag
)

// A Verdict is the answer for one digest: served with the signer's name
// when Reason is Verified, else refused with a Reason and a Detail.
type Verdict struct {
	Digest    digest.Digest
	Signer    string        // the signer whose key verified; "" on refusal
	Signature digest.Digest // the manifest that carried the signature that verified
	Format    Format
	Reason    Reason
	Detail    string // for a person; "" when verified
}

// Verify says whether dgst, in up's repository, carries a valid cosign
// signature by one of v's signers. On success the error is nil and the
// Verdict names the signer. A refusal comes back as the Verdict (Reason,
// Detail) and a *RefusalError with the same. Any other error is no
// verdict: the upstream could not be read (unreachable, 5xx, denied) or
// the time ran out, and the caller may retry.
func (v *Verifier) Verify(ctx context.Context, up Upstream, dgst digest.Digest) (Verdict, error) {
	if err := dgst.Validate(); err != nil || dgst.Algorithm() != digest.SHA256 {
		return v.refuse(up, Verdict{Digest: dgst}, &finding{reason: Malformed, detail: "the digest asked about is not a sha256 digest"})
	}
	ctx, cancel := context.WithTimeout(ctx, v.limits.Timeout)
	defer cancel()
	if up.Client == nil {
		return Verdict{}, errors.New("cosign: Verify needs an upstream client")
	}
	c := newClient(up, v.limits)
	j := &judgement{v: v, c: c, dgst: dgst}
	verdict, err := j.run(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return Verdict{}, fmt.Errorf("verify cosign signatures of %s@%s: %w (limit %s)", up.Repo, dgst, err, v.limits.Timeout)
		}
		return Verdict{}, fmt.Errorf("verify cosign signatures of %s@%s: %w", up.Repo, dgst, err)
	}
	if verdict.Reason != Verified {
		return v.refuse(up, verdict, nil)
	}
	return verdict, nil
}

func (v *Verifier) refuse(up Upstream, d Verdict, f *finding) (Verdict, error) {
	if f != nil {
		d.Reason, d.Detail = f.reason, f.detail
	}
	return d, &RefusalError{Repo: up.Repo.String(), Digest: d.Digest, Reason: d.Reason, Detail: d.Detail}
}
