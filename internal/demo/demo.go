package demo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory" // the upstream's storage
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/internal/sample"
	"github.com/trustproxy/trustproxy/internal/trustserver"
)

// The demo's images, as a Docker daemon using trustproxy as its mirror names them.
const (
	Signed   = "library/hello:1" // signed by the trusted signer
	Unsigned = "library/hello:2" // pushed, never signed
	NoTrust  = "library/nosig:1" // a repository with no trust data at all
	signer   = "demo-release"
)

// Demo is a running upstream registry and Notary server, and the trustproxy
// configuration that trusts them.
type Demo struct {
	ConfigFile string // trustproxy.yaml written for the demo
	Upstream   string // the upstream registry's URL
	Notary     string // the Notary server's URL
	servers    []*http.Server
}

// Start starts the upstream registry and the Notary server on loopback,
// pushes and signs the images, and writes a trustproxy configuration under
// dir that listens on listen.
func Start(ctx context.Context, dir, listen string) (*Demo, error) {
	d := &Demo{}
	ok := false
	defer func() {
		if !ok {
			d.Close()
		}
	}()
	cfg := &configuration.Configuration{}
	cfg.Storage = configuration.Storage{"inmemory": configuration.Parameters{}}
	cfg.HTTP.Secret = "trustproxy-demo"
	upstream, err := d.serve(handlers.NewApp(ctx, cfg))
	if err != nil {
		return nil, err
	}
	notary := trustserver.New()
	notaryURL, err := d.serve(notary)
	if err != nil {
		return nil, err
	}
	d.Upstream, d.Notary = upstream, notaryURL

	images := map[string]string{Signed: "hello-1", Unsigned: "hello-2", NoTrust: "nosig-1"}
	digests := map[string]v1.Hash{}
	sizes := map[string]int64{}
	for ref, seed := range images {
		img, err := sample.Image(seed, 2, 64<<10)
		if err != nil {
			return nil, err
		}
		r, err := name.ParseReference(upstream[len("http://"):]+"/"+ref, name.Insecure)
		if err != nil {
			return nil, err
		}
		if err := remote.Write(r, img, remote.WithContext(ctx)); err != nil {
			return nil, fmt.Errorf("push %s: %w", ref, err)
		}
		raw, err := img.RawManifest()
		if err != nil {
			return nil, err
		}
		digests[ref], _ = img.Digest()
		sizes[ref] = int64(len(raw))
	}

	gun := "docker.io/library/hello"
	repo, err := notary.NewRepo(gun)
	if err != nil {
		return nil, err
	}
	release, err := trustserver.NewSigner(signer)
	if err != nil {
		return nil, err
	}
	if err := repo.AddDelegation("targets/releases", release); err != nil {
		return nil, err
	}
	if err := repo.AddTarget("targets/releases", "1", digest.Digest(digests[Signed].String()), sizes[Signed]); err != nil {
		return nil, err
	}
	if err := repo.Publish(); err != nil {
		return nil, err
	}

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	keyFile := filepath.Join(dir, signer+".pem")
	if err := os.WriteFile(keyFile, release.PublicKeyPEM(), 0o600); err != nil {
		return nil, err
	}
	d.ConfigFile = filepath.Join(dir, "trustproxy.yaml")
	yaml := fmt.Sprintf(`# Written by trustproxy demo.
listen: %q
data_dir: %q
upstreams:
  - name: docker.io
    url: %s
    notary:
      url: %s
trust:
  pinning:
    certs:
      %s: [%s]
  signers:
    - name: %s
      public_key: %s
  rules:
    - repositories: "docker.io/**"
      signers: [%s]
      mode: enforce
`, listen, filepath.Join(dir, "data"), upstream, notaryURL, gun, repo.RootCertID(), signer, keyFile, signer)
	if err := os.WriteFile(d.ConfigFile, []byte(yaml), 0o600); err != nil {
		return nil, err
	}
	ok = true
	return d, nil
}

// serve runs h on a loopback port and returns its URL.
func (d *Demo) serve(h http.Handler) (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	d.servers = append(d.servers, srv)
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "demo server:", err)
		}
	}()
	return "http://" + l.Addr().String(), nil
}

// Close stops the demo's servers.
func (d *Demo) Close() {
	for _, s := range d.servers {
		_ = s.Close()
	}
}
