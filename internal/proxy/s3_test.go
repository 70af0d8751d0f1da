package proxy_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws" // the "s3" driver, as cmd/trustproxy links it
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/uuid"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

// s3World is a world whose replicas share a SeaweedFS bucket and a Redis.
func s3World(t *testing.T) (*world, *testenv.Deployment) {
	t.Helper()
	w := newWorld(t)
	return w, testenv.NewS3Deployment(t, testenv.StartRedis(t, ""), testenv.StartS3(t))
}

// blobFront is the upstream registry of w, counting the GETs of blob: each
// waits delay, then gets body (paced: chunk bytes every tick) when body
// is not nil, else the registry's bytes. A front made with holdLast sends
// body's last byte only once the test closes release: it closes held
// when everything else is sent.
type blobFront struct {
	*httptest.Server
	gets          atomic.Int64
	held, release chan struct{}
}

func newBlobFront(t *testing.T, w *world, blob v1.Hash, delay time.Duration, body []byte, chunk int, tick time.Duration, holdLast bool) *blobFront {
	t.Helper()
	u, _ := url.Parse(w.Registry.URL())
	rp := httputil.NewSingleHostReverseProxy(u)
	f := &blobFront{}
	if holdLast {
		f.held, f.release = make(chan struct{}), make(chan struct{})
	}
	f.Server = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+blob.String()) {
			rp.ServeHTTP(rw, r)
			return
		}
		n := f.gets.Add(1)
		time.Sleep(delay)
		if body == nil {
			rp.ServeHTTP(rw, r)
			return
		}
		rw.Header().Set("Content-Length", fmt.Sprint(len(body)))
		rw.WriteHeader(http.StatusOK)
		rest, last := body, []byte(nil)
		if holdLast && n == 1 {
			rest, last = body[:len(body)-1], body[len(body)-1:]
		}
		for len(rest) > 0 {
			n := min(chunk, len(rest))
			if _, err := rw.Write(rest[:n]); err != nil {
				return
			}
			rw.(http.Flusher).Flush()
			rest = rest[n:]
			time.Sleep(tick)
		}
		if last != nil {
			close(f.held)
			select {
			case <-f.release:
			case <-r.Context().Done():
				return
			}
			_, _ = rw.Write(last)
		}
	}))
	t.Cleanup(f.Close)
	return f
}

// layerBytes returns the bytes of the first layer of library/app:v1 as
// the upstream has them.
func layerBytes(t *testing.T, w *world, layer v1.Hash) []byte {
	t.Helper()
	resp, err := http.Get(w.Registry.URL() + "/v2/library/app/blobs/" + layer.String())
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("layer from the upstream: %v %v", resp, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// getWhole GETs layer from r: complete says a 200 whose whole body hashes
// to the layer arrived; body is what arrived.
func getWhole(t *testing.T, r *instance, layer v1.Hash) (complete bool, body []byte, status int) {
	t.Helper()
	resp, err := http.Get(r.srv.URL + "/v2/library/app/blobs/" + layer.String())
	if err != nil {
		return false, nil, 0
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(resp.Body)
	sum := sha256.Sum256(body)
	return err == nil && resp.StatusCode == 200 && "sha256:"+hex.EncodeToString(sum[:]) == layer.String(), body, resp.StatusCode
}

// wantOnlyWhole fails t unless the bucket holds layer's bytes whole and no
// upload is left in it (objects under _uploads, multipart uploads).
func wantOnlyWhole(t *testing.T, s *testenv.S3, layer v1.Hash) {
	t.Helper()
	stored := s.Get(t, testenv.BlobKey(layer.String()))
	if sum := sha256.Sum256(stored); "sha256:"+hex.EncodeToString(sum[:]) != layer.String() {
		t.Fatalf("the bucket holds %d bytes for %s that do not hash to it", len(stored), layer)
	}
	wantNoUploads(t, s)
}

// wantNoUploads fails t if an upload is left in the bucket: an object
// under a repository's _uploads, or a multipart upload in progress.
func wantNoUploads(t *testing.T, s *testenv.S3) {
	t.Helper()
	if left := s.LeftUploads(t); len(left) > 0 {
		t.Fatalf("uploads left in the bucket: %v", left)
	}
}

// TestS3ColdFillsCommitOnce: three replicas on one bucket; clients of all
// three ask for one cold layer at once. The upstream serves it once, every
// client gets it whole, and the bucket holds it whole with no upload left;
// then every replica serves it from the bucket.
func TestS3ColdFillsCommitOnce(t *testing.T) {
	w, d := s3World(t)
	layer := signedLayer(t, w, "s3-cold", 3<<20)
	front := newBlobFront(t, w, layer, 500*time.Millisecond, nil, 0, 0, false)
	var replicas []*instance
	for range 3 {
		r := w.peer(t, d, front.URL, func(own string) string { return own })
		if status, _, body := r.get(t, http.MethodGet, "/v2/library/app/manifests/v1"); status != 200 {
			t.Fatalf("manifest: %d %s", status, body)
		}
		replicas = append(replicas, r)
	}
	var wg sync.WaitGroup
	failed := make(chan string, 9)
	for i := range 9 {
		wg.Go(func() {
			if complete, body, status := getWhole(t, replicas[i%3], layer); !complete {
				failed <- fmt.Sprintf("client %d of replica %d: %d, %d bytes", i, i%3, status, len(body))
			}
		})
	}
	wg.Wait()
	close(failed)
	for f := range failed {
		t.Error(f)
	}
	if n := front.gets.Load(); n != 1 {
		t.Fatalf("the upstream served the layer %d times to 3 replicas on one bucket, want 1", n)
	}
	for i, r := range replicas {
		if complete, _, status := getWhole(t, r, layer); !complete {
			t.Fatalf("replica %d, warm: %d", i, status)
		}
	}
	if n := front.gets.Load(); n != 1 {
		t.Fatalf("warm GETs reached the upstream: %d fetches", n)
	}
	var fetched float64
	for _, r := range replicas {
		fetched += r.counter(t, "trustproxy_upstream_fetches_total", "kind", "blob")
	}
	t.Logf("upstream blob fetches counted by the replicas: %v", fetched)
	wantOnlyWhole(t, d.S3, layer)
}

// TestS3BlobNotVisibleBeforeVerified: while a layer trickles in from the
// upstream, and once all but its last byte has arrived (the upstream
// holds it back), the bucket holds nothing at its key: its bytes are in a
// multipart upload in progress, not an object. With the last byte, the
// layer is verified and committed, and appears. Bytes that do not hash to
// it never appear at all, and leave no upload behind.
//
// The looks stop when the upstream lets the last byte go: from then on the
// blob may be verified and committed, and the commit comes before the
// client's last byte (which is released only once the commit checked the
// digest), so a look between the two sees the verified blob.
func TestS3BlobNotVisibleBeforeVerified(t *testing.T) {
	w, d := s3World(t)
	layer := signedLayer(t, w, "s3-visible", 2<<20)
	good := layerBytes(t, w, layer)
	bad := bytes.Clone(good)
	bad[len(bad)/2] ^= 0xff
	for _, tc := range []struct {
		name string
		body []byte
	}{{"wrong bytes", bad}, {"the layer", good}} {
		t.Run(tc.name, func(t *testing.T) {
			front := newBlobFront(t, w, layer, 0, tc.body, 128<<10, 80*time.Millisecond, true) // about 1.3 s
			r := w.peer(t, d, front.URL, func(own string) string { return own })
			if status, _, body := r.get(t, http.MethodGet, "/v2/library/app/manifests/v1"); status != 200 {
				t.Fatalf("manifest: %d %s", status, body)
			}
			key := testenv.BlobKey(layer.String())
			done := make(chan bool, 1)
			go func() {
				complete, _, _ := getWhole(t, r, layer)
				done <- complete
			}()
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			looks := 0
			for held := false; !held; {
				select {
				case <-front.held:
					held = true
				case <-done:
					t.Fatal("the client's GET ended before the upstream sent the layer's last byte")
				case <-tick.C:
					looks++
					if b := d.S3.Get(t, key); b != nil {
						t.Fatalf("look %d, while the layer trickled in: %d bytes at %s", looks, len(b), key)
					}
				}
			}
			if looks < 3 {
				t.Fatalf("%d looks at the bucket while the layer trickled in: the test saw too little of it", looks)
			}
			if b := d.S3.Get(t, key); b != nil {
				t.Fatalf("all but the last byte received: %d bytes at %s", len(b), key)
			}
			if up := d.S3.Uploads(t, "docker/"); len(up) != 1 {
				t.Fatalf("all but the last byte received: multipart uploads in progress %v, want the fill's one", up)
			}
			close(front.release)
			complete := <-done
			if complete != bytes.Equal(tc.body, good) {
				t.Fatalf("complete response %v for %s", complete, tc.name)
			}
			if complete {
				wantOnlyWhole(t, d.S3, layer)
				return
			}
			if b := d.S3.Get(t, key); b != nil {
				t.Fatalf("bytes that do not hash to the layer were committed: %d bytes at %s", len(b), key)
			}
			wantNoUploads(t, d.S3)
		})
	}
}

// TestS3ConcurrentCommitsOfOneDigest: two replicas without replica_url
// each fetch one cold layer themselves, at once, and both commit it into
// the one bucket: both clients get it whole, and the bucket holds it whole
// with no upload left.
func TestS3ConcurrentCommitsOfOneDigest(t *testing.T) {
	w, d := s3World(t)
	layer := signedLayer(t, w, "s3-twice", 3<<20)
	front := newBlobFront(t, w, layer, 300*time.Millisecond, nil, 0, 0, false)
	var replicas []*instance
	for range 2 {
		dataDir := t.TempDir()
		r := start(t, strings.Replace(w.config(t, dataDir, d.YAML()), w.Registry.URL(), front.URL, 1))
		if status, _, body := r.get(t, http.MethodGet, "/v2/library/app/manifests/v1"); status != 200 {
			t.Fatalf("manifest: %d %s", status, body)
		}
		replicas = append(replicas, r)
	}
	var wg sync.WaitGroup
	results := make([]bool, 2)
	for i, r := range replicas {
		wg.Go(func() { results[i], _, _ = getWhole(t, r, layer) })
	}
	wg.Wait()
	if !results[0] || !results[1] {
		t.Fatalf("complete responses: %v", results)
	}
	if n := front.gets.Load(); n != 2 {
		t.Fatalf("%d upstream fetches, want 2 (each replica its own: the test no longer commits twice)", n)
	}
	wantOnlyWhole(t, d.S3, layer)
	for i, r := range replicas {
		if complete, _, status := getWhole(t, r, layer); !complete {
			t.Fatalf("replica %d, warm: %d", i, status)
		}
	}
}

// TestS3StoredManifestHashedOnRead: a manifest altered in the bucket is
// not served; it is fetched again from the upstream and counted.
func TestS3StoredManifestHashedOnRead(t *testing.T) {
	w, d := s3World(t)
	w.initRepo(t, gun, w.alice)
	signed := w.pushSigned(t, "library/app", "v1", "s3-manifest")
	a := w.replica(t, d, t.TempDir(), time.Hour)
	a.mustPull(t, "library/app:v1")
	key := testenv.BlobKey(signed.String())
	if d.S3.Get(t, key) == nil {
		t.Fatalf("the manifest is not in the bucket at %s", key)
	}
	d.S3.Put(t, key, []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}`))
	b := w.replica(t, d, t.TempDir(), time.Hour)
	if got := b.mustPull(t, "library/app:v1"); got != signed {
		t.Fatalf("pulled %s, want %s", got, signed)
	}
	if n := b.counter(t, "trustproxy_storage_unusable_total", "kind", "manifest"); n != 1 {
		t.Fatalf("trustproxy_storage_unusable_total{kind=manifest} = %v, want 1", n)
	}
}

// TestS3TamperedStoredBlobNotServed: a layer's bytes in the bucket are
// replaced by another writer of the bucket. With storage_verify_blobs (the
// default), no client gets the altered bytes as a complete blob: a small
// layer is fetched again at once, a large one's first response is cut
// before its last byte and the next is whole; each is counted, and the
// bucket holds the layer again. With storage_verify_blobs: false the
// altered small layer is served: what the option prevents.
func TestS3TamperedStoredBlobNotServed(t *testing.T) {
	w, d := s3World(t)
	w.initRepo(t, gun, w.alice)
	small := testenv.Image(t, "s3-small", 1, 256<<10)
	large := testenv.Image(t, "s3-large", 1, 3<<20)
	w.Registry.Push(t, "library/app", "small", small)
	w.Notary.SignImage(t, gun, "small", small, testenv.Releases)
	w.Registry.Push(t, "library/app", "large", large)
	w.Notary.SignImage(t, gun, "large", large, testenv.Releases)
	replica := func(verify string) *instance {
		cfg := w.config(t, t.TempDir(), d.YAML()+verify)
		return start(t, cfg)
	}
	a := replica("")
	a.mustPull(t, "library/app:small")
	a.mustPull(t, "library/app:large")
	tamper := func(layer v1.Hash) []byte {
		key := testenv.BlobKey(layer.String())
		b := d.S3.Get(t, key)
		if b == nil {
			t.Fatalf("%s is not in the bucket", key)
		}
		b[len(b)/2] ^= 0xff
		d.S3.Put(t, key, b)
		return b
	}

	t.Run("verified", func(t *testing.T) {
		layer := firstLayer(t, small)
		tamper(layer)
		r := replica("storage_verify_blobs: true\n")
		if complete, body, status := getWhole(t, r, layer); !complete {
			t.Fatalf("small layer altered in the bucket: %d, %d bytes, want it whole (fetched again)", status, len(body))
		}
		wantOnlyWhole(t, d.S3, layer)

		layer = firstLayer(t, large)
		tamper(layer)
		if complete, body, status := getWhole(t, r, layer); complete || (status == 200 && len(body) == int(mustSize(t, mustLayer(t, large)))) {
			t.Fatalf("large layer altered in the bucket: a complete response (%d, %d bytes)", status, len(body))
		}
		if complete, body, status := getWhole(t, r, layer); !complete {
			t.Fatalf("large layer, retried: %d, %d bytes", status, len(body))
		}
		wantOnlyWhole(t, d.S3, layer)
		whole := d.S3.Get(t, testenv.BlobKey(layer.String()))
		status, h, body := r.get(t, http.MethodGet, "/v2/library/app/blobs/"+layer.String(), "Range", "bytes=100-199")
		if status != http.StatusPartialContent || !bytes.Equal(body, whole[100:200]) || h.Get("Content-Range") != fmt.Sprintf("bytes 100-199/%d", len(whole)) {
			t.Fatalf("a Range of the verified large layer: %d %q, %d bytes", status, h.Get("Content-Range"), len(body))
		}
		if n := r.counter(t, "trustproxy_storage_unusable_total", "kind", "blob"); n != 2 {
			t.Fatalf("trustproxy_storage_unusable_total{kind=blob} = %v, want 2", n)
		}
	})
	t.Run("not verified", func(t *testing.T) {
		layer := firstLayer(t, small)
		altered := tamper(layer)
		r := replica("storage_verify_blobs: false\n")
		_, body, status := getWhole(t, r, layer)
		if status != 200 || !bytes.Equal(body, altered) {
			t.Fatalf("without verification: %d, %d bytes: the altered layer was not served, so the test no longer shows what the option prevents", status, len(body))
		}
	})
}

// mustLayer is img's first layer.
func mustLayer(t *testing.T, img v1.Image) v1.Layer {
	t.Helper()
	layers, err := img.Layers()
	if err != nil || len(layers) == 0 {
		t.Fatalf("layers: %v", err)
	}
	return layers[0]
}

// TestS3StaleUploadsPurged: a replica killed mid-fill leaves an upload in
// the bucket: its startedat object and, on S3, a multipart upload in
// progress (which is not an object: deleting the upload's directory does
// not remove it, and its parts are billed until it is aborted). A replica
// that starts removes both once the upload is older than a fill may run,
// and leaves a younger one (another replica may be writing it) alone.
func TestS3StaleUploadsPurged(t *testing.T) {
	w, d := s3World(t)
	w.initRepo(t, gun, w.alice)
	ctx := context.Background()
	drv, err := factory.Create(ctx, "s3", d.S3.Params())
	if err != nil {
		t.Fatal(err)
	}
	// plant leaves what a fill killed started ago leaves: startedat, and
	// 6 MiB written (one part of 5 MiB uploaded), never committed.
	plant := func(ago time.Duration) string {
		dir := "/docker/registry/v2/repositories/docker.io/library/app/_uploads/" + uuid.NewString()
		if err := drv.PutContent(ctx, dir+"/startedat", []byte(time.Now().Add(-ago).UTC().Format(time.RFC3339))); err != nil {
			t.Fatal(err)
		}
		fw, err := drv.Writer(ctx, dir+"/data", false)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fw.Write(make([]byte, 6<<20)); err != nil {
			t.Fatal(err)
		}
		return strings.TrimPrefix(dir, "/")
	}
	stale, young := plant(48*time.Hour), plant(time.Minute)
	if up := d.S3.Uploads(t, stale); len(up) != 1 {
		t.Fatalf("the planted upload has no multipart upload in progress: %v", up)
	}
	w.replica(t, d, t.TempDir(), time.Hour)
	var keys []string
	for _, k := range d.S3.Keys(t, "docker/registry/v2/repositories/") {
		if strings.Contains(k, "/_uploads/") {
			keys = append(keys, k)
		}
	}
	if slices.ContainsFunc(keys, func(k string) bool { return strings.HasPrefix(k, stale) }) {
		t.Fatalf("the stale upload's objects are left: %v", keys)
	}
	if up := d.S3.Uploads(t, stale); len(up) != 0 {
		t.Fatalf("the stale upload's multipart upload is left in progress: %v", up)
	}
	if !slices.Contains(keys, young+"/startedat") || len(d.S3.Uploads(t, young)) != 1 {
		t.Fatalf("the young upload was removed: objects %v, multipart %v", keys, d.S3.Uploads(t, young))
	}
}
