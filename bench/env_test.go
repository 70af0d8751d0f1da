// Package bench compares trustproxy with distribution's own pull-through
// proxy (registry/handlers.NewApp with configuration.Proxy) in one run: both
// in-process on 127.0.0.1, in front of the same upstream distribution
// registry, both on filesystem storage. It holds benchmarks and a smoke test
// only; see README.md for how to run them and what they measure.
package bench

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trustserver"
	"github.com/trustproxy/trustproxy/internal/wiring"
)

const (
	repoName = "library/bench"         // as clients and the upstream name it
	gun      = "docker.io/" + repoName // as Docker Content Trust names it
	signer   = "bench-release"         // the one trusted signer, in targets/releases
	accept   = "application/vnd.docker.distribution.manifest.v2+json, " +
		"application/vnd.oci.image.manifest.v1+json, " +
		"application/vnd.docker.distribution.manifest.list.v2+json, " +
		"application/vnd.oci.image.index.v1+json"
)

// blob is a digest and the length it must have.
type blob struct {
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
}

// image is what the upstream holds for one tag.
type image struct {
	manifest blob
	config   blob
	layers   []blob
}

// bytes is the length of a full pull: manifest, config and layers.
func (im image) bytes() int64 {
	n := im.manifest.Size + im.config.Size
	for _, l := range im.layers {
		n += l.Size
	}
	return n
}

// world is the upstream registry and the Notary read API both proxies sit in
// front of. Its tags are pushed and signed by the trusted signer in
// targets/releases; unsigned tags are pushed only.
type world struct {
	upstream *testenv.Registry
	notary   string // the trust server's URL
	rootID   string // the GUN's root certificate ID, pinned by trustproxy
	keyFile  string // the signer's public key, PEM
	images   map[string]image
}

// newWorld starts the upstream and the trust server, pushes signed as signed
// tags and unsigned as unsigned ones. Everything stops at tb's cleanup.
func newWorld(tb testing.TB, signed, unsigned map[string]v1.Image) *world {
	tb.Helper()
	w := &world{upstream: testenv.NewRegistry(tb), images: map[string]image{}}

	ts := trustserver.New()
	srv := httptest.NewServer(ts)
	tb.Cleanup(srv.Close)
	w.notary = srv.URL
	repo, err := ts.NewRepo(gun)
	if err != nil {
		tb.Fatal(err)
	}
	w.rootID = repo.RootCertID()
	key, err := trustserver.NewSigner(signer)
	if err != nil {
		tb.Fatal(err)
	}
	if err := repo.AddDelegation(testenv.Releases, key); err != nil {
		tb.Fatal(err)
	}
	w.keyFile = filepath.Join(tb.TempDir(), signer+".pem")
	if err := os.WriteFile(w.keyFile, key.PublicKeyPEM(), 0o600); err != nil {
		tb.Fatal(err)
	}

	for tag, img := range unsigned {
		w.upstream.Push(tb, repoName, tag, img)
	}
	for tag, img := range signed {
		w.upstream.Push(tb, repoName, tag, img)
		im := describe(tb, img)
		if err := repo.AddTarget(testenv.Releases, tag, im.manifest.Digest, im.manifest.Size); err != nil {
			tb.Fatal(err)
		}
		w.images[tag] = im
	}
	if err := repo.Publish(); err != nil {
		tb.Fatal(err)
	}
	return w
}

func describe(tb testing.TB, img v1.Image) image {
	tb.Helper()
	raw, err := img.RawManifest()
	if err != nil {
		tb.Fatal(err)
	}
	var m struct {
		Config blob   `json:"config"`
		Layers []blob `json:"layers"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		tb.Fatal(err)
	}
	return image{manifest: blob{digest.FromBytes(raw), int64(len(raw))}, config: m.Config, layers: m.Layers}
}

// upstreamRequests counts every request the upstream has seen.
func (w *world) upstreamRequests() int { return w.upstream.Requests("", "") }

// blobGets counts the upstream's GETs of d.
func (w *world) blobGets(d digest.Digest) int {
	return w.upstream.Requests(http.MethodGet, "/blobs/"+d.String())
}

// instance is one running proxy. close stops it and removes its storage;
// it waits for requests in flight.
type instance struct {
	url   string
	close func()
}

// impl starts a fresh proxy, with empty storage, in front of a world.
type impl struct {
	name  string
	start func(tb testing.TB, w *world) *instance
}

var impls = []impl{
	{"trustproxy", startTrustproxy},
	{"distribution", startDistribution},
}

// startTrustproxy wires trustproxy as cmd/trustproxy does (config.Load,
// proxy.Open) with filesystem storage in a fresh directory, the root
// pinned, the signer trusted in targets/releases and trust data cached for
// an hour. Decision lines are formatted as in production (JSON, info) and
// discarded, as distribution's logrus output is.
func startTrustproxy(tb testing.TB, w *world) *instance {
	tb.Helper()
	dir, err := os.MkdirTemp("", "bench-trustproxy-")
	if err != nil {
		tb.Fatal(err)
	}
	yaml := fmt.Sprintf(`data_dir: %s
upstreams:
  - name: docker.io
    url: %s
    notary: {url: %s}
trust:
  refresh_ttl: 1h
  pinning: {certs: {%s: [%s]}}
  signers: [{name: %s, public_key: %s}]
  rules: [{repositories: "docker.io/**", signers: [%s], mode: enforce}]
`, dir, w.upstream.URL(), w.notary, gun, w.rootID, signer, w.keyFile, signer)
	cfg, err := config.Load(strings.NewReader(yaml), nil)
	if err != nil {
		tb.Fatalf("config: %v\n%s", err, yaml)
	}
	log := slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	reg := prometheus.NewRegistry()
	p, err := wiring.Open(context.Background(), cfg, log, reg)
	if err != nil {
		tb.Fatalf("proxy.Open: %v", err)
	}
	srv := httptest.NewServer(p)
	return &instance{url: srv.URL, close: func() {
		srv.Close()
		_ = os.RemoveAll(dir)
	}}
}

// startDistribution starts distribution's pull-through proxy as its docs
// configure it (proxy.remoteurl, everything else default: blob TTL 7 days,
// so its expiry scheduler runs) on filesystem storage in a fresh directory.
func startDistribution(tb testing.TB, w *world) *instance {
	tb.Helper()
	dir, err := os.MkdirTemp("", "bench-distribution-")
	if err != nil {
		tb.Fatal(err)
	}
	cfg := &configuration.Configuration{}
	cfg.Storage = configuration.Storage{
		"filesystem":  configuration.Parameters{"rootdirectory": dir},
		"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
	}
	cfg.Proxy = configuration.Proxy{RemoteURL: w.upstream.URL()}
	app := handlers.NewApp(context.Background(), cfg)
	srv := httptest.NewServer(app)
	return &instance{url: srv.URL, close: func() {
		srv.Close()
		_ = app.Shutdown()
		_ = os.RemoveAll(dir)
	}}
}

// client is a registry client that checks what it receives.
type client struct {
	http *http.Client
	buf  []byte
	h    hash.Hash
}

func newClient(tb testing.TB) *client {
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	tb.Cleanup(tr.CloseIdleConnections)
	return &client{http: &http.Client{Transport: tr, Timeout: 2 * time.Minute}, buf: make([]byte, 256<<10), h: sha256.New()}
}

// fork returns a client with its own buffer and hash, on the same
// connection pool, for use by another goroutine.
func (c *client) fork() *client {
	return &client{http: c.http, buf: make([]byte, len(c.buf)), h: sha256.New()}
}

// get GETs base+path and checks a 200 whose body is want's length and hashes
// to want's digest. keep, if not nil, receives the body.
func (c *client) get(ctx context.Context, base, path, accept string, want blob, keep *bytes.Buffer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, b)
	}
	c.h.Reset()
	var dst io.Writer = c.h
	if keep != nil {
		dst = io.MultiWriter(c.h, keep)
	}
	n, err := io.CopyBuffer(dst, resp.Body, c.buf)
	if err != nil {
		return fmt.Errorf("GET %s: after %d bytes: %w", path, n, err)
	}
	got := digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(c.h.Sum(nil)))
	if n != want.Size || got != want.Digest {
		return fmt.Errorf("GET %s: got %d bytes hashing to %s, want %d bytes, %s", path, n, got, want.Size, want.Digest)
	}
	return nil
}

// manifest GETs repoName's manifest by tag and checks it is want's.
func (c *client) manifest(ctx context.Context, base, tag string, want image, keep *bytes.Buffer) error {
	return c.get(ctx, base, "/v2/"+repoName+"/manifests/"+tag, accept, want.manifest, keep)
}

// blob GETs a blob of repoName and checks it.
func (c *client) blob(ctx context.Context, base string, b blob) error {
	return c.get(ctx, base, "/v2/"+repoName+"/blobs/"+b.Digest.String(), "", b, nil)
}

// pull pulls tag as a client does: the manifest by tag, then the config and
// the layers it names, each checked against its digest and length.
func (c *client) pull(ctx context.Context, base, tag string, want image) error {
	var raw bytes.Buffer
	if err := c.manifest(ctx, base, tag, want, &raw); err != nil {
		return err
	}
	var m struct {
		Config blob   `json:"config"`
		Layers []blob `json:"layers"`
	}
	if err := json.Unmarshal(raw.Bytes(), &m); err != nil {
		return fmt.Errorf("manifest of %s: %w", tag, err)
	}
	if len(m.Layers) != len(want.layers) {
		return fmt.Errorf("manifest of %s names %d layers, want %d", tag, len(m.Layers), len(want.layers))
	}
	for _, b := range append([]blob{m.Config}, m.Layers...) {
		if err := c.blob(ctx, base, b); err != nil {
			return err
		}
	}
	return nil
}

// closeIdle drops the pooled connections, to a proxy that is gone.
func (c *client) closeIdle() { c.http.CloseIdleConnections() }
