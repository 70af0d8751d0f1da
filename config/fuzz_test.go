package config

import (
	"bytes"
	"crypto/x509"
	"os"
	"strings"
	"testing"
)

// FuzzLoad checks that no input makes Load panic, errors are fine, and that
// what Load returns is compiled: rules indexed, their signers resolved.
func FuzzLoad(f *testing.F) {
	example, err := os.ReadFile("trustproxy.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(defaultYAML)
	f.Add(example)
	f.Add([]byte("storage:\n  filesystem:\ntrust:\n  rules:\n    - repositories: docker.io/[/**\n      mode: audit\n"))
	f.Add([]byte("trust:\n  signers:\n    - name: ci\n      key_ids: [" + string(bytes.Repeat([]byte("a"), 64)) + "]\n  rules:\n    - repositories: docker.io/library/*\n      signers: [ci]\n    - repositories: '**'\n"))
	f.Add([]byte("trust:\n  pinning:\n    certs:\n      docker.io/library/alpine: [" + string(bytes.Repeat([]byte("b"), 64)) + "]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Load(bytes.NewReader(b), nil)
		if err != nil {
			return
		}
		for i := range c.Trust.Rules {
			r := &c.Trust.Rules[i]
			if r.Index != i || len(r.TrustedSigners) != len(r.Signers) {
				t.Fatalf("trust.rules[%d]: Index %d, %d trusted signers for %d names", i, r.Index, len(r.TrustedSigners), len(r.Signers))
			}
		}
		if r := c.Trust.RuleFor("docker.io/library/alpine"); r != nil && !r.Matches("docker.io/library/alpine") {
			t.Fatalf("RuleFor gave trust.rules[%d], which does not match", r.Index)
		}
		for _, gun := range []string{"docker.io/library/alpine", "registry.example.com:5443/team/app"} {
			pins := c.Trust.Pinning.For(gun)
			if ids := c.Trust.Pinning.Certs[gun]; len(pins.CertIDs) != len(ids) {
				t.Fatalf("For(%s) gave %d certificate IDs, trust.pinning.certs lists %d", gun, len(pins.CertIDs), len(ids))
			}
			n := 0
			for prefix := range c.Trust.Pinning.CA {
				if strings.HasPrefix(gun, prefix) {
					n++
				}
			}
			if len(pins.CAs) != n {
				t.Fatalf("For(%s) gave %d CAs, %d prefixes of trust.pinning.ca start it", gun, len(pins.CAs), n)
			}
		}
	})
}

// FuzzParsePublicKeys checks that signer key files never panic the parser
// and that what it accepts is a list of PKIX public keys.
func FuzzParsePublicKeys(f *testing.F) {
	c := newCert(f)
	f.Add(c.pub)
	f.Add(c.cert)
	f.Add(append(append([]byte{}, c.pub...), c.cert...))
	f.Add(c.key)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		keys, err := parsePublicKeys("key.pem", b)
		if err == nil && len(keys) == 0 {
			t.Fatal("no error and no keys")
		}
		for _, k := range keys {
			if _, err := x509.ParsePKIXPublicKey(k); err != nil {
				t.Fatalf("accepted key does not parse: %v", err)
			}
		}
	})
}
