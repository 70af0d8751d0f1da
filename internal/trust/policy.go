package trust

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/theupdateframework/notary/tuf/data"
	"github.com/theupdateframework/notary/tuf/utils"
	"github.com/trustproxy/trustproxy/config"
)

// signer is a trusted signer compiled from config: its public keys (PKIX DER)
// and the key IDs it may appear under.
type signer struct {
	name string
	spki [][]byte
	ids  map[string]bool
}

// rule is a config.Rule compiled once.
type rule struct {
	config.Rule
	roles   []string
	signers []*signer // empty: any valid signature of the role counts
}

// policy is the compiled trust policy.
type policy struct {
	rules []*rule
}

func compile(t config.Trust) (*policy, error) {
	signers := map[string]*signer{}
	for _, s := range t.Signers {
		if s.Name == "" {
			return nil, errors.New("trust.signers: a signer has no name")
		}
		c := &signer{name: s.Name, ids: map[string]bool{}}
		for _, id := range s.KeyIDs {
			c.ids[strings.ToLower(id)] = true
		}
		if len(s.PEM) > 0 {
			keys, err := parseSignerPEM(s.PEM)
			if err != nil {
				return nil, fmt.Errorf("trust.signers %s: %s: %w", s.Name, s.PublicKey, err)
			}
			c.spki = keys
		}
		if len(c.spki) == 0 && len(c.ids) == 0 {
			return nil, fmt.Errorf("trust.signers %s: needs public_key or key_ids", s.Name)
		}
		signers[s.Name] = c
	}
	p := &policy{}
	for i, r := range t.Rules {
		c := &rule{Rule: r, roles: r.Roles}
		for _, name := range r.Signers {
			s, ok := signers[name]
			if !ok {
				return nil, fmt.Errorf("trust.rules[%d]: signer %q is not in trust.signers", i, name)
			}
			c.signers = append(c.signers, s)
		}
		p.rules = append(p.rules, c)
	}
	return p, nil
}

// ruleFor returns the first rule whose pattern matches gun (as
// config.Config.RuleFor), or nil.
func (p *policy) ruleFor(gun string) *rule {
	for _, r := range p.rules {
		if r.Matches(gun) {
			return r
		}
	}
	return nil
}

// accept says whether a role whose metadata the keys signedBy signed passes
// the rule, and names who signed: the rule's signers that matched, or, when
// the rule names none, the signing key IDs.
func (r *rule) accept(signedBy []data.PublicKey) ([]string, bool) {
	if len(r.signers) == 0 {
		ids := make([]string, 0, len(signedBy))
		for _, k := range signedBy {
			ids = append(ids, k.ID())
		}
		slices.Sort(ids)
		return ids, len(ids) > 0
	}
	var names []string
	for _, s := range r.signers {
		if slices.ContainsFunc(signedBy, s.matches) {
			names = append(names, s.name)
		}
	}
	return names, len(names) > 0
}

// matches says whether k is one of s's keys: by public key material (a
// delegation key is usually an x509 certificate: its public key counts), or
// by either form of TUF key ID (over the certificate, or over the bare key).
func (s *signer) matches(k data.PublicKey) bool {
	if s.ids[k.ID()] {
		return true
	}
	if id, err := utils.CanonicalKeyID(k); err == nil && s.ids[id] {
		return true
	}
	spki, err := keySPKI(k)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(s.spki, func(b []byte) bool { return bytes.Equal(b, spki) })
}

// parseSignerPEM returns the PKIX DER public key of every block in b: a
// PUBLIC KEY or a CERTIFICATE. Any other block, or none, is an error.
func parseSignerPEM(b []byte) ([][]byte, error) {
	var out [][]byte
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		var pub any
		var err error
		switch block.Type {
		case "PUBLIC KEY":
			pub, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				pub = cert.PublicKey
			}
		default:
			return nil, fmt.Errorf("PEM block %q is not a PUBLIC KEY or CERTIFICATE", block.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", block.Type, err)
		}
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return nil, err
		}
		out = append(out, der)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM PUBLIC KEY or CERTIFICATE found")
	}
	return out, nil
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
