package trust

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"slices"

	"github.com/theupdateframework/notary/tuf/data"
	"github.com/theupdateframework/notary/tuf/utils"
	"github.com/trustproxy/trustproxy/config"
)

// accept says whether a role whose metadata the keys signedBy signed passes
// rule r, and names who signed: r's signers that matched, or, when r names
// none, the signing key IDs. A signer name Load did not resolve into
// r.TrustedSigners matches nothing.
func accept(r *config.Rule, signedBy []data.PublicKey) ([]string, bool) {
	if len(r.Signers) == 0 {
		ids := make([]string, 0, len(signedBy))
		for _, k := range signedBy {
			ids = append(ids, k.ID())
		}
		slices.Sort(ids)
		return ids, len(ids) > 0
	}
	var names []string
	for _, s := range r.TrustedSigners {
		if slices.ContainsFunc(signedBy, func(k data.PublicKey) bool { return signerMatches(s, k) }) {
			names = append(names, s.Name)
		}
	}
	return names, len(names) > 0
}

// signerMatches says whether k is one of s's keys: by public key material (a
// delegation key is usually an x509 certificate: its public key counts), or
// by either form of TUF key ID (over the certificate, or over the bare key).
func signerMatches(s *config.Signer, k data.PublicKey) bool {
	if slices.Contains(s.KeyIDs, k.ID()) {
		return true
	}
	if id, err := utils.CanonicalKeyID(k); err == nil && slices.Contains(s.KeyIDs, id) {
		return true
	}
	if len(s.Keys) == 0 {
		return false
	}
	spki, err := keySPKI(k)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(s.Keys, func(b []byte) bool { return bytes.Equal(b, spki) })
}

// keySPKI returns the PKIX DER public key of a TUF key, extracting it from
// the certificate of an x509 key.
func keySPKI(k data.PublicKey) ([]byte, error) {
	var pub any
	switch k.Algorithm() {
	case data.ECDSAx509Key, data.RSAx509Key:
		cert, err := utils.LoadCertFromPEM(k.Public())
		if err != nil {
			return nil, err
		}
		pub = cert.PublicKey
	case data.ED25519Key:
		if len(k.Public()) != ed25519.PublicKeySize {
			return nil, errors.New("bad ed25519 key length")
		}
		pub = ed25519.PublicKey(k.Public())
	default:
		p, err := x509.ParsePKIXPublicKey(k.Public())
		if err != nil {
			return nil, err
		}
		pub = p
	}
	return x509.MarshalPKIXPublicKey(pub)
}
