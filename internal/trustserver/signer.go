package trustserver

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"

	"github.com/theupdateframework/notary"
	"github.com/theupdateframework/notary/cryptoservice"
	"github.com/theupdateframework/notary/tuf/data"
	"github.com/theupdateframework/notary/tuf/utils"
)

// certValidity is how long generated certificates are valid, as notary's
// client makes root certificates.
const certValidity = 10 * notary.Year

// A Signer is a delegation signer: an ECDSA P-256 key with a self-signed x509
// certificate whose CN is its name, as made with openssl for
// `notary delegation add` or `docker trust signer add`. Operators configure
// trusted signers with its public key or certificate.
type Signer struct {
	name    string
	priv    data.PrivateKey
	cert    *x509.Certificate
	key     data.PublicKey // the certificate as a TUF key, as delegations hold it
	pubPEM  []byte
	certPEM []byte
}

// NewSigner generates a Signer called name, with a certificate valid from now
// for ten years.
func NewSigner(name string) (*Signer, error) {
	priv, err := utils.GenerateECDSAKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key for signer %s: %w", name, err)
	}
	return newSigner(name, priv)
}

func newSigner(name string, priv data.PrivateKey) (*Signer, error) {
	now := time.Now()
	cert, err := cryptoservice.GenerateCertificate(priv, data.GUN(name), now, now.Add(certValidity))
	if err != nil {
		return nil, fmt.Errorf("certificate for signer %s: %w", name, err)
	}
	der, err := x509.MarshalPKIXPublicKey(cert.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("public key of signer %s: %w", name, err)
	}
	return &Signer{
		name:    name,
		priv:    priv,
		cert:    cert,
		key:     utils.CertToKey(cert),
		pubPEM:  pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		certPEM: utils.CertToPEM(cert),
	}, nil
}

// Name returns the signer's name, the CN of its certificate.
func (s *Signer) Name() string { return s.name }

// KeyID returns the ID of the signer's certificate key: the ID delegations
// list in targets.json and signatures name.
func (s *Signer) KeyID() string { return s.key.ID() }

// PublicKeyID returns the ID of the signer's bare public key, the one
// `notary key list` shows. It differs from KeyID.
func (s *Signer) PublicKeyID() string { return s.priv.ID() }

// PublicKeyPEM returns the signer's public key as a PKIX "PUBLIC KEY" PEM block.
func (s *Signer) PublicKeyPEM() []byte { return clone(s.pubPEM) }

// CertificatePEM returns the signer's self-signed certificate as a PEM block.
func (s *Signer) CertificatePEM() []byte { return clone(s.certPEM) }

func clone(b []byte) []byte { return append([]byte(nil), b...) }
