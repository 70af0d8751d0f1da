package notation

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/notaryproject/notation-core-go/revocation"
	"github.com/notaryproject/notation-core-go/revocation/crl"
	"github.com/notaryproject/notation-core-go/revocation/purpose"
	notationgo "github.com/notaryproject/notation-go"
	"github.com/notaryproject/notation-go/verifier"
	"github.com/notaryproject/notation-go/verifier/trustpolicy"
	"github.com/notaryproject/notation-go/verifier/truststore"
	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/internal/referrers"
)

// A Signer is a named set of CA certificates and the identities under them
// whose Notation signatures a rule trusts.
type Signer struct {
	Name       string
	CAs        []*x509.Certificate // the trust store: CA (or self-signed) certificates
	Identities []string            // "x509.subject:<DN>" each, or the one "*"
}

// ParseSigner reads the PEM CA certificates (a Notation trust store's
// ca/<name> files, concatenated) and the trusted identities of the signer
// name. It refuses a file with no certificate or with other PEM blocks, a
// certificate that is neither a CA nor self-signed, and identities that
// notation-go's trust policy would refuse ("*" alone, or x509.subject
// distinguished names).
func ParseSigner(name string, pemCAs []byte, identities []string) (Signer, error) {
	if name == "" {
		return Signer{}, errors.New("a Notation signer needs a name")
	}
	var cas []*x509.Certificate
	for rest := pemCAs; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return Signer{}, fmt.Errorf("signer %s: a PEM block of type %q among the CA certificates", name, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return Signer{}, fmt.Errorf("signer %s: CA certificate %d: %w", name, len(cas)+1, err)
		}
		cas = append(cas, c)
	}
	s := Signer{Name: name, CAs: cas, Identities: identities}
	if _, err := s.policy(LevelStrict, false); err != nil {
		return Signer{}, err
	}
	return s, nil
}

// storeName is the one trust store of a signer's policy: each signer's
// verifier has its own policy and store, so the name need not differ.
const storeName = "signer"

// policy is s's trust policy document for notation-go, validated.
func (s Signer) policy(level Level, revoke bool) (*trustpolicy.Document, error) {
	if len(s.CAs) == 0 {
		return nil, fmt.Errorf("signer %s: no CA certificate (PEM CERTIFICATE blocks)", s.Name)
	}
	if err := truststore.ValidateCertificates(s.CAs); err != nil {
		return nil, fmt.Errorf("signer %s: %w", s.Name, err)
	}
	if len(s.Identities) == 0 {
		return nil, fmt.Errorf(`signer %s: no trusted identities: list x509.subject:<DN> identities, or "*" for any the CAs certify`, s.Name)
	}
	// Revocation is skipped when off and enforced when on, whatever the
	// level: permissive would only log a revoked certificate, and a signer
	// whose key its CA revoked would keep being served.
	revocation := trustpolicy.ActionSkip
	if revoke {
		revocation = trustpolicy.ActionEnforce
	}
	sv := trustpolicy.SignatureVerification{VerificationLevel: string(level),
		Override: map[trustpolicy.ValidationType]trustpolicy.ValidationAction{trustpolicy.TypeRevocation: revocation}}
	doc := &trustpolicy.Document{Version: "1.0", TrustPolicies: []trustpolicy.TrustPolicy{{
		Name:                  "trustproxy",
		RegistryScopes:        []string{"*"},
		SignatureVerification: sv,
		TrustStores:           []string{string(truststore.TypeCA) + ":" + storeName},
		TrustedIdentities:     s.Identities,
	}}}
	if err := doc.Validate(); err != nil {
		return nil, fmt.Errorf("signer %s: %w", s.Name, err)
	}
	return doc, nil
}

// store is a trust store of one signer's CA certificates, in memory.
type store []*x509.Certificate

func (s store) GetCertificates(_ context.Context, t truststore.Type, named string) ([]*x509.Certificate, error) {
	if t != truststore.TypeCA || named != storeName {
		return nil, truststore.TrustStoreError{Msg: fmt.Sprintf("no trust store %s:%s", t, named)}
	}
	return s, nil
}

// Level is a Notation verification level this package accepts.
type Level string

const (
	// LevelStrict enforces integrity, authenticity, expiry and the
	// authentic timestamp (a certificate valid at signing), and revocation
	// when it is on (as permissive does).
	LevelStrict Level = "strict"
	// LevelPermissive enforces integrity and authenticity; expiry and
	// timestamp failures are logged by notation-go and do not refuse.
	// Revocation, when on, is enforced at both levels.
	LevelPermissive Level = "permissive"
)

// ParseLevel reads a configured level: strict ("" too) or permissive.
// audit and skip are refused: they do not check authenticity.
func ParseLevel(s string) (Level, error) {
	switch s {
	case "", string(LevelStrict):
		return LevelStrict, nil
	case string(LevelPermissive):
		return LevelPermissive, nil
	case "audit", "skip":
		return "", fmt.Errorf("verification level %q does not check that a trusted signer signed; use strict or permissive (trustproxy's own audit mode serves refused images and logs them)", s)
	}
	return "", fmt.Errorf("verification level %q: want strict or permissive", s)
}

// Limits bound what one verification reads. A zero field takes its default.
type Limits struct {
	ReferrersBytes int64         // a referrers index (API answer or tag): DefaultReferrersBytes
	Referrers      int           // entries of a referrers index: DefaultReferrers
	ManifestBytes  int64         // a signature manifest: DefaultManifestBytes
	EnvelopeBytes  int64         // a JWS or COSE envelope: DefaultEnvelopeBytes
	Chain          int           // certificates of an envelope's chain: DefaultChain
	Signatures     int           // signatures examined per digest: DefaultSignatures
	Timeout        time.Duration // one Verify, all its requests and revocation checks: DefaultTimeout
}

// The default limits. A Notation envelope with a three-certificate chain
// is a few KiB.
const (
	DefaultReferrersBytes = 1 << 20
	DefaultReferrers      = 1000
	DefaultManifestBytes  = 64 << 10
	DefaultEnvelopeBytes  = 256 << 10
	DefaultChain          = 8
	DefaultSignatures     = 16
	DefaultTimeout        = 30 * time.Second
	// DefaultRevocationTimeout bounds one OCSP or CRL request.
	DefaultRevocationTimeout = 5 * time.Second
)

func (l Limits) withDefaults() Limits {
	def := func(v *int64, d int64) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.ReferrersBytes, DefaultReferrersBytes)
	def(&l.ManifestBytes, DefaultManifestBytes)
	def(&l.EnvelopeBytes, DefaultEnvelopeBytes)
	defInt := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defInt(&l.Referrers, DefaultReferrers)
	defInt(&l.Chain, DefaultChain)
	defInt(&l.Signatures, DefaultSignatures)
	if l.Timeout <= 0 {
		l.Timeout = DefaultTimeout
	}
	return l
}

// Options are what a Verifier is compiled from: one rule's Notation source.
type Options struct {
	Signers []Signer
	Level   Level // "" is LevelStrict
	// Revocation checks the chain's certificates by OCSP and CRL, over
	// RevocationClient. Off by default: it needs the CAs' responders on the
	// network at pull time, and a proxy that cannot reach them would refuse
	// (strict) every image.
	Revocation bool
	// RevocationClient sends OCSP and CRL requests; nil is a client with a
	// DefaultRevocationTimeout timeout.
	RevocationClient *http.Client
	Limits           Limits
}

// A Verifier answers, for one rule, whether a digest carries a Notation
// signature by one of its signers. It is compiled once (New) and safe for
// concurrent use.
type Verifier struct {
	signers []compiled
	limits  Limits
}

// compiled is one signer with its notation-go verifier.
type compiled struct {
	Signer
	v notationgo.Verifier
}

// New compiles opts. It fails on no signers, a signer without a name, a
// repeated name, a signer notation-go's trust policy refuses, or a level
// other than strict and permissive.
func New(opts Options) (*Verifier, error) {
	if len(opts.Signers) == 0 {
		return nil, errors.New("notation: a rule needs at least one signer")
	}
	level, err := ParseLevel(string(opts.Level))
	if err != nil {
		return nil, fmt.Errorf("notation: %w", err)
	}
	vo := verifier.VerifierOptions{}
	if opts.Revocation {
		hc := opts.RevocationClient
		if hc == nil {
			hc = &http.Client{Timeout: DefaultRevocationTimeout}
		}
		fetcher, err := crl.NewHTTPFetcher(hc)
		if err != nil {
			return nil, fmt.Errorf("notation: revocation: %w", err)
		}
		fetcher.Cache = newCRLCache()
		for _, p := range []struct {
			v *revocation.Validator
			p purpose.Purpose
		}{{&vo.RevocationCodeSigningValidator, purpose.CodeSigning}, {&vo.RevocationTimestampingValidator, purpose.Timestamping}} {
			if *p.v, err = revocation.NewWithOptions(revocation.Options{OCSPHTTPClient: hc, CRLFetcher: fetcher, CertChainPurpose: p.p}); err != nil {
				return nil, fmt.Errorf("notation: revocation: %w", err)
			}
		}
	}
	v := &Verifier{limits: opts.Limits.withDefaults()}
	seen := map[string]bool{}
	for _, s := range opts.Signers {
		if s.Name == "" || seen[s.Name] {
			return nil, fmt.Errorf("notation: signer name %q is empty or repeated", s.Name)
		}
		seen[s.Name] = true
		doc, err := s.policy(level, opts.Revocation)
		if err != nil {
			return nil, fmt.Errorf("notation: %w", err)
		}
		nv, err := verifier.NewWithOptions(doc, store(s.CAs), nil, vo)
		if err != nil {
			return nil, fmt.Errorf("notation: signer %s: %w", s.Name, err)
		}
		v.signers = append(v.signers, compiled{Signer: s, v: nv})
	}
	return v, nil
}

// Upstream is where a repository's signatures are read: the repository
// (its registry's scheme and host come from it) and the client that sends
// the requests with the caller's credentials, redirect and egress policy.
type Upstream struct {
	Repo   name.Repository
	Client referrers.Doer
}

// A Verdict is the answer for one digest: served with the signer's name
// when Reason is Verified, else refused with a Reason and a Detail.
type Verdict struct {
	Digest    digest.Digest
	Signer    string        // the signer whose CA and identities verified; "" on refusal
	Signature digest.Digest // the signature manifest that verified
	Reason    Reason
	Detail    string // for a person; "" when verified
}

// Verify says whether dgst, in up's repository, carries a valid Notation
// signature by one of v's signers. On success the error is nil and the
// Verdict names the signer. A refusal comes back as the Verdict (Reason,
// Detail) and a *RefusalError with the same. Any other error is no
// verdict: the upstream could not be read (unreachable, 5xx, denied) or
// the time ran out, and the caller may retry.
func (v *Verifier) Verify(ctx context.Context, up Upstream, dgst digest.Digest) (Verdict, error) {
	if !referrers.ValidDigest(dgst) {
		return v.refuse(up, Verdict{Digest: dgst}, refusal(Malformed, "the digest asked about is not a sha256 digest"))
	}
	if up.Client == nil {
		return Verdict{}, errors.New("notation: Verify needs an upstream client")
	}
	ctx, cancel := context.WithTimeout(ctx, v.limits.Timeout)
	defer cancel()
	j := &judgement{v: v, up: up, repo: referrers.Repository{Scheme: up.Repo.Scheme(), Host: up.Repo.RegistryStr(), Path: up.Repo.RepositoryStr()}, dgst: dgst}
	verdict, err := j.run(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return Verdict{}, fmt.Errorf("verify Notation signatures of %s@%s: %w (limit %s)", up.Repo, dgst, err, v.limits.Timeout)
		}
		return Verdict{}, fmt.Errorf("verify Notation signatures of %s@%s: %w", up.Repo, dgst, err)
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
