package trust

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"testing"

	"github.com/theupdateframework/notary/tuf/data"
	"github.com/trustproxy/trustproxy/config"
)

func TestSignerMatchesBareKey(t *testing.T) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	s := &config.Signer{Name: "a", Keys: [][]byte{der}}
	if !signerMatches(s, data.NewECDSAPublicKey(der)) {
		t.Error("bare ECDSA TUF key does not match its own public key")
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherDER, _ := x509.MarshalPKIXPublicKey(&other.PublicKey)
	if signerMatches(s, data.NewECDSAPublicKey(otherDER)) {
		t.Error("another key matches")
	}
}

// TestAcceptUnresolvedSigner: a rule that names signers accepts nothing
// unless they were resolved into TrustedSigners (by config.Load), never
// any signature.
func TestAcceptUnresolvedSigner(t *testing.T) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	k := data.NewECDSAPublicKey(der)
	alice := &config.Signer{Name: "alice", Keys: [][]byte{der}}
	tests := []struct {
		name string
		rule config.Rule
		want bool
	}{
		{"no signers named", config.Rule{}, true},
		{"signer resolved", config.Rule{Signers: []string{"alice"}, TrustedSigners: []*config.Signer{alice}}, true},
		{"signer not resolved", config.Rule{Signers: []string{"alice"}}, false},
	}
	for _, tt := range tests {
		if _, ok := accept(&tt.rule, []data.PublicKey{k}); ok != tt.want {
			t.Errorf("%s: accept = %v, want %v", tt.name, ok, tt.want)
		}
	}
}

func FuzzKeySPKI(f *testing.F) {
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	f.Add(data.ECDSAKey, der)
	f.Add(data.ECDSAx509Key, []byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"))
	f.Add(data.ED25519Key, make([]byte, 32))
	f.Fuzz(func(t *testing.T, alg string, pub []byte) {
		keySPKI(data.NewPublicKey(alg, pub))
	})
}
