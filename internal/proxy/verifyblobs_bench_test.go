package proxy_test

import (
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

// BenchmarkStoredBlobVerify GETs one stored 16 MiB layer from two
// trustproxies sharing one storage, one serving stored blobs as they are
// (storage_verify_blobs: false) and one hashing them as it serves them
// (true), in turn, on filesystem storage and on a SeaweedFS bucket. It
// reports each one's time per GET and their ratio: what verifying a stored
// blob on read costs.
//
//	go test ./internal/proxy -run '^$' -bench StoredBlobVerify -benchtime 20x
func BenchmarkStoredBlobVerify(b *testing.B) {
	for _, storage := range []string{"filesystem", "s3"} {
		b.Run("storage="+storage, func(b *testing.B) {
			w := &world{Env: testenv.New(b), alice: testenv.NewKey(b, "alice"), roots: map[string]string{}}
			w.roots[gun] = w.Notary.Init(b, gun)
			w.Notary.AddDelegation(b, gun, testenv.Releases, w.alice)
			img := testenv.Image(b, "bench-verify", 1, 16<<20)
			w.Registry.Push(b, "library/app", "v1", img)
			w.Notary.SignImage(b, gun, "v1", img, testenv.Releases)
			layers, _ := img.Layers()
			layer, _ := layers[0].Digest()
			size, _ := layers[0].Size()

			shared := "storage: {filesystem: {rootdirectory: " + b.TempDir() + "}}\n"
			if storage == "s3" {
				shared = testenv.StartS3(b).StorageYAML() + "\n"
			}
			plain := start(b, w.config(b, b.TempDir(), shared+"storage_verify_blobs: false\n"))
			verified := start(b, w.config(b, b.TempDir(), shared+"storage_verify_blobs: true\n"))
			get := func(p *instance) time.Duration {
				begin := time.Now()
				resp, err := http.Get(p.srv.URL + "/v2/library/app/blobs/" + layer.String())
				if err != nil {
					b.Fatal(err)
				}
				n, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 || n != size {
					b.Fatalf("GET: %d, %d of %d bytes, %v", resp.StatusCode, n, size, err)
				}
				return time.Since(begin)
			}
			for _, p := range []*instance{plain, verified} {
				resp, err := http.Get(p.srv.URL + "/v2/library/app/manifests/v1")
				if err != nil || resp.StatusCode != 200 {
					b.Fatalf("manifest: %v %v", resp, err)
				}
				resp.Body.Close()
				get(p) // stores it (the first), then warm
			}
			b.SetBytes(2 * size)
			var plainNS, verifiedNS time.Duration
			for b.Loop() {
				plainNS += get(plain)
				verifiedNS += get(verified)
			}
			n := float64(b.N)
			b.ReportMetric(float64(plainNS.Microseconds())/n/1000, "plain-ms/get")
			b.ReportMetric(float64(verifiedNS.Microseconds())/n/1000, "verified-ms/get")
			b.ReportMetric(float64(verifiedNS)/float64(plainNS), "verified/plain")
		})
	}
}
