package bench

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	notaryclient "github.com/theupdateframework/notary/client"
	"github.com/theupdateframework/notary/trustpinning"
	"github.com/theupdateframework/notary/tuf/data"
	"golang.org/x/sync/errgroup"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

// The three ways of getting a verified image the table compares.
const (
	direct       = "direct"       // a Docker Content Trust client straight from the upstream
	distribution = "distribution" // the same client through distribution's pull-through proxy
	trustproxy   = "trustproxy"   // a plain client pulling by tag through trustproxy, which verifies
)

// before is trustproxy built from another tree (-before), measured in the
// same run as a second trustproxy column.
const before = "trustproxy-before"

// columns are what is measured: the three ways, and before when asked for.
func columns() []string {
	if *beforeFlag != "" {
		return []string{direct, distribution, trustproxy, before}
	}
	return []string{direct, distribution, trustproxy}
}

// isTrustproxy says whether impl is a trustproxy build.
func isTrustproxy(impl string) bool { return impl == trustproxy || impl == before }

// plain is an unverified pull by tag straight from the upstream: the floor
// of the cold small images' row, shown beside it.
const plain = "plain"

// signedImage is one image on the upstream, signed in its repository's
// targets/releases.
type signedImage struct {
	repo, gun, tag string
	rootID         string // the GUN's root certificate ID, pinned by trustproxy and the DCT client
	manifest       blob
	config         blob
	layers         []blob
}

// blobBytes is the length of the config and the layers.
func (im *signedImage) blobBytes() int64 {
	n := im.config.Size
	for _, l := range im.layers {
		n += l.Size
	}
	return n
}

// tableEnv is what every row runs against: the upstream registry (in this
// process), the real notary-server, the signer, the built trustproxy
// binary, and the signed images.
type tableEnv struct {
	sc       scale
	notary   *testenv.Notary
	upstream *testenv.Registry
	key      *testenv.Key
	bin      string         // trustproxy
	base     string         // where proxies keep their storage
	remote   *testenv.Relay // the upstream at remoteRate per connection

	big, warm, huge *signedImage
	smalls          []*signedImage
	profileBigs     []*signedImage // more cold big images, for the CPU profile
}

func newTableEnv(t *testing.T, sc scale) *tableEnv {
	t.Helper()
	// Everything on tmpfs when there is one (the upstream's blobs, the
	// proxies' storage and spool): the table measures the proxies, not a
	// disk, nor the writeback of the images setup wrote.
	// (At full scale only, with room for it: a container's /dev/shm may be
	// 64 MiB.)
	var fs syscall.Statfs_t
	if err := syscall.Statfs("/dev/shm", &fs); err == nil && sc == full && int64(fs.Bavail)*fs.Bsize >= 8<<30 {
		if dir, err := os.MkdirTemp("/dev/shm", "trustproxy-bench-"); err == nil {
			t.Cleanup(func() { os.RemoveAll(dir) })
			t.Setenv("TMPDIR", dir)
		}
	}
	e := &tableEnv{sc: sc, notary: testenv.StartNotary(t), upstream: testenv.NewRegistry(t), key: testenv.NewKey(t, "bench-release")}
	e.base = t.TempDir()
	e.remote = testenv.Throttle(t, e.upstream.Host(), remoteRate)
	var g errgroup.Group
	g.Go(func() error {
		if *binFlag != "" {
			e.bin = *binFlag
			return nil
		}
		bin := filepath.Join(t.TempDir(), "trustproxy")
		out, err := exec.Command("go", "build", "-o", bin, "github.com/trustproxy/trustproxy/cmd/trustproxy").CombinedOutput()
		if err != nil {
			return fmt.Errorf("build trustproxy: %v\n%s", err, out)
		}
		e.bin = bin
		return nil
	})
	var all []*signedImage
	add := func(repo string, img v1.Image) *signedImage {
		im := &signedImage{repo: repo, gun: "docker.io/" + repo, tag: "v1"}
		d := describe(t, img)
		im.manifest, im.config, im.layers = d.manifest, d.config, d.layers
		e.upstream.Push(t, repo, im.tag, img)
		all = append(all, im)
		return im
	}
	e.big = add("library/big", testenv.RawImage(t, "big", sc.bigLayers, sc.bigLayerSize))
	e.warm = add("library/warm", testenv.RawImage(t, "warm", sc.warmLayers, sc.warmLayerSize))
	e.huge = add("library/huge", testenv.RawImage(t, "huge", 1, sc.hugeLayerSize))
	if *profileDir != "" {
		for i := range sc.profileRepeats {
			e.profileBigs = append(e.profileBigs, add(fmt.Sprintf("library/big-profile-%d", i), testenv.RawImage(t, fmt.Sprintf("big-profile-%d", i), sc.bigLayers, sc.bigLayerSize)))
		}
	}
	for i := range sc.small {
		e.smalls = append(e.smalls, add(fmt.Sprintf("small/app-%03d", i), testenv.RawImage(t, fmt.Sprintf("small-%d", i), 1, 2048)))
	}
	sem := make(chan struct{}, 4)
	var mu sync.Mutex
	for _, im := range all {
		g.Go(func() error {
			sem <- struct{}{}
			defer func() { <-sem }()
			id := e.notary.Publish(t, im.gun, e.key, map[string]testenv.Target{im.tag: testenvTarget(im)})
			mu.Lock()
			im.rootID = id
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	syscall.Sync() // what setup wrote is written back now, not while rows run
	return e
}

// remoteRate is what one connection to the remote upstream carries per
// second: a registry some way off (Docker Hub gives a cloud machine about
// this much per connection).
const remoteRate = 64 << 20

// proc is one running proxy (nothing to run for direct).
type proc struct {
	impl     string
	url      string
	debugURL string // trustproxy's pprof listener, when asked for
	cmd      *exec.Cmd
	done     chan struct{}
	dir      string       // its storage, logs and the DCT clients' caches; removed by stop
	dctDir   string       // where the DCT clients keep their trust caches, one per pull
	dct      *http.Client // the DCT client's connections to the Notary server
}

// start runs a fresh proxy with empty storage; extra is YAML appended to
// trustproxy's configuration.
func (e *tableEnv) start(t *testing.T, impl, extra string) *proc {
	return e.startAt(t, impl, extra, e.upstream.URL())
}

// startAt is start in front of the upstream at upstream (the registry's
// URL, or a relay's).
func (e *tableEnv) startAt(t *testing.T, impl, extra, upstream string) *proc {
	t.Helper()
	dir, err := os.MkdirTemp(e.base, impl+"-")
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{impl: impl, dir: dir, dctDir: filepath.Join(dir, "dct"), done: make(chan struct{})}
	p.dct = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.notary.CAPool()}, MaxIdleConnsPerHost: 64}}
	if impl == direct {
		p.url = upstream
		close(p.done)
		t.Cleanup(p.stop)
		return p
	}
	addr := testenv.FreeAddr(t)
	p.url = "http://" + addr
	switch impl {
	case trustproxy, before:
		var pins strings.Builder
		for _, im := range e.images() {
			fmt.Fprintf(&pins, "      %s: [%s]\n", im.gun, im.rootID)
		}
		cfg := fmt.Sprintf(`listen: %s
data_dir: %s
upstreams:
  - name: docker.io
    url: %s
    notary: {url: %s, ca_file: %s}
trust:
  refresh_ttl: 1h
  pinning:
    certs:
%s  signers: [{name: bench-release, public_key: %s}]
  rules: [{repositories: "docker.io/**", signers: [bench-release]}]
%s`, addr, dir, upstream, e.notary.ServerURL(), e.notary.CAFile(), pins.String(), e.key.CertFile, extra)
		if strings.Contains(extra, "debug:") {
			daddr := testenv.FreeAddr(t)
			cfg = strings.Replace(cfg, "listen: 127.0.0.1:0", "listen: "+daddr, 1)
			p.debugURL = "http://" + daddr
		}
		file := filepath.Join(dir, "trustproxy.yaml")
		if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		bin := e.bin
		if impl == before {
			bin = *beforeFlag
		}
		p.cmd = exec.Command(bin, "serve", "--config", file)
	case distribution:
		b, _ := json.Marshal(distConfig{Listen: addr, Root: filepath.Join(dir, "storage"), Remote: upstream})
		p.cmd = exec.Command(os.Args[0], "-test.run=^$")
		p.cmd.Env = append(os.Environ(), distEnv+"="+string(b))
	}
	log, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout, p.cmd.Stderr = log, log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); log.Close(); close(p.done) }()
	t.Cleanup(p.stop)
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := http.Get(p.url + "/v2/")
		if err == nil {
			resp.Body.Close()
			break
		}
		select {
		case <-p.done:
			b, _ := os.ReadFile(filepath.Join(dir, "log"))
			t.Fatalf("%s exited at start:\n%s", impl, b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not serve on %s: %v", impl, p.url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p
}

// stop kills the proxy (its storage goes with it at cleanup).
func (p *proc) stop() {
	p.dct.CloseIdleConnections()
	if p.cmd != nil {
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	_ = os.RemoveAll(p.dir)
}

// peakRSS is the proxy process's peak resident set (VmHWM), in bytes; -1
// when it cannot be read.
func (p *proc) peakRSS() int64 {
	n, err := testenv.PeakRSS(p.cmd.Process.Pid)
	if err != nil {
		return -1
	}
	return n
}

// profile runs work under a CPU profile of trustproxy and writes it to
// prefix.cpu.pprof, then the block profile of the process to
// prefix.block.pprof.
func (p *proc) profile(ctx context.Context, prefix string, work func() error) error {
	// The profile runs for a fixed time: measure the work once more
	// first? No: it is cold only once. Run it inside a window long enough.
	type result struct {
		b   []byte
		err error
	}
	ch := make(chan result, 1)
	secs := 12
	go func() {
		b, err := fetch(ctx, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", p.debugURL, secs))
		ch <- result{b, err}
	}()
	time.Sleep(100 * time.Millisecond)
	t0 := time.Now()
	if err := work(); err != nil {
		return err
	}
	if d := time.Since(t0); d > time.Duration(secs)*time.Second {
		return fmt.Errorf("the work took %s, longer than the %ds profile", d, secs)
	}
	r := <-ch
	if r.err != nil {
		return r.err
	}
	if err := os.WriteFile(prefix+".cpu.pprof", r.b, 0o644); err != nil {
		return err
	}
	b, err := fetch(ctx, p.debugURL+"/debug/pprof/block")
	if err != nil {
		return err
	}
	return os.WriteFile(prefix+".block.pprof", b, 0o644)
}

func fetch(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

func (e *tableEnv) images() []*signedImage {
	all := []*signedImage{e.big, e.warm, e.huge}
	all = append(all, e.profileBigs...)
	return append(all, e.smalls...)
}

// pull gets im verified the way impl does: through trustproxy a plain
// client pulls by tag (trustproxy verifies); direct and through
// distribution, a Docker Content Trust client resolves the tag with the
// notary client library against the Notary server, then pulls by digest.
func (e *tableEnv) pull(ctx context.Context, impl string, p *proc, im *signedImage, workers int) error {
	if isTrustproxy(impl) {
		return e.plainPull(ctx, p.url, im, workers)
	}
	// Every pull is a client of its own, with its own cache, as on the
	// machines that pull.
	cache := filepath.Join(p.dctDir, strconv.FormatInt(dctClients.Add(1), 10))
	repo, err := notaryclient.NewFileCachedRepository(cache, data.GUN(im.gun), e.notary.ServerURL(), p.dct.Transport, nil,
		trustpinning.TrustPinConfig{Certs: map[string][]string{im.gun: {im.rootID}}, DisableTOFU: true})
	if err != nil {
		return fmt.Errorf("trust of %s: %w", im.gun, err)
	}
	target, err := repo.GetTargetByName(im.tag, data.RoleName(testenv.Releases), data.CanonicalTargetsRole)
	if err != nil {
		return fmt.Errorf("trust of %s:%s: %w", im.gun, im.tag, err)
	}
	dgst := digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(target.Hashes["sha256"]))
	if dgst != im.manifest.Digest || target.Length != im.manifest.Size {
		return fmt.Errorf("trust of %s:%s: signed %s (%d bytes), pushed %s", im.gun, im.tag, dgst, target.Length, im.manifest.Digest)
	}
	return e.fetchImage(ctx, p.url, im, dgst.String(), workers)
}

var dctClients atomic.Int64

// plainPull pulls im by tag with no trust of its own.
func (e *tableEnv) plainPull(ctx context.Context, base string, im *signedImage, workers int) error {
	return e.fetchImage(ctx, base, im, im.tag, workers)
}

// fetchImage GETs im's manifest by ref, then its config and layers,
// workers at a time, each checked against its digest and length.
func (e *tableEnv) fetchImage(ctx context.Context, base string, im *signedImage, ref string, workers int) error {
	c := clientPool.Get().(*client)
	defer clientPool.Put(c)
	var raw bytes.Buffer
	if err := c.get(ctx, base, "/v2/"+im.repo+"/manifests/"+ref, accept, im.manifest, &raw); err != nil {
		return err
	}
	var m struct {
		Config blob   `json:"config"`
		Layers []blob `json:"layers"`
	}
	if err := json.Unmarshal(raw.Bytes(), &m); err != nil {
		return fmt.Errorf("manifest of %s: %w", im.repo, err)
	}
	blobs := append([]blob{m.Config}, m.Layers...)
	var g errgroup.Group
	g.SetLimit(workers)
	for _, b := range blobs {
		g.Go(func() error {
			c := clientPool.Get().(*client)
			defer clientPool.Put(c)
			return c.get(ctx, base, "/v2/"+im.repo+"/blobs/"+b.Digest.String(), "", b, nil)
		})
	}
	return g.Wait()
}

// clientPool holds checking clients on one connection pool.
var clientPool = sync.Pool{New: func() any { return sharedClient.fork() }}

var sharedClient = func() *client {
	tr := &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
	return &client{http: &http.Client{Transport: tr, Timeout: 10 * time.Minute}, buf: make([]byte, 256<<10)}
}()

// upstreamBlobBytes is how many bytes of im's blobs the upstream has sent
// (the GETs it answered times each blob's length).
func (e *tableEnv) upstreamBlobBytes(im *signedImage) int64 {
	n := int64(e.upstream.BlobGets(v1.Hash{Algorithm: "sha256", Hex: im.config.Digest.Encoded()})) * im.config.Size
	for _, l := range im.layers {
		n += int64(e.upstream.BlobGets(v1.Hash{Algorithm: "sha256", Hex: l.Digest.Encoded()})) * l.Size
	}
	return n
}

// distEnv makes the test binary run distribution's pull-through proxy
// (TestMain) instead of tests, configured by the variable's JSON.
const distEnv = "TRUSTPROXY_BENCH_DISTRIBUTION"

type distConfig struct {
	Listen, Root, Remote string
}

func TestMain(m *testing.M) {
	if v := os.Getenv(distEnv); v != "" {
		os.Exit(runDistribution(v))
	}
	os.Exit(m.Run())
}

// runDistribution serves distribution's pull-through proxy as its docs
// configure it (proxy.remoteurl; blob TTL 7 days, so its expiry scheduler
// runs) on filesystem storage, logging at info as its default is.
func runDistribution(v string) int {
	var c distConfig
	if err := json.Unmarshal([]byte(v), &c); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	logrus.SetOutput(os.Stderr)
	cfg := &configuration.Configuration{}
	cfg.Storage = configuration.Storage{
		"filesystem":  configuration.Parameters{"rootdirectory": c.Root},
		"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
	}
	cfg.HTTP.Secret = "bench"
	cfg.Proxy = configuration.Proxy{RemoteURL: c.Remote}
	app := handlers.NewApp(context.Background(), cfg)
	srv := &http.Server{Addr: c.Listen, Handler: app, ReadHeaderTimeout: 10 * time.Second}
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
