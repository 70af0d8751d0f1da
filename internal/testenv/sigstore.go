package testenv

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-openapi/runtime"
	"github.com/opencontainers/go-digest"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	protodsse "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	protorekor "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"github.com/sigstore/rekor/pkg/generated/models"
	"github.com/sigstore/rekor/pkg/pki"
	"github.com/sigstore/rekor/pkg/types"
	rekordsse "github.com/sigstore/rekor/pkg/types/dsse"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	"github.com/sigstore/sigstore-go/pkg/tlog"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	sigdsse "github.com/sigstore/sigstore/pkg/signature/dsse"
	"google.golang.org/protobuf/encoding/protojson"
)

// A TestSigstore is a Fulcio-style certificate authority and a Rekor log
// made for a test, offline: it issues short-lived certificates for an
// identity and issuer (the email SAN and the OIDC issuer extension, as
// Fulcio does), signs cosign bundles with them, and logs them with an
// inclusion proof and a signed entry timestamp, as cosign v3 with Fulcio
// and Rekor writes them. RootFile is a trusted_root.json naming its CA and
// its log (what `cosign trusted-root create` writes), for
// trust.cosign.trusted_root. The log is sigstore-go's VirtualSigstore's.
type TestSigstore struct {
	RootFile string
	Root     *root.TrustedRoot

	log       *ca.VirtualSigstore
	caInter   *x509.Certificate
	caInterPK *ecdsa.PrivateKey
}

// NewTestSigstore makes a CA and a log and writes their trusted root under
// t's temporary directory.
func NewTestSigstore(t testing.TB) *TestSigstore {
	t.Helper()
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	rootCert, rootKey, err := ca.GenerateRootCa()
	if err != nil {
		t.Fatal(err)
	}
	// The intermediate sigstore-go makes is valid from two minutes ago;
	// this one from four hours ago, so that a test can sign in the past.
	interKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "trustproxy test fulcio intermediate"},
		NotBefore: time.Now().Add(-4 * time.Hour), NotAfter: time.Now().Add(4 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		BasicConstraintsValid: true, IsCA: true,
	}, rootCert, interKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	s := &TestSigstore{log: vs, caInter: inter, caInterPK: interKey}
	fulcio := &root.FulcioCertificateAuthority{Root: rootCert, Intermediates: []*x509.Certificate{inter},
		ValidityPeriodStart: time.Now().Add(-4 * time.Hour), URI: "https://fulcio.test"}
	// The log as a trusted_root.json names it: its ID is the SHA-256 of its
	// key's DER (VirtualSigstore's RekorLogs gives the hex of it instead,
	// which does not survive the JSON form).
	logs := map[string]*root.TransparencyLog{}
	for id, l := range vs.RekorLogs() {
		raw, err := hex.DecodeString(id)
		if err != nil {
			t.Fatal(err)
		}
		l.ID, l.ValidityPeriodStart, l.ValidityPeriodEnd = raw, time.Now().Add(-4*time.Hour), time.Time{}
		logs[id] = l
	}
	tr, err := root.NewTrustedRoot(root.TrustedRootMediaType01, []root.CertificateAuthority{fulcio}, nil, nil, logs)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(tr)
	if err != nil {
		t.Fatal(err)
	}
	s.RootFile = filepath.Join(t.TempDir(), "trusted_root.json")
	if err := os.WriteFile(s.RootFile, b, 0o644); err != nil {
		t.Fatal(err)
	}
	// Root is the file read back, as trustproxy reads it.
	if s.Root, err = root.NewTrustedRootFromPath(s.RootFile); err != nil {
		t.Fatal(err)
	}
	return s
}

// Keyless says how a keyless bundle is made. The zero value is what cosign
// v3 writes now: a certificate valid from a minute ago for ten minutes,
// logged now, with an inclusion proof.
type Keyless struct {
	Issued           time.Time // the certificate's NotBefore; it is valid for ten minutes
	Logged           time.Time // the log entry's integrated time; default Issued + 1m
	NoInclusionProof bool      // the entry carries its signed timestamp only
	NoTlog           bool      // no log entry at all
}

// KeylessBundle signs subject of repo as cosign v3 does with a Fulcio
// certificate for identity (the email SAN) and issuer (the OIDC issuer
// extension): a Sigstore bundle v0.3 holding the certificate, a DSSE
// envelope of the cosign statement, and its Rekor entry.
func (s *TestSigstore) KeylessBundle(t testing.TB, repo string, subject digest.Digest, identity, issuer string, o Keyless) []byte {
	t.Helper()
	if o.Issued.IsZero() {
		o.Issued = time.Now().Add(-time.Minute).Truncate(time.Second)
	}
	if o.Logged.IsZero() {
		o.Logged = o.Issued.Add(time.Minute)
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.GenerateLeafCert(identity, issuer, o.Issued, leafKey, s.caInter, s.caInterPK)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := signature.LoadECDSASignerVerifier(leafKey, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	env := dsseSign(t, signer, leafKey.Public(), CosignStatement(repo, subject, cosignSignPredicate))
	certPEM, err := cryptoutils.MarshalCertificateToPEM(leaf)
	if err != nil {
		t.Fatal(err)
	}
	pb := &protobundle.Bundle{
		MediaType: cosignBundleType,
		VerificationMaterial: &protobundle.VerificationMaterial{
			Content: &protobundle.VerificationMaterial_Certificate{Certificate: &protocommon.X509Certificate{RawBytes: leaf.Raw}},
		},
		Content: &protobundle.Bundle_DsseEnvelope{DsseEnvelope: env},
	}
	if !o.NoTlog {
		pb.VerificationMaterial.TlogEntries = []*protorekor.TransparencyLogEntry{s.logEntry(t, env, certPEM, o.Logged, !o.NoInclusionProof)}
	}
	b, err := protojson.Marshal(pb)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Logged adds to bundle, a keyed bundle k signed (CosignKey.Bundle), its
// Rekor entry integrated now with an inclusion proof: what cosign v3 signs
// with a key and uploads to the log.
func (s *TestSigstore) Logged(t testing.TB, bundle []byte, k *CosignKey) []byte {
	t.Helper()
	var pb protobundle.Bundle
	if err := protojson.Unmarshal(bundle, &pb); err != nil {
		t.Fatal(err)
	}
	pub, err := cryptoutils.MarshalPublicKeyToPEM(k.priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	pb.VerificationMaterial.TlogEntries = append(pb.VerificationMaterial.TlogEntries,
		s.logEntry(t, pb.GetDsseEnvelope(), pub, time.Now().Truncate(time.Second), true))
	b, err := protojson.Marshal(&pb)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// CosignStatement is the in-toto statement cosign v3 signs for an image
// (predicateType https://sigstore.dev/cosign/sign/v1), or of another
// predicate type (an attestation).
func CosignStatement(repo string, subject digest.Digest, predicateType string) []byte {
	b, _ := json.Marshal(map[string]any{
		"_type":         "https://in-toto.io/Statement/v1",
		"subject":       []any{map[string]any{"name": repo, "digest": map[string]string{"sha256": subject.Encoded()}}},
		"predicateType": predicateType,
		"predicate":     map[string]any{},
	})
	return b
}

// dsseSign signs payload as an in-toto DSSE envelope, in the bundle's form.
func dsseSign(t testing.TB, s signature.Signer, pub crypto.PublicKey, payload []byte) *protodsse.Envelope {
	t.Helper()
	es, err := dsse.NewEnvelopeSigner(&sigdsse.SignerAdapter{SignatureSigner: s, Pub: pub})
	if err != nil {
		t.Fatal(err)
	}
	env, err := es.SignPayload(context.Background(), "application/vnd.in-toto+json", payload)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := base64.StdEncoding.DecodeString(env.Signatures[0].Sig)
	if err != nil {
		t.Fatal(err)
	}
	return &protodsse.Envelope{Payload: payload, PayloadType: env.PayloadType, Signatures: []*protodsse.Signature{{Sig: sig}}}
}

// logEntry is env's Rekor dsse v0.0.1 entry, verified by verifierPEM (a
// certificate or a public key), with the log's signed entry timestamp and,
// when proof, an inclusion proof under a checkpoint the log signed.
func (s *TestSigstore) logEntry(t testing.TB, env *protodsse.Envelope, verifierPEM []byte, at time.Time, proof bool) *protorekor.TransparencyLogEntry {
	t.Helper()
	ctx := context.Background()
	envJSON, err := json.Marshal(dsse.Envelope{PayloadType: env.PayloadType, Payload: base64.StdEncoding.EncodeToString(env.Payload),
		Signatures: []dsse.Signature{{Sig: base64.StdEncoding.EncodeToString(env.Signatures[0].Sig)}}})
	if err != nil {
		t.Fatal(err)
	}
	pe, err := types.NewProposedEntry(ctx, rekordsse.KIND, rekordsse.New().DefaultVersion(), types.ArtifactProperties{
		ArtifactBytes: envJSON, PublicKeyBytes: [][]byte{verifierPEM}, PKIFormat: string(pki.X509)})
	if err != nil {
		t.Fatal(err)
	}
	impl, err := types.CreateVersionedEntry(pe)
	if err != nil {
		t.Fatal(err)
	}
	can, err := types.CanonicalizeEntry(ctx, impl)
	if err != nil {
		t.Fatal(err)
	}
	// What the log stores is the canonical form of the entry as it reads it back.
	back, err := models.UnmarshalProposedEntry(bytes.NewReader(can), runtime.JSONConsumer())
	if err != nil {
		t.Fatal(err)
	}
	stored, err := types.UnmarshalEntry(back)
	if err != nil {
		t.Fatal(err)
	}
	body, err := stored.Canonicalize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	logID, err := s.log.RekorLogID()
	if err != nil {
		t.Fatal(err)
	}
	set, err := s.log.RekorSignPayload(tlog.RekorPayload{LogID: logID, IntegratedTime: at.Unix(), LogIndex: 0,
		Body: base64.StdEncoding.EncodeToString(body)})
	if err != nil {
		t.Fatal(err)
	}
	var incl *models.InclusionProof
	if proof {
		if incl, err = s.log.GetInclusionProof(body); err != nil {
			t.Fatal(err)
		}
	}
	rawID, err := hex.DecodeString(logID)
	if err != nil {
		t.Fatal(err)
	}
	e, err := tlog.NewEntry(body, at.Unix(), 0, rawID, set, incl) //nolint:staticcheck // the v1 entry cosign v3 writes
	if err != nil {
		t.Fatal(err)
	}
	tle := e.TransparencyLogEntry()
	tle.KindVersion = &protorekor.KindVersion{Kind: rekordsse.KIND, Version: rekordsse.New().DefaultVersion()}
	tle.InclusionPromise = &protorekor.InclusionPromise{SignedEntryTimestamp: set}
	return tle
}

// KeylessSign signs the manifest dgst of repo at r keylessly with s, for
// identity and issuer, and attaches the bundle as cosign v3 does.
func (r *Registry) KeylessSign(t testing.TB, repo string, dgst digest.Digest, s *TestSigstore, identity, issuer string, o Keyless) {
	t.Helper()
	r.CosignAttach(t, repo, dgst, s.KeylessBundle(t, r.Host()+"/"+repo, dgst, identity, issuer, o))
}
