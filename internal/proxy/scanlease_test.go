package proxy_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/scan"
	"github.com/trustproxy/trustproxy/internal/testenv"
)

// scanReplicas starts two replicas of one deployment, each scanning under
// missing: wait, the scanner pulling from the replica that asked.
func scanReplicas(t *testing.T, w *scanWorld, d *testenv.Deployment) (*instance, *instance) {
	t.Helper()
	replica := func() *instance {
		return w.startWith(t, "scan: {missing: wait, wait: 20s}", func(own string) string {
			return d.YAML() + scanners(own, "test-adapter", w.scanner.URL()) + "  timeout: 20s\n"
		})
	}
	return replica(), replica()
}

// Two replicas asked at once for a new image start one scan between them:
// the scan lease on Redis. The other waits for the report, which it reads
// from Redis, and both give the same verdict: a clean image served by
// both, a vulnerable one refused by both.
func TestScanOncePerImageAcrossReplicas(t *testing.T) {
	w := newScanWorld(t)
	d := testenv.NewDeployment(t, testenv.StartRedis(t, ""))
	clean := w.signedImage(t, "v1")
	vulnerable := w.signedImage(t, "v2")
	w.scanner.SetReport(vulnerable, []scan.Vulnerability{xz})
	w.scanner.Hold(clean)
	w.scanner.Hold(vulnerable)
	a, b := scanReplicas(t, w, d)

	type result struct {
		replica, tag string
		status       int
		body         []byte
	}
	results := make(chan result, 4)
	for _, r := range []*instance{a, b} {
		for _, tag := range []string{"v1", "v2"} {
			go func() {
				status, _, body := r.get(t, http.MethodGet, "/v2/library/app/manifests/"+tag)
				results <- result{r.host, tag, status, body}
			}()
		}
	}
	// Both replicas have asked: one scans each image, the other waits for it.
	eventually(t, "one replica waiting for the other's scans", func() bool {
		return a.counter(t, "trustproxy_scan_slot_events_total", "event", "elsewhere")+
			b.counter(t, "trustproxy_scan_slot_events_total", "event", "elsewhere") >= 2
	})
	w.scanner.Release(clean)
	w.scanner.Release(vulnerable)
	for range 4 {
		r := <-results
		switch r.tag {
		case "v1":
			if r.status != 200 {
				t.Errorf("clean image on %s: %d %s", r.replica, r.status, r.body)
			}
		case "v2":
			wantDenied(t, r.status, r.body, proxy.Reason(scan.ReasonVulnerable))
		}
	}
	for _, dg := range []digest.Digest{clean, vulnerable} {
		if n := w.scanner.ScanRequests(dg); n != 1 {
			t.Errorf("%d scans of %s by two replicas asked at once, want 1", n, dg)
		}
	}
}

// A scan lease planted on Redis (not sealed) holds no scan off, and stands
// for no report: the replica scans, and serves on the report.
func TestScanLeasePlantedDoesNotHoldScans(t *testing.T) {
	w := newScanWorld(t)
	rs := testenv.StartRedis(t, "")
	d := testenv.NewDeployment(t, rs)
	clean := w.signedImage(t, "v1")
	vulnerable := w.signedImage(t, "v2")
	w.scanner.SetReport(vulnerable, []scan.Vulnerability{xz})
	a, _ := scanReplicas(t, w, d)
	attacker := newRedisWriter(t, rs.Addr())
	for _, dg := range []digest.Digest{clean, vulnerable} {
		attacker.set("trustproxy:scan:lease:"+dg.String(), []byte(`{"owner":"someone","until":"2999-01-01T00:00:00Z"}`))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if got := fetch(ctx, a, "/v2/library/app/manifests/v1"); got.status != 200 {
		t.Fatalf("clean image under a planted lease: %d %s", got.status, got.body)
	}
	status, _, body := a.get(t, http.MethodGet, "/v2/library/app/manifests/v2")
	wantDenied(t, status, body, proxy.Reason(scan.ReasonVulnerable))
	for _, dg := range []digest.Digest{clean, vulnerable} {
		if n := w.scanner.ScanRequests(dg); n != 1 {
			t.Errorf("%d scans of %s under a planted lease, want 1", n, dg)
		}
	}
}
