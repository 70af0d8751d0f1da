package scan

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/cache"
	"github.com/trustproxy/trustproxy/internal/severity"
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
	p := &config.ScanPolicy{Severity: severity.Critical, Missing: config.MissingWait, MaxReportAge: time.Hour, Wait: time.Millisecond}
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

// holdingAdapter is a scanner adapter whose scans report (clean) only once
// released; it keeps the digests of the scan requests, in order.
type holdingAdapter struct {
	*httptest.Server
	stop     chan struct{}
	mu       sync.Mutex
	order    []digest.Digest
	released map[digest.Digest]chan struct{}
}

func startHoldingAdapter(t *testing.T) *holdingAdapter {
	a := &holdingAdapter{stop: make(chan struct{}), released: map[digest.Digest]chan struct{}{}}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/api/v1/metadata":
			w.Header().Set("Content-Type", mediaMetadata11)
			fmt.Fprintf(w, `{"scanner":{"name":"x"},"capabilities":[{"consumes_mime_types":["application/vnd.oci.image.manifest.v1+json"],"produces_mime_types":[%q]}]}`, ReportV11)
		case r.URL.Path == "/api/v1/scan":
			var req ScanRequest
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			d := digest.Digest(req.Artifact.Digest)
			a.mu.Lock()
			a.order = append(a.order, d)
			a.mu.Unlock()
			w.WriteHeader(http.StatusAccepted)
			fmt.Fprintf(w, `{"id":%q}`, d.Encoded())
		default: // /api/v1/scan/{id}/report: held until released
			d := digest.NewDigestFromEncoded(digest.SHA256, strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/api/v1/scan/"), "/report"))
			select {
			case <-a.release(d):
				w.Header().Set("Content-Type", ReportV11)
				fmt.Fprintf(w, `{"generated_at":"2025-01-01T00:00:00Z","artifact":{"digest":%q},"scanner":{"name":"x"},"severity":"Unknown","vulnerabilities":[]}`, d)
			case <-time.After(5 * time.Second):
				w.Header().Set("Refresh-After", "1")
				w.WriteHeader(http.StatusFound)
			case <-a.stop:
			case <-r.Context().Done():
			}
		}
	}))
	t.Cleanup(func() {
		close(a.stop)
		a.Close()
	})
	return a
}

// release returns the channel closed when d is released.
func (a *holdingAdapter) release(d digest.Digest) chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.released[d] == nil {
		a.released[d] = make(chan struct{})
	}
	return a.released[d]
}

// Release lets the scans of d report.
func (a *holdingAdapter) Release(d digest.Digest) { close(a.release(d)) }

// Scans returns the digests of the scan requests, in order.
func (a *holdingAdapter) Scans() []digest.Digest {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.order)
}

// waiter is a request under missing: wait, run beside the test.
type waiter struct {
	cancel  context.CancelFunc
	verdict chan Verdict
}

// waitFor has a request wait (up to a minute) for the verdict on repo@d.
func waitFor(t *testing.T, g *Gate, repo string, d digest.Digest) *waiter {
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	w := &waiter{cancel: cancel, verdict: make(chan Verdict, 1)}
	p := &config.ScanPolicy{Severity: severity.Critical, Missing: config.MissingWait, MaxReportAge: time.Hour, Wait: time.Minute}
	go func() {
		w.verdict <- g.Check(ctx, Subject{Repository: repo, Digest: d, MediaType: "application/vnd.oci.image.manifest.v1+json"}, p)
	}()
	return w
}

// queuedBy returns how many scans hold a slot and how many images queue,
// by repository.
func (g *Gate) queuedBy() (slots int, queued map[string]int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	queued = map[string]int{}
	for repo, q := range g.queue {
		queued[repo] = len(q)
	}
	return g.slots, queued
}

// until polls cond for up to 10 s.
func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
	}
}

const (
	oldRepo = "docker.io/library/old"
	newRepo = "docker.io/library/app"
)

func digests(prefix string, n int) []digest.Digest {
	var out []digest.Digest
	for i := range n {
		out = append(out, digest.FromString(fmt.Sprint(prefix, i)))
	}
	return out
}

// A slot that frees goes to the queued repository with the fewest scans
// running, not to the repository that queued first and most.
func TestScanQueueFairAcrossRepositories(t *testing.T) {
	a := startHoldingAdapter(t)
	g := testGate(t, []config.Scanner{{Name: "a", URL: a.URL}})
	old := digests("old", 28)
	waiters := map[digest.Digest]*waiter{}
	for _, d := range old {
		waiters[d] = waitFor(t, g, oldRepo, d)
	}
	until(t, "8 old scans running, 20 queued", func() bool {
		slots, queued := g.queuedBy()
		return slots == maxScans && queued[oldRepo] == 20 && len(a.Scans()) == 8
	})
	fresh := digest.FromString("new")
	w := waitFor(t, g, newRepo, fresh)
	until(t, "the new image queued", func() bool { _, queued := g.queuedBy(); return queued[newRepo] == 1 })

	first := a.Scans()[0]
	a.Release(first)
	if v := <-waiters[first].verdict; !v.Pass {
		t.Fatalf("released old image: %+v", v)
	}
	until(t, "a ninth scan", func() bool { return len(a.Scans()) >= 9 })
	if next := a.Scans()[8]; next != fresh {
		t.Fatalf("the freed slot went to %s, want the new repository's %s", next, fresh)
	}
	a.Release(fresh)
	if v := <-w.verdict; !v.Pass {
		t.Fatalf("new image: %+v", v)
	}
}

// The queue holds maxQueued images. When it is full, a repository with
// fewer queued takes the place of the longest one's newest entry, whose
// request is told scan_pending; the longest one's next request is refused
// at once. A request that stops waiting takes its image off the queue.
func TestScanQueueBounded(t *testing.T) {
	a := startHoldingAdapter(t)
	g := testGate(t, []config.Scanner{{Name: "a", URL: a.URL}})
	old := digests("old", maxScans+maxQueued)
	waiters := map[digest.Digest]*waiter{}
	for _, d := range old {
		waiters[d] = waitFor(t, g, oldRepo, d)
		until(t, "request under way", func() bool { slots, queued := g.queuedBy(); return slots+queued[oldRepo] == len(waiters) })
	}

	full := waitFor(t, g, oldRepo, digest.FromString("one more old"))
	if v := <-full.verdict; v.Pass || v.Reason != ReasonPending || !strings.Contains(v.Detail, "the scan queue is full (64 images wait for one of 8 scan slots)") {
		t.Fatalf("an old image beyond the bound: %+v", v)
	}
	shared := waitFor(t, g, oldRepo, old[len(old)-2]) // already queued: shares its entry
	if _, queued := g.queuedBy(); queued[oldRepo] != maxQueued {
		t.Fatalf("queued %v", queued)
	}

	fresh := waitFor(t, g, newRepo, digest.FromString("new"))
	until(t, "the new image queued", func() bool { _, queued := g.queuedBy(); return queued[newRepo] == 1 })
	newest := waiters[old[len(old)-1]]
	if v := <-newest.verdict; v.Pass || v.Reason != ReasonPending || !strings.Contains(v.Detail, "went to a repository with fewer images queued") {
		t.Fatalf("the old repository's newest entry: %+v", v)
	}
	if _, queued := g.queuedBy(); queued[oldRepo] != maxQueued-1 {
		t.Fatalf("queued %v", queued)
	}

	fresh.cancel()
	if v := <-fresh.verdict; v.Reason != ReasonPending || !strings.Contains(v.Detail, "queued for one of the 8 scan slots") {
		t.Fatalf("the new image's request, ended while queued: %+v", v)
	}
	until(t, "the new image off the queue", func() bool { _, queued := g.queuedBy(); return queued[newRepo] == 0 })
	waiters[old[len(old)-2]].cancel()
	shared.cancel()
	until(t, "an old image off the queue once nobody waits for it", func() bool {
		_, queued := g.queuedBy()
		return queued[oldRepo] == maxQueued-2
	})
	if n := len(a.Scans()); n != maxScans {
		t.Fatalf("%d scans started, want %d", n, maxScans)
	}
}

// A scan credential skips the gate for its digest until a report that
// arrived after it was minted fails the policy.
func TestCheckCredential(t *testing.T) {
	d := digest.FromString("image")
	report := func(vulns ...Vulnerability) []byte {
		b, _ := json.Marshal(Report{GeneratedAt: time.Now(), Artifact: Artifact{Digest: d.String()}, Scanner: ScannerInfo{Name: "ci"}, Vulnerabilities: vulns})
		return b
	}
	clean, vulnerable := report(), report(Vulnerability{ID: "CVE-2024-3094", Package: "xz-utils", Version: "5.6.0", Severity: "Critical"})
	p := &config.ScanPolicy{Severity: severity.High, Missing: config.MissingWait, MaxReportAge: time.Hour, Wait: time.Second}
	tests := []struct {
		name          string
		before, after []byte // the reports posted before and after the credential was minted
		pass          bool
	}{
		{name: "no report", pass: true},
		{name: "minted beside a failing report (a rescan)", before: vulnerable, pass: true},
		{name: "a clean report since", before: vulnerable, after: clean, pass: true},
		{name: "a failing report since", before: clean, after: vulnerable},
		{name: "a failing report since, none before", after: vulnerable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := testGate(t, nil)
			now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
			g.now = func() time.Time { return now }
			if tt.before != nil {
				if err := g.Accept(d, tt.before); err != nil {
					t.Fatal(err)
				}
			}
			now = now.Add(time.Second)
			gr := g.grant(Subject{Repository: "docker.io/library/app", Digest: d})
			if tt.after != nil {
				now = now.Add(time.Second)
				if err := g.Accept(d, tt.after); err != nil {
					t.Fatal(err)
				}
			}
			v := g.CheckCredential(gr, p)
			if v.Pass != tt.pass {
				t.Fatalf("verdict %+v, want pass %v", v, tt.pass)
			}
			if !v.Pass && (v.Reason != ReasonVulnerable || !strings.Contains(v.Detail, "CVE-2024-3094") ||
				!strings.Contains(v.Detail, "the scan credential no longer skips the scan gate: this report (ci, received 2025-01-01T00:00:02Z) arrived after it was minted")) {
				t.Fatalf("refusal %+v", v)
			}
		})
	}
}
