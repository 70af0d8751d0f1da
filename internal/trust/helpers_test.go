package trust

import (
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"

	"github.com/theupdateframework/notary/tuf/data"
	"github.com/theupdateframework/notary/tuf/utils"
)

func pemCert(c *x509.Certificate) []byte { return utils.CertToPEM(c) }

func canonicalID(k data.PublicKey) (string, error) { return utils.CanonicalKeyID(k) }

func fmtSscanRoot(role string, n *int) (int, error) {
	var rest string
	c, err := fmt.Sscanf(role, "%d.%s", n, &rest)
	if err == nil && rest != "root" {
		err = fmt.Errorf("not a versioned root")
	}
	return c, err
}

func writeFile(p string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	return os.WriteFile(p, b, 0o600)
}
