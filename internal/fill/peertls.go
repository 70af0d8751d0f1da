package fill

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/trustproxy/trustproxy/config"
)

// PeerTLS returns the TLS configurations of peer traffic under c: the peer
// listener's, which requires a client certificate issued by the cluster CA,
// and the one this replica dials its peers with, presenting its
// certificate and taking a peer's only when it chains to the cluster CA.
// Host names are not checked: a pod's address changes, and the cluster CA
// issues certificates to replicas only (docs/scaling.md). The files are
// read again at the first handshake after one of them changed, so that
// certificates rotate without a restart; a change that does not load keeps
// the last good ones, and says so in the error of that handshake.
func PeerTLS(c config.PeerTLS) (server, client *tls.Config, err error) {
	f := &peerFiles{cfg: c}
	if _, err := f.current(); err != nil {
		return nil, nil, err
	}
	server = &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			m, err := f.current()
			if m == nil {
				return nil, err
			}
			return &tls.Config{
				MinVersion:   tls.VersionTLS12,
				Certificates: []tls.Certificate{m.cert},
				ClientAuth:   tls.RequireAndVerifyClientCert,
				ClientCAs:    m.pool,
			}, nil
		},
	}
	client = &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The chain is checked in VerifyConnection, against the cluster CA
		// only, and without the host name.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			m, err := f.current()
			if m == nil {
				return nil, err
			}
			return &m.cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			m, err := f.current()
			if m == nil {
				return err
			}
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the peer presented no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err = cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: m.pool, Intermediates: inter,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			if err != nil {
				return fmt.Errorf("the peer's certificate is not one of the cluster CA (redis.peer_tls.ca_file): %w", err)
			}
			return nil
		},
	}
	return server, client, nil
}

// peerFiles reads the peer TLS files, again when one of them changed.
type peerFiles struct {
	cfg config.PeerTLS

	mu    sync.Mutex
	mtime [3]time.Time
	mat   *peerMaterial
}

type peerMaterial struct {
	cert tls.Certificate
	pool *x509.CertPool
}

// current returns the material of the files as they are now, or the last
// good one and the error of loading the files that changed since.
func (f *peerFiles) current() (*peerMaterial, error) {
	var mt [3]time.Time
	for i, p := range []string{f.cfg.CAFile, f.cfg.CertFile, f.cfg.KeyFile} {
		if st, err := os.Stat(p); err == nil {
			mt[i] = st.ModTime()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mat != nil && mt == f.mtime {
		return f.mat, nil
	}
	m, err := loadPeerTLS(f.cfg)
	if err != nil {
		return f.mat, err
	}
	f.mat, f.mtime = m, mt
	return m, nil
}

func loadPeerTLS(c config.PeerTLS) (*peerMaterial, error) {
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("redis.peer_tls: load cert_file %s and key_file %s: %w", c.CertFile, c.KeyFile, err)
	}
	pem, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, fmt.Errorf("redis.peer_tls.ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("redis.peer_tls.ca_file: %s holds no PEM certificate", c.CAFile)
	}
	return &peerMaterial{cert: cert, pool: pool}, nil
}
