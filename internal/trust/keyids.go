package trust

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/theupdateframework/notary/tuf/data"
	"github.com/theupdateframework/notary/tuf/utils"
)

// KeyID is one key of a PEM file (a signer's public_key, a root
// certificate) under the two IDs TUF gives it.
type KeyID struct {
	// Certificate is the ID over the certificate, the form targets.json
	// lists for a delegation key added from a certificate and the form
	// trust.pinning.certs pins a root by; "" for a bare public key.
	Certificate string
	// Key is the ID over the bare public key, the form `notary key list`
	// shows (and targets.json lists for a key added as a bare key).
	Key string
	// Expires is the certificate's end of validity; zero for a bare key.
	Expires time.Time
}

// KeyIDs returns the key of every PEM block of b (CERTIFICATE or PUBLIC
// KEY, as `docker trust key generate` writes it), in order. A certificate
// is read whatever its dates, so that an expired one can still be named.
func KeyIDs(b []byte) ([]KeyID, error) {
	var out []KeyID
	for n := 1; ; n++ {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		var k data.PublicKey
		var id KeyID
		switch block.Type {
		case "CERTIFICATE":
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("PEM block %d: %w", n, err)
			}
			k = utils.CertToKey(cert)
			if k == nil {
				return nil, fmt.Errorf("PEM block %d: a certificate of a key type TUF does not use (ECDSA or RSA)", n)
			}
			id.Certificate, id.Expires = k.ID(), cert.NotAfter
		case "PUBLIC KEY":
			var err error
			if k, err = utils.ParsePEMPublicKey(pem.EncodeToMemory(block)); err != nil {
				return nil, fmt.Errorf("PEM block %d: %w", n, err)
			}
		default:
			return nil, fmt.Errorf("PEM block %d is a %s, not a CERTIFICATE or PUBLIC KEY", n, block.Type)
		}
		bare, err := utils.CanonicalKeyID(k)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d: %w", n, err)
		}
		id.Key = bare
		out = append(out, id)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM block: want a certificate or a public key in PEM form")
	}
	return out, nil
}
