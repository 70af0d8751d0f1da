package scan

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/cache"
)

// The scan gate's refusal reasons.
const (
	ReasonVulnerable  = "vulnerable"       // a report finds what the policy blocks
	ReasonPending     = "scan_pending"     // no report yet: a scan is under way
	ReasonMissing     = "scan_missing"     // no (fresh) report, and the policy blocks until there is one
	ReasonUnavailable = "scan_unavailable" // no scanner could scan the image
)

// Subject is a manifest to scan, in the repository it is pulled from.
type Subject struct {
	Repository string        // the GUN, e.g. docker.io/library/app: the scanner pulls it from trustproxy under this name
	Digest     digest.Digest // the image manifest
	MediaType  string        // its media type
}

// A Verdict is what the gate says about one manifest.
type Verdict struct {
	Pass   bool
	Reason string // when refused: one of the Reason constants
	Detail string // for a person: the worst finding, or what is missing
	// Report is the report that decided, with where it came from and when.
	Report   *Report
	Source   string
	Received time.Time
}

// Gate decides whether a manifest's vulnerability scan passes a rule's
// policy, and has it scanned when it has no fresh report. Reports are kept
// in a cache.ReportStore by digest; concurrent requests for one digest
// share one scan.
type Gate struct {
	cfg      config.Scan
	adapters []*Adapter
	store    *cache.ReportStore
	creds    *Credentials
	log      *slog.Logger
	now      func() time.Time

	mu        sync.Mutex
	running   map[digest.Digest]*run
	summaries *lru.Cache[summaryKey, *Report]    // parsed reports, by digest and time received
	recents   *lru.Cache[digest.Digest, recent]  // stored reports' envelopes, read within recentTTL
	failed    *lru.Cache[digest.Digest, failure] // scans that failed, not started again for failedScanTTL
	meta      map[string]*metadataEntry          // adapter metadata, by scanner name

	scans *prometheus.CounterVec
}

// maxScans bounds the scans running at once: requests for more digests
// are told the scan is pending, and start none.
const maxScans = 8

// errBusy is why no scan was started: maxScans are running.
var errBusy = fmt.Errorf("%d scans are running, the most trustproxy runs at once; retry shortly", maxScans)

// failedScanTTL is how long a failed scan is remembered: requests meanwhile
// are refused with its reason instead of starting another.
const failedScanTTL = 30 * time.Second

// metadataTTL is how long an adapter's metadata is reused.
const metadataTTL = 5 * time.Minute

type failure struct {
	err   error
	until time.Time
}

type metadataEntry struct {
	m     *Metadata
	until time.Time
}

// run is a scan under way; done is closed when err and report are set.
type run struct {
	done   chan struct{}
	report *cache.StoredReport
	err    error
}

// NewGate returns the gate of cfg, keeping reports in store. Metrics go to
// reg.
func NewGate(cfg config.Scan, store *cache.ReportStore, creds *Credentials, hc func(config.Scanner) (*http.Client, error), log *slog.Logger, reg prometheus.Registerer) (*Gate, error) {
	failed, err := lru.New[digest.Digest, failure](4096)
	if err != nil {
		return nil, err
	}
	summaries, err := lru.New[summaryKey, *Report](1024)
	if err != nil {
		return nil, err
	}
	recents, err := lru.New[digest.Digest, recent](4096)
	if err != nil {
		return nil, err
	}
	g := &Gate{cfg: cfg, store: store, creds: creds, log: log.With("component", "scan"), now: time.Now,
		running: map[digest.Digest]*run{}, failed: failed, summaries: summaries, recents: recents, meta: map[string]*metadataEntry{},
		scans: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustproxy_scans_total",
			Help: "Scans requested from scanner adapters, by scanner and result (ok, or why it failed).",
		}, []string{"scanner", "result"}),
	}
	for _, s := range cfg.Scanners {
		c, err := hc(s)
		if err != nil {
			return nil, fmt.Errorf("scan.scanners %s: %w", s.Name, err)
		}
		g.adapters = append(g.adapters, NewAdapter(s.Name, s.URL, s.Authorization, c))
	}
	if reg != nil {
		if err := reg.Register(g.scans); err != nil {
			return nil, err
		}
	}
	return g, nil
}

// Credentials checks the pull credentials the gate's scan requests carry.
func (g *Gate) Credentials() *Credentials { return g.creds }

// Check says whether s passes policy p: a fresh report finding nothing that
// p blocks. Without one a scan is started, and p.Missing says what the
// request gets meanwhile: refused (block), held up to p.Wait for the scan
// (wait), or served (allow). A report too old to let an image through
// still refuses it when it finds what p blocks.
func (g *Gate) Check(ctx context.Context, s Subject, p *config.ScanPolicy) Verdict {
	threshold, err := ParseSeverity(p.Severity)
	if err != nil {
		threshold = SeverityCritical // config validated it; fail towards blocking
	}
	stored, stale, why := g.stored(s.Digest, p)
	if stored != nil && !stale {
		return g.judge(stored, threshold, p)
	}
	r, startErr := g.start(s)
	if stored != nil {
		if v := g.judge(stored, threshold, p); !v.Pass {
			v.Detail += fmt.Sprintf(" (report of %s, older than max_report_age; %s)", stored.Received.UTC().Format(time.RFC3339), strings.TrimPrefix(scanNote(startErr), "; "))
			return v
		}
	}
	switch p.Missing {
	case config.MissingAllow:
		return Verdict{Pass: true, Detail: why + "; served as the policy allows (missing: allow)" + scanNote(startErr)}
	case config.MissingBlock:
		return Verdict{Reason: ReasonMissing, Detail: why + "; the policy refuses images without one (missing: block)" + scanNote(startErr)}
	}
	if r == nil {
		if errors.Is(startErr, errBusy) {
			return Verdict{Reason: ReasonPending, Detail: "scan pending: " + startErr.Error()}
		}
		return Verdict{Reason: ReasonUnavailable, Detail: "no scanner could scan this image: " + clientReason(startErr)}
	}
	wait := time.NewTimer(p.Wait)
	defer wait.Stop()
	select {
	case <-r.done:
		if r.err != nil {
			return Verdict{Reason: ReasonUnavailable, Detail: "no scanner could scan this image: " + clientReason(r.err)}
		}
		return g.judge(r.report, threshold, p)
	case <-wait.C:
	case <-ctx.Done():
	}
	return Verdict{Reason: ReasonPending, Detail: fmt.Sprintf("scan pending (waited %s); retry shortly", p.Wait)}
}

// scanNote says whether a scan was started.
func scanNote(err error) string {
	if err != nil {
		return " (no scan could be started: " + clientReason(err) + ")"
	}
	return "; a scan was started"
}

// clientReason is what a client is told of a scanner's failure: the
// error, without anything that reads as a scan credential, and short. The
// whole error is in the log.
func clientReason(err error) string {
	msg := credentialPattern.ReplaceAllString(err.Error(), credentialPrefix+"<redacted>")
	if len(msg) > 300 {
		msg = msg[:300] + "... (see trustproxy's log)"
	}
	return msg
}

var credentialPattern = regexp.MustCompile(regexp.QuoteMeta(credentialPrefix) + `[A-Za-z0-9_.\-]*`)

// stored returns the stored report of d, whether it is older than p
// allows, and (when there is no fresh one) why.
func (g *Gate) stored(d digest.Digest, p *config.ScanPolicy) (*cache.StoredReport, bool, string) {
	stored, err := g.recentReport(d)
	switch {
	case err != nil:
		g.log.Error("cannot read a stored scan report; scanning again", "digest", d, "err", err)
		return nil, false, "no usable scan report for this image"
	case stored == nil:
		return nil, false, "no scan report for this image"
	case g.now().Sub(stored.Received) > p.MaxReportAge:
		return stored, true, fmt.Sprintf("the scan report of this image is from %s, older than max_report_age (%s)",
			stored.Received.UTC().Format(time.RFC3339), p.MaxReportAge)
	}
	return stored, false, ""
}

// recentTTL is how long a stored report's envelope is reused without
// reading the store again: pulls of one image in a row read a report of
// megabytes once. A report stored meanwhile by another replica is seen
// within it.
const recentTTL = 2 * time.Second

// recent is a stored report's envelope (Report left out: its summary is
// cached) and when it was read.
type recent struct {
	stored *cache.StoredReport
	at     time.Time
}

// recentReport returns the stored report of d, from the store at most
// once per recentTTL.
func (g *Gate) recentReport(d digest.Digest) (*cache.StoredReport, error) {
	if r, ok := g.recents.Get(d); ok && g.now().Sub(r.at) < recentTTL {
		return r.stored, nil
	}
	stored, err := g.store.Get(d)
	if err != nil || stored == nil {
		return stored, err
	}
	envelope := *stored
	envelope.Report = nil
	g.recents.Add(d, recent{stored: &envelope, at: g.now()})
	return stored, nil
}

// judge applies p to a stored report.
func (g *Gate) judge(stored *cache.StoredReport, threshold Severity, p *config.ScanPolicy) Verdict {
	r, err := g.summary(stored)
	if err != nil {
		g.log.Error("stored scan report does not read", "digest", stored.Digest, "err", err)
		return Verdict{Reason: ReasonUnavailable, Detail: "the stored scan report does not read: " + err.Error()}
	}
	v := Verdict{Pass: true, Report: r, Source: stored.Source, Received: stored.Received}
	now := g.now()
	allowed := func(id string) bool {
		return slices.ContainsFunc(p.Allowlist, func(a config.AllowedVulnerability) bool {
			return strings.EqualFold(a.ID, id) && now.Before(a.Expires)
		})
	}
	if f := r.Blocking(threshold, allowed); f != nil {
		v.Pass, v.Reason, v.Detail = false, ReasonVulnerable, f.Describe(threshold)
	}
	return v
}

// summary returns the report of stored without descriptions and links,
// parsed once per stored report (a scanner's report may be megabytes).
func (g *Gate) summary(stored *cache.StoredReport) (*Report, error) {
	key := summaryKey{stored.Digest, stored.Received.UnixNano()}
	if r, ok := g.summaries.Get(key); ok {
		return r, nil
	}
	if stored.Report == nil { // an envelope from recentReport whose summary was evicted
		full, err := g.store.Get(stored.Digest)
		if err != nil || full == nil {
			return nil, fmt.Errorf("the stored scan report is gone: %v", err)
		}
		stored = full
	}
	r, err := ParseReport(stored.Report)
	if err != nil {
		return nil, err
	}
	for i := range r.Vulnerabilities {
		r.Vulnerabilities[i].Description, r.Vulnerabilities[i].Links = "", nil
	}
	r.Vulnerabilities = slices.Clip(r.Vulnerabilities)
	g.summaries.Add(key, r)
	return r, nil
}

// summaryKey names one stored report.
type summaryKey struct {
	digest   digest.Digest
	received int64
}

// Scan starts a scan of s (unless one is under way) and waits for it, up
// to ctx: `trustproxy check --scan`.
func (g *Gate) Scan(ctx context.Context, s Subject) (*cache.StoredReport, error) {
	g.failed.Remove(s.Digest)
	r, err := g.start(s)
	if r == nil {
		return nil, err
	}
	select {
	case <-r.done:
		return r.report, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Prefetch starts a scan of s if it has no fresh report under p: a newly
// verified manifest is scanned before a client asks for it again.
func (g *Gate) Prefetch(s Subject, p *config.ScanPolicy) {
	if stored, stale, _ := g.stored(s.Digest, p); stored == nil || stale {
		g.start(s)
	}
}

// start returns the scan of s under way, or starts one. It returns nil and
// why when none can run: no scanner is configured, or the last scan of s
// failed less than failedScanTTL ago.
func (g *Gate) start(s Subject) (*run, error) {
	if len(g.adapters) == 0 {
		return nil, errors.New("no scanner is configured (scan.scanners); post a report from CI")
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if r, ok := g.running[s.Digest]; ok {
		return r, nil
	}
	if f, ok := g.failed.Get(s.Digest); ok && g.now().Before(f.until) {
		return nil, f.err
	}
	if len(g.running) >= maxScans {
		return nil, errBusy
	}
	r := &run{done: make(chan struct{})}
	g.running[s.Digest] = r
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), g.cfg.Timeout)
		defer cancel()
		r.report, r.err = g.scan(ctx, s)
		if r.err != nil {
			g.log.Warn("scan failed", "repo", s.Repository, "digest", s.Digest, "err", r.err, "retry_after", failedScanTTL)
		}
		g.mu.Lock()
		delete(g.running, s.Digest)
		if r.err != nil {
			g.failed.Add(s.Digest, failure{err: r.err, until: g.now().Add(failedScanTTL)})
		}
		g.mu.Unlock()
		close(r.done)
	}()
	return r, nil
}

// scan has s scanned by every scanner that consumes its media type, and
// stores the merged report. It fails when any of them fails: a report
// is only as good as every scan the policy asked for.
func (g *Gate) scan(ctx context.Context, s Subject) (*cache.StoredReport, error) {
	var capable []*Adapter
	var reportTypes []string
	var problems []string
	for _, a := range g.adapters {
		m, err := g.metadata(ctx, a)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		if t, ok := m.ReportType(s.MediaType); ok {
			capable, reportTypes = append(capable, a), append(reportTypes, t)
		}
	}
	if len(problems) > 0 {
		// A scanner that cannot say what it scans might have scanned this:
		// a report without it is not the report the policy asked for.
		return nil, errors.New(strings.Join(problems, "; "))
	}
	if len(capable) == 0 {
		return nil, fmt.Errorf("no configured scanner consumes %s", s.MediaType)
	}
	merged := &Report{GeneratedAt: g.now().UTC(), Artifact: Artifact{Repository: s.Repository, Digest: s.Digest.String(), MimeType: s.MediaType}}
	var sources []string
	for i, a := range capable {
		r, err := g.scanWith(ctx, a, reportTypes[i], s)
		if err != nil {
			g.scans.WithLabelValues(a.Name(), "error").Inc()
			return nil, err
		}
		g.scans.WithLabelValues(a.Name(), "ok").Inc()
		merged.Scanner = r.Scanner
		merged.Vulnerabilities = append(merged.Vulnerabilities, r.Vulnerabilities...)
		sources = append(sources, a.Name())
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(merged); err != nil {
		return nil, err
	}
	b := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	if len(b) > MaxReportBytes {
		return nil, fmt.Errorf("the reports of %s come to %d bytes, over the %d-byte limit", strings.Join(sources, ", "), len(b), MaxReportBytes)
	}
	stored := &cache.StoredReport{Digest: s.Digest, Source: strings.Join(sources, "+"), Received: g.now().UTC(), Report: b}
	if err := g.store.Put(stored); err != nil {
		return nil, fmt.Errorf("store the scan report: %w", err)
	}
	g.recents.Remove(s.Digest)
	g.log.Info("scanned", "repo", s.Repository, "digest", s.Digest, "scanners", stored.Source, "vulnerabilities", len(merged.Vulnerabilities))
	return stored, nil
}

// scanWith runs one scan on a: the request, with a pull credential for
// s, then the report, polled as the adapter's Refresh-After says.
func (g *Gate) scanWith(ctx context.Context, a *Adapter, reportType string, s Subject) (*Report, error) {
	auth := g.creds.Mint(Grant{Repository: s.Repository, Digest: s.Digest, Expires: g.now().Add(g.cfg.CredentialTTL)})
	id, err := a.Scan(ctx, ScanRequest{
		Registry:            Registry{URL: g.cfg.RegistryURL, Authorization: auth},
		Artifact:            Artifact{Repository: s.Repository, Digest: s.Digest.String(), MimeType: s.MediaType},
		EnabledCapabilities: []EnabledCapability{{Type: "vulnerability", ProducesMIMETypes: []string{reportType}}},
	})
	if err != nil {
		return nil, err
	}
	for {
		r, after, err := a.Report(ctx, id, reportType)
		if err != nil || r != nil {
			if r != nil && r.Artifact.Digest != s.Digest.String() {
				return nil, fmt.Errorf("scanner %s reported on %q, not on %s", a.Name(), r.Artifact.Digest, s.Digest)
			}
			return r, err
		}
		select {
		case <-time.After(after):
		case <-ctx.Done():
			return nil, fmt.Errorf("scanner %s did not report within scan.timeout (%s)", a.Name(), g.cfg.Timeout)
		}
	}
}

// metadata returns a's metadata, fetched at most every metadataTTL.
func (g *Gate) metadata(ctx context.Context, a *Adapter) (*Metadata, error) {
	g.mu.Lock()
	e := g.meta[a.Name()]
	g.mu.Unlock()
	if e != nil && g.now().Before(e.until) {
		return e.m, nil
	}
	m, err := a.Metadata(ctx)
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	g.meta[a.Name()] = &metadataEntry{m: m, until: g.now().Add(metadataTTL)}
	g.mu.Unlock()
	return m, nil
}

// Accept stores a report that CI posted for d. It must parse and be about
// d; nothing changes otherwise.
func (g *Gate) Accept(d digest.Digest, body []byte) error {
	r, err := ParseReport(body)
	if err != nil {
		return err
	}
	if r.Artifact.Digest != d.String() {
		return fmt.Errorf("the report is about %q, not %s", r.Artifact.Digest, d)
	}
	if err := g.store.Put(&cache.StoredReport{Digest: d, Source: "ci", Received: g.now().UTC(), Report: body}); err != nil {
		return err
	}
	g.recents.Remove(d)
	g.failed.Remove(d)
	g.log.Info("scan report posted", "digest", d, "vulnerabilities", len(r.Vulnerabilities))
	return nil
}
