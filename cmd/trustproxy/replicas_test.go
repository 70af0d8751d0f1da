package main

import (
	"crypto/sha256"
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
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

// TestSIGKILLedFillHolder: two trustproxy processes share Redis and a
// storage directory. Replica A is filling a cold layer, which replica B
// streams from it for its own client, when A is killed with SIGKILL. Neither
// client gets a complete body; a retry on B gets the right layer (B fetches
// it itself: the dead holder does not answer); nothing partial is stored.
func TestSIGKILLedFillHolder(t *testing.T) {
	p := newProcesses(t)
	layer, size := p.sign(t, "v1", "sigkill", 3<<20)
	slow := testenv.Throttle(t, p.env.Registry.Host(), 512<<10) // about 6s for the layer
	repo, storage := procRepo, p.shared.Storage
	startReplica := func() *replica { return p.start(t, t.TempDir(), slow.URL(), "") }
	a, b := startReplica(), startReplica()
	for _, r := range []*replica{a, b} {
		resp, err := http.Get(r.url + "/v2/" + repo + "/manifests/v1")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("manifest from %s: %v %v", r.url, resp, err)
		}
		resp.Body.Close()
	}

	// get fetches the layer from r; complete says whether a whole body that
	// hashes to the layer arrived.
	get := func(r *replica) (complete bool, n int64, err error) {
		resp, err := http.Get(r.url + "/v2/" + repo + "/blobs/" + layer.String())
		if err != nil {
			return false, 0, err
		}
		defer resp.Body.Close()
		h := sha256.New()
		n, err = io.Copy(h, resp.Body)
		sum := "sha256:" + hex.EncodeToString(h.Sum(nil))
		if err == nil && resp.StatusCode == 200 && n == size && sum == layer.String() {
			return true, n, nil
		}
		if err == nil && n == size {
			t.Errorf("a complete body of %d bytes that hashes to %s, not %s (status %d)", n, sum, layer, resp.StatusCode)
		}
		return false, n, err
	}
	type outcome struct {
		complete bool
		n        int64
		err      error
	}
	first, second := make(chan outcome, 1), make(chan outcome, 1)
	go func() { c, n, err := get(a); first <- outcome{c, n, err} }()
	waitSpooled(t, a.dataDir, 256<<10)
	go func() { c, n, err := get(b); second <- outcome{c, n, err} }() // streamed from a's fill
	time.Sleep(500 * time.Millisecond)
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for name, ch := range map[string]chan outcome{"the client of the killed replica": first, "the client streaming through b": second} {
		select {
		case o := <-ch:
			if o.complete {
				t.Fatalf("%s got the whole layer though its fill was killed", name)
			}
			t.Logf("%s: %d of %d bytes, then %v", name, o.n, size, o.err)
		case <-time.After(60 * time.Second):
			t.Fatalf("%s still waiting 60s after the kill", name)
		}
	}
	if complete, n, err := get(b); !complete {
		t.Fatalf("retry on b: %d bytes, %v", n, err)
	}
	// What is stored is whole and verified.
	data := filepath.Join(storage, "docker", "registry", "v2", "blobs", "sha256", layer.Hex[:2], layer.Hex, "data")
	stored, err := os.ReadFile(data)
	if err != nil {
		t.Fatalf("the layer was not stored after the retry: %v", err)
	}
	if sum := sha256.Sum256(stored); "sha256:"+hex.EncodeToString(sum[:]) != layer.String() {
		t.Fatal("a partial or wrong layer was stored")
	}
}

// replica is a `trustproxy serve` process.
type replica struct {
	url, dataDir string
	metrics      string // its metrics listener (host:port), when it has one
	cmd          *exec.Cmd
	done         chan struct{}
	logs         *testenv.LogBuffer // what it logged
}

// startReplicaProcess runs bin serve with the configuration cfg returns
// for a free address (host:port) and its URL, and waits until it serves.
// It is killed at t.Cleanup.
func startReplicaProcess(t *testing.T, bin, dataDir string, cfg func(addr, url string) string) *replica {
	t.Helper()
	addr := testenv.FreeAddr(t)
	r := &replica{url: "http://" + addr, dataDir: dataDir, done: make(chan struct{})}
	cfgFile := filepath.Join(t.TempDir(), "trustproxy.yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg(addr, r.url)), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &testenv.LogBuffer{}
	r.logs = logs
	r.cmd = exec.Command(bin, "serve", "--config", cfgFile)
	r.cmd.Stderr = logs
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = r.cmd.Wait(); close(r.done) }()
	t.Cleanup(func() {
		r.kill()
		if t.Failed() {
			t.Logf("log of %s:\n%s", r.url, logs)
		}
	})
	waitServing(t, logs)
	return r
}

// kill stops the process with SIGKILL and waits for it.
func (r *replica) kill() {
	_ = r.cmd.Process.Kill()
	<-r.done
}

// TestRollbackRefusedAcrossReplicaProcesses: three trustproxy processes
// share one Redis and one storage directory. Replica A sees the newest
// trust metadata; the Notary server then serves older, still unexpired
// metadata: B and C, which never saw the newer version, refuse it, and so
// do all three after they are restarted.
func TestRollbackRefusedAcrossReplicaProcesses(t *testing.T) {
	p := newProcesses(t)
	env, gun, repo := p.env, procGUN, procRepo
	p.sign(t, "v1", "rollback v1", 1024)
	old := env.Notary.Record(t, gun)
	p.sign(t, "v2", "rollback v2", 1024)
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	start := func(dataDir string) *replica { return p.start(t, dataDir, env.Registry.URL(), "  refresh_ttl: 1ms\n") }
	status := func(r *replica, ref string) (int, string) {
		resp, err := http.Get(r.url + "/v2/" + repo + "/manifests/" + ref)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	replicas := []*replica{start(dirs[0]), start(dirs[1]), start(dirs[2])}
	if code, body := status(replicas[0], "v2"); code != 200 {
		t.Fatalf("replica A, the newest metadata: %d %s", code, body)
	}
	env.Notary.Replay(gun, old)
	for round := range 2 {
		for i, r := range replicas {
			if round == 0 && i == 0 {
				continue // A refuses on its own disk floor; B and C only through Redis
			}
			code, body := status(r, "v1")
			if code != http.StatusForbidden || !strings.Contains(body, "(rollback)") {
				t.Fatalf("round %d, replica %c: %d %s, want 403 rollback", round, 'A'+i, code, body)
			}
		}
		for i, r := range replicas { // restart all three
			r.kill()
			replicas[i] = start(dirs[i])
		}
	}
}

// TestColdBlobFetchedOnceAcrossReplicaProcesses: three trustproxy
// processes share Redis and a storage directory; 30 concurrent requests
// for one cold 8 MiB layer, spread over them: the upstream serves it once,
// every client gets the layer, and every client gets its first bytes
// before any client has the whole layer (the last bytes wait for the
// digest): the replicas that do not hold the fill stream it from the one
// that does.
func TestColdBlobFetchedOnceAcrossReplicaProcesses(t *testing.T) {
	p := newProcesses(t)
	env, repo := p.env, procRepo
	layer, _ := p.sign(t, "v1", "large", 8<<20)
	slow := testenv.Throttle(t, env.Registry.Host(), 4<<20) // about 2s for the layer
	var replicas []*replica
	for range 3 {
		replicas = append(replicas, p.start(t, t.TempDir(), slow.URL(), ""))
	}
	for _, r := range replicas {
		resp, err := http.Get(r.url + "/v2/" + repo + "/manifests/v1")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("manifest from %s: %v %v", r.url, resp, err)
		}
		resp.Body.Close()
	}
	type result struct {
		replica      int
		first, whole time.Duration
		err          error
	}
	start := time.Now()
	results := make(chan result, 30)
	for i := range 30 {
		go func() {
			r := result{replica: i % 3}
			defer func() { results <- r }()
			resp, err := http.Get(replicas[r.replica].url + "/v2/" + repo + "/blobs/" + layer.String())
			if err != nil {
				r.err = err
				return
			}
			defer resp.Body.Close()
			h := sha256.New()
			buf := make([]byte, 32<<10)
			for {
				n, err := resp.Body.Read(buf)
				if n > 0 && r.first == 0 {
					r.first = time.Since(start)
				}
				h.Write(buf[:n])
				if err == io.EOF {
					break
				}
				if err != nil {
					r.err = err
					return
				}
			}
			r.whole = time.Since(start)
			if sum := "sha256:" + hex.EncodeToString(h.Sum(nil)); resp.StatusCode != 200 || sum != layer.String() {
				r.err = fmt.Errorf("status %d, body hashes to %s", resp.StatusCode, sum)
			}
		}()
	}
	lastFirst, firstWhole := time.Duration(0), time.Hour
	perReplica := map[int]time.Duration{}
	for range 30 {
		r := <-results
		if r.err != nil {
			t.Fatalf("replica %d: %v", r.replica, r.err)
		}
		lastFirst, firstWhole = max(lastFirst, r.first), min(firstWhole, r.whole)
		if f, ok := perReplica[r.replica]; !ok || r.first < f {
			perReplica[r.replica] = r.first
		}
	}
	if n := env.Registry.BlobGets(layer); n != 1 {
		t.Fatalf("the upstream served the layer %d times to 30 clients on 3 replicas, want 1", n)
	}
	t.Logf("upstream GETs of the layer: 1; first byte per replica %v; the last client's first byte at %s, the first whole layer at %s",
		perReplica, lastFirst, firstWhole)
	if lastFirst >= firstWhole {
		t.Fatalf("a client got its first byte at %s, after a client had the whole layer at %s: not streamed from the fill", lastFirst, firstWhole)
	}
}

// processes is library/app, signed by alice in targets/releases, on a real
// registry and notary-server, and the deployment (a Redis and a storage
// directory) that the trustproxy processes started by start share.
type processes struct {
	bin    string
	env    *testenv.Env
	shared *testenv.Deployment
	alice  *testenv.Key
	pins   map[string]string // each GUN's root certificate ID, pinned by every replica
	redis  []string          // further fields of every replica's redis section
}

const procGUN, procRepo = "docker.io/library/app", "library/app"

func newProcesses(t *testing.T) *processes {
	t.Helper()
	return newSignedProcessesOn(t, testenv.NewDeployment(t, testenv.StartRedis(t, "")))
}

// newSignedProcessesOn is newProcesses on the deployment shared: procGUN
// made, pinned, with alice's delegation.
func newSignedProcessesOn(t *testing.T, shared *testenv.Deployment) *processes {
	t.Helper()
	p := newProcessesOn(t, shared)
	p.pins[procGUN] = p.env.Notary.Init(t, procGUN)
	p.env.Notary.AddDelegation(t, procGUN, testenv.Releases, p.alice)
	return p
}

// newProcessesOn is a registry, a notary-server and alice for replicas
// sharing shared, with no GUN yet: pin each GUN made in p.pins.
func newProcessesOn(t *testing.T, shared *testenv.Deployment) *processes {
	t.Helper()
	return &processes{bin: buildTrustproxy(t), env: testenv.New(t), shared: shared, alice: testenv.NewKey(t, "alice"), pins: map[string]string{}}
}

// sign pushes an image of one layer of size bytes as library/app:tag and
// signs it; it returns the layer's digest and size.
func (p *processes) sign(t *testing.T, tag, seed string, size int64) (v1.Hash, int64) {
	t.Helper()
	img := testenv.Image(t, seed, 1, size)
	p.env.Registry.Push(t, procRepo, tag, img)
	p.env.Notary.SignImage(t, procGUN, tag, img, testenv.Releases)
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	n, _ := layers[0].Size()
	return d, n
}

// start runs a trustproxy process with data directory dataDir in front of
// upstream (the registry's URL, or a relay's), sharing p's Redis and
// storage; trustExtra is YAML for the trust section (indented two spaces).
func (p *processes) start(t *testing.T, dataDir, upstream, trustExtra string) *replica {
	t.Helper()
	metrics := testenv.FreeAddr(t)
	var pins []string
	for gun, root := range p.pins {
		pins = append(pins, gun+": ["+root+"]")
	}
	r := startReplicaProcess(t, p.bin, dataDir, func(addr, url string) string {
		return fmt.Sprintf(`listen: %s
data_dir: %s
metrics: {listen: %s}
%supstreams:
  - name: docker.io
    url: %s
    notary: {url: %s, ca_file: %s}
trust:
%s  pinning: {certs: {%s}}
  signers: [{name: alice, public_key: %s}]
  rules: [{repositories: "docker.io/**", signers: [alice]}]
`, addr, dataDir, metrics, p.shared.YAML(append([]string{"replica_url: " + url}, p.redis...)...), upstream, p.env.Notary.URL(), p.env.Notary.CAFile(), trustExtra, strings.Join(pins, ", "), p.alice.CertFile)
	})
	r.metrics = metrics
	return r
}

// TestLogStaysJSONWhileRedisIsDown: while a replica's Redis is stopped,
// go-redis's own messages (its pool failing to dial) reach the log as
// JSON lines of component redis, like every other line, not as plain text
// on stderr that a log collector cannot parse.
func TestLogStaysJSONWhileRedisIsDown(t *testing.T) {
	p := newProcesses(t)
	p.sign(t, "v1", "json log", 1024)
	r := p.start(t, t.TempDir(), p.env.Registry.URL(), "  refresh_ttl: 1ms\n")
	p.shared.Redis.Stop()
	for range 20 {
		resp, err := http.Get(r.url + "/v2/" + procRepo + "/manifests/v1")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		time.Sleep(50 * time.Millisecond)
	}
	fromRedis := 0
	for _, line := range r.logs.Lines() {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("a log line is not JSON: %q", line)
			continue
		}
		if m["component"] == "redis" && m["msg"] == "go-redis" {
			fromRedis++
		}
	}
	if fromRedis == 0 {
		t.Errorf("no go-redis message in the log while Redis was stopped:\n%s", r.logs)
	}
}

// counter reads the unlabelled counter name from r's /metrics.
func (r *replica) counter(t *testing.T, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + r.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s on %s: %q", name, r.metrics, line)
			}
			return f
		}
	}
	t.Fatalf("%s is not on %s/metrics", name, r.metrics)
	return 0
}

// uploads lists the uploads in the shared storage's repositories.
func uploads(t *testing.T, storage string) []string {
	t.Helper()
	var out []string
	root := filepath.Join(storage, "docker", "registry", "v2", "repositories")
	_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && d.Name() == "_uploads" {
			entries, _ := os.ReadDir(path)
			for _, e := range entries {
				out = append(out, filepath.Join(path, e.Name()))
			}
			return filepath.SkipDir
		}
		return nil
	})
	return out
}

// TestFillHolderDeathFetchedOnceMore: the replica holding a cold blob's
// fill lock is SIGKILLed mid-fill, its lock still live on Redis. Its
// clients' retries, spread over the two other replicas at once, fetch the
// blob from the upstream once more, not once per replica: one survivor
// takes the dead holder's lock over and fetches, the other streams its
// fill. The upload the dead holder left in the shared storage is removed by
// the survivor that took its lock, not left for the next replica to start:
// on a storage directory, and on an S3 bucket, where the upload's data is a
// multipart upload in progress (its parts kept, and billed, until it is
// aborted) that the survivor aborts.
func TestFillHolderDeathFetchedOnceMore(t *testing.T) {
	for _, storage := range []string{"filesystem", "s3"} {
		t.Run(storage, func(t *testing.T) {
			r := testenv.StartRedis(t, "")
			if storage == "s3" {
				testFillHolderDeath(t, newSignedProcessesOn(t, testenv.NewS3Deployment(t, r, testenv.StartS3(t))))
				return
			}
			testFillHolderDeath(t, newSignedProcessesOn(t, testenv.NewDeployment(t, r)))
		})
	}
}

func testFillHolderDeath(t *testing.T, p *processes) {
	// The layer is larger than the S3 driver's chunksize of the tests (5
	// MiB): the holder is killed once a part of it is uploaded.
	layer, size := p.sign(t, "v1", "takeover", 8<<20)
	slow := testenv.Throttle(t, p.env.Registry.Host(), 2<<20) // about 4s for the layer
	repo := procRepo
	// left lists the uploads in the shared storage: its directories under
	// _uploads; on S3, its objects there and its multipart uploads.
	left := func() []string { return uploads(t, p.shared.Storage) }
	if s := p.shared.S3; s != nil {
		left = func() []string { return s.LeftUploads(t) }
	}
	var replicas []*replica
	for range 3 {
		replicas = append(replicas, p.start(t, t.TempDir(), slow.URL(), ""))
	}
	for _, r := range replicas {
		resp, err := http.Get(r.url + "/v2/" + repo + "/manifests/v1")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("manifest from %s: %v %v", r.url, resp, err)
		}
		resp.Body.Close()
	}
	get := func(r *replica) error {
		resp, err := http.Get(r.url + "/v2/" + repo + "/blobs/" + layer.String())
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		if sum := "sha256:" + hex.EncodeToString(h.Sum(nil)); err != nil || resp.StatusCode != 200 || n != size || sum != layer.String() {
			return fmt.Errorf("status %d, %d of %d bytes hashing to %s: %v", resp.StatusCode, n, size, sum, err)
		}
		return nil
	}
	holder := replicas[0]
	go func() { _ = get(holder) }()
	waitSpooled(t, holder.dataDir, 6<<20)
	if s := p.shared.S3; s != nil {
		// The holder's store of the spool lags its download: wait until
		// a part is uploaded.
		waitUploadedPart(t, s)
	}
	holder.kill()
	if p.shared.S3 != nil {
		if up := p.shared.S3.Uploads(t, "docker/"); len(up) != 1 {
			t.Fatalf("multipart uploads in progress after the holder was killed: %v, want its one", up)
		}
	} else if left := left(); len(left) != 1 {
		t.Fatalf("uploads after the holder was killed: %v, want its one", left)
	}
	t.Logf("left by the killed holder: %v", left())

	errs := make(chan error, 6)
	for i := range 6 { // the retries, spread over the survivors at once
		go func() { errs <- get(replicas[1+i%2]) }()
	}
	for range 6 {
		if err := <-errs; err != nil {
			t.Fatalf("a retry on a survivor: %v", err)
		}
	}
	n := p.env.Registry.BlobGets(layer)
	t.Logf("upstream GETs of the layer: %d (the dead holder's, and the survivors')", n)
	if n > 2 {
		t.Fatalf("the upstream served the layer %d times: the survivors each fetched it, want one fetch more than the dead holder's", n)
	}
	if left := left(); len(left) != 0 {
		t.Fatalf("uploads left after the survivors' fill: %v", left)
	}
	if n := replicas[1].counter(t, "trustproxy_fill_lock_takeovers_total") + replicas[2].counter(t, "trustproxy_fill_lock_takeovers_total"); n != 1 {
		t.Errorf("trustproxy_fill_lock_takeovers_total summed over the survivors: %v, want 1", n)
	}
}

// waitUploadedPart waits until a multipart upload in s has a part.
func waitUploadedPart(t *testing.T, s *testenv.S3) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if s.UploadedParts(t, "docker/") > 0 {
			return
		}
	}
	t.Fatal("no part of a multipart upload uploaded within 30s")
}
