package trust

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/opencontainers/go-digest"
	"github.com/theupdateframework/notary/trustpinning"
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

// TestPinStampAsBefore: the stamp a GUN's metadata cache is opened with is
// the one earlier versions wrote, from pins config.Load compiled, so that an
// upgrade does not have every cached root checked again; and notary is
// handed the pins that apply to the GUN.
func TestPinStampAsBefore(t *testing.T) {
	dir := t.TempDir()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	a, b := filepath.Join(dir, "a.pem"), filepath.Join(dir, "b.pem")
	for _, f := range []string{a, b} {
		if err := os.WriteFile(f, caPEM, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	id1, id2 := strings.Repeat("1", 64), strings.Repeat("2", 64)
	gun := "reg.example:5443/team/app"
	cfg, err := config.Load(strings.NewReader("trust:\n  pinning:\n    certs:\n      "+gun+": ["+id2+", "+id1+"]\n"+
		"    ca:\n      reg.example:5443/team/: "+b+"\n      reg.example:5443/: "+a+"\n      docker.io/: "+a+"\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	v := &Verifier{}
	v.settings.Store(&settings{pinning: &cfg.Trust.Pinning})
	sum := digest.FromBytes(caPEM).String()

	got := v.anchorOf(gun, &config.Rule{})
	want := "tofu false\n" +
		"ca reg.example:5443/ " + a + " " + sum + "\n" +
		"ca reg.example:5443/team/ " + b + " " + sum + "\n" +
		"certs " + gun + " " + id1 + "," + id2 + "\n"
	if got.stamp != want {
		t.Errorf("stamp of %s:\n%s\nwant\n%s", gun, got.stamp, want)
	}
	wantPins := trustpinning.TrustPinConfig{
		Certs:       map[string][]string{gun: {id1, id2}},
		CA:          map[string]string{"reg.example:5443/": a, "reg.example:5443/team/": b},
		DisableTOFU: true,
	}
	if diff := cmp.Diff(wantPins, trustPinning(gun, got.pins, false)); diff != "" {
		t.Errorf("notary's pins for %s (-want +got):\n%s", gun, diff)
	}

	free := v.anchorOf("quay.io/team/app", &config.Rule{TOFU: true})
	if free.stamp != "tofu true\n\n" || free.pins.Pinned() {
		t.Errorf("unpinned GUN: stamp %q, pins %+v", free.stamp, free.pins)
	}
	if diff := cmp.Diff(trustpinning.TrustPinConfig{}, trustPinning("quay.io/team/app", free.pins, true)); diff != "" {
		t.Errorf("notary's pins for an unpinned GUN (-want +got):\n%s", diff)
	}
}
