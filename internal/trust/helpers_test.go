package trust

import (
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/trustproxy/trustproxy/internal/cache"

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

// cacheFile is the path of testGUN's role in the trust cache under dataDir.
func cacheFile(t *testing.T, dataDir, role string) string {
	t.Helper()
	m, err := cache.NewMetadataStore(filepath.Join(dataDir, "trust"), nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := m.For(testGUN, "").File(role)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func writeFile(p string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	return os.WriteFile(p, b, 0o600)
}
