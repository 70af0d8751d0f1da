package trust

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"testing"

	"github.com/theupdateframework/notary/tuf/data"
	"github.com/trustproxy/trustproxy/config"
)

func TestCompileRejects(t *testing.T) {
	tests := []struct {
		name string
		cfg  config.Trust
	}{
		{"unknown signer", config.Trust{Rules: []config.Rule{{Repositories: "**", Signers: []string{"nobody"}}}}},
		{"signer without key", config.Trust{Signers: []config.Signer{{Name: "a"}}}},
		{"signer with bad PEM", config.Trust{Signers: []config.Signer{{Name: "a", PEM: []byte("not pem")}}}},
		{"signer with private key", config.Trust{Signers: []config.Signer{{Name: "a", PEM: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte{1}})}}}},
	}
	for _, tt := range tests {
		if _, err := compile(tt.cfg); err == nil {
			t.Errorf("%s: compile succeeded", tt.name)
		}
	}
}

func TestSignerMatchesBareKey(t *testing.T) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	keys, err := parseSignerPEM(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	s := &signer{name: "a", spki: keys, ids: map[string]bool{}}
	if !s.matches(data.NewECDSAPublicKey(der)) {
		t.Error("bare ECDSA TUF key does not match its own PEM")
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherDER, _ := x509.MarshalPKIXPublicKey(&other.PublicKey)
	if s.matches(data.NewECDSAPublicKey(otherDER)) {
		t.Error("another key matches")
	}
}

func FuzzParseSignerPEM(f *testing.F) {
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		keys, err := parseSignerPEM(b)
		if err == nil && len(keys) == 0 {
			t.Fatal("no error and no keys")
		}
	})
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
