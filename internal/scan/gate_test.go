package scan

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/cache"
)

func testGate(t *testing.T, scanners []config.Scanner) *Gate {
	t.Helper()
	store, err := cache.NewReportStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	creds, err := NewCredentials(make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	g, err := NewGate(config.Scan{RegistryURL: "http://tp", Scanners: scanners, CredentialTTL: time.Minute, Timeout: time.Minute},
		store, creds, func(config.Scanner) (*http.Client, error) { return http.DefaultClient, nil }, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// Anonymous requests for many digests start at most maxScans scans; the
// others are told the scan is pending.
func TestScansBounded(t *testing.T) {
	var running, peak atomic.Int64
	adapter := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/v1/metadata":
			w.Header().Set("Content-Type", mediaMetadata11)
			fmt.Fprintf(w, `{"scanner":{"name":"x"},"capabilities":[{"consumes_mime_types":["application/vnd.oci.image.manifest.v1+json"],"produces_mime_types":[%q]}]}`, ReportV11)
		case "/api/v1/scan":
			n := running.Add(1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			w.WriteHeader(http.StatusAccepted)
			fmt.Fprintf(w, `{"id":"%d"}`, n)
		default: // never done
			w.Header().Set("Refresh-After", "60")
			w.WriteHeader(http.StatusFound)
		}
	}))
	t.Cleanup(adapter.Close)
	g := testGate(t, []config.Scanner{{Name: "a", URL: adapter.URL}})
	p := &config.ScanPolicy{Severity: "critical", Missing: config.MissingWait, MaxReportAge: time.Hour, Wait: time.Millisecond}
	pending := 0
	for i := range 100 {
		v := g.Check(context.Background(), Subject{Repository: "docker.io/library/app", Digest: digest.FromString(fmt.Sprint(i)),
			MediaType: "application/vnd.oci.image.manifest.v1+json"}, p)
		if v.Pass {
			t.Fatal("passed without a report")
		}
		if v.Reason == ReasonPending {
			pending++
		}
	}
	time.Sleep(200 * time.Millisecond)
	if peak.Load() > maxScans || pending != 100 {
		t.Fatalf("%d scans at once (want at most %d); %d of 100 requests pending", peak.Load(), maxScans, pending)
	}
}

// A report accepted is a report that reads back, whatever its characters.
func TestAcceptedReportReadsBack(t *testing.T) {
	g := testGate(t, nil)
	d := digest.FromString("image")
	body, _ := json.Marshal(Report{GeneratedAt: time.Now(), Artifact: Artifact{Digest: d.String()}, Scanner: ScannerInfo{Name: "ci"},
		Vulnerabilities: []Vulnerability{{ID: "CVE-1", Severity: "Low", Description: strings.Repeat("<", 4<<20)}}})
	body = []byte(strings.ReplaceAll(string(body), `\u003c`, "<")) // as CI may send it
	if err := g.Accept(d, body); err != nil {
		t.Fatalf("Accept: %v", err)
	}
	if _, err := g.store.Get(d); err != nil {
		t.Fatalf("a report accepted cannot be read back: %v", err)
	}
}
