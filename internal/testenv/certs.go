package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// testCA is a throwaway certificate authority and one serving certificate it signed for
// 127.0.0.1, ::1 and localhost, all written as PEM into a test's folder.
type testCA struct {
	CertFile string // CA certificate
	Pool     *x509.CertPool
	Server   tls.Certificate

	ServerCertFile, ServerKeyFile string
}

func newTestCA(t testing.TB, dir string) *testCA {
	t.Helper()
	caKey := newECKey(t)
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: "trustproxy testenv CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatalf("create CA certificate: %v", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatalf("parse CA certificate: %v", err)
	}

	srvKey := newECKey(t)
	srvTmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:     []string{"localhost"},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatalf("create server certificate: %v", err)
	}

	ca := &testCA{
		CertFile:       filepath.Join(dir, "ca.pem"),
		ServerCertFile: filepath.Join(dir, "server.crt"),
		ServerKeyFile:  filepath.Join(dir, "server.key"),
		Pool:           x509.NewCertPool(),
	}
	ca.Pool.AddCert(caCert)
	certPEM := pemBlock("CERTIFICATE", srvDER)
	keyPEM := pemBlock("EC PRIVATE KEY", marshalECKey(t, srvKey))
	writeFile(t, ca.CertFile, pemBlock("CERTIFICATE", caDER))
	writeFile(t, ca.ServerCertFile, certPEM)
	writeFile(t, ca.ServerKeyFile, keyPEM)
	if ca.Server, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatalf("server key pair: %v", err)
	}
	return ca
}

func newECKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generate ECDSA key: %v", err)
	}
	return k
}

// marshalECKey gives the SEC1 DER that `openssl ecparam -genkey -noout` writes.
func marshalECKey(t testing.TB, k *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatalf("marshal ECDSA key: %v", err)
	}
	return der
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatalf("certificate serial: %v", err)
	}
	return n
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// discardLog keeps net/http servers' "TLS handshake error" lines out of test output.
func discardLog() *log.Logger { return log.New(io.Discard, "", 0) }

// ClusterCA is a certificate authority of a deployment's replicas, for their peer TLS
// (redis.peer_tls): each certificate it issues is for 127.0.0.1, good for serving and as a
// client.
type ClusterCA struct {
	CertFile string // the CA certificate, PEM

	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	dir  string
}

// NewClusterCA makes a cluster CA in a test's folder.
func NewClusterCA(t testing.TB) *ClusterCA {
	t.Helper()
	key := newECKey(t)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: "trustproxy testenv cluster CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("create cluster CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca := &ClusterCA{CertFile: filepath.Join(dir, "cluster-ca.pem"), cert: cert, key: key, dir: dir}
	writeFile(t, ca.CertFile, pemBlock("CERTIFICATE", der))
	return ca
}

// Issue makes a replica's certificate and key, written as PEM files.
func (c *ClusterCA) Issue(t testing.TB) (certFile, keyFile string) {
	t.Helper()
	key := newECKey(t)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: "trustproxy replica"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatalf("issue a replica certificate: %v", err)
	}
	dir, err := os.MkdirTemp(c.dir, "replica-")
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writeFile(t, certFile, pemBlock("CERTIFICATE", der))
	writeFile(t, keyFile, pemBlock("EC PRIVATE KEY", marshalECKey(t, key)))
	return certFile, keyFile
}
