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
//
// Scans take slots: at most maxScans run at once. A request that waits for
// a scan (missing: wait, or check --scan) whose digest has none under way
// queues for a slot, for up to its wait. It gets a free slot at once, or
// else the slot of a running scan that nobody waits for any more (started
// for a client under block or allow, a prefetch, or a waiter whose wait
// ended or who left) once that scan has had it for yieldAfter: that scan
// yields, trustproxy cancels it. A request that does not wait starts a
// scan only in a free slot while nobody queues, and never queues. So a
// scan nobody waits for runs only in a slot no waiter wants, and anonymous
// requests for many old images cannot make a waiting request fail before
// its wait is over: under such load it waits up to yieldAfter for a slot.
//
// The queue holds at most maxQueued images, one entry per digest, shared
// by the requests waiting for it. A slot that frees goes to the queued
// repository with the fewest scans running (round robin among equals, its
// oldest entry first), so that one repository's many digests cannot keep
// another repository out. When the queue is full, an image of a repository
// with at least two fewer entries than the longest takes the place of that
// repository's newest one, whose requests are told scan_pending; otherwise
// the request is told scan_pending at once. An entry whose requests have
// all stopped waiting leaves the queue.
type Gate struct {
	cfg      config.Scan
	adapters []*Adapter
	store    *cache.ReportStore
	creds    *Credentials
	log      *slog.Logger
	now      func() time.Time

	mu        sync.Mutex
	scans     map[digest.Digest]*run // running or queued, by digest: at most maxScans + maxQueued
	running   map[string]int         // scans holding a slot, by repository
	slots     int                    // scans holding a slot
	queue     map[string][]*run      // queued scans by repository, oldest first
	turns     []string               // repositories with queued scans, next turn first
	queued    int                    // scans queued, at most maxQueued
	wake      *time.Timer            // dispatches the queue when a scan nobody waits for may yield
	wakeAt    time.Time
	summaries *lru.Cache[summaryKey, *Report]    // parsed reports, by digest and time received
	recents   *lru.Cache[digest.Digest, recent]  // stored reports' envelopes, read within recentTTL
	failed    *lru.Cache[digest.Digest, failure] // scans that failed, not started again for failedScanTTL
	meta      map[string]*metadataEntry          // adapter metadata, by scanner name

	scansTotal  *prometheus.CounterVec
	queueLength prometheus.Gauge
	runningNow  prometheus.Gauge
	slotEvents  *prometheus.CounterVec
}

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

// run is a scan of s, queued or running; done is closed when it has ended
// (report or err set), or left the queue (err set). Fields but done are
// guarded by Gate.mu until done is closed.
type run struct {
	s       Subject
	waiters int                // requests waiting for it
	queued  bool               // waiting for a slot
	ended   bool               // no longer in Gate.scans: finished, yielded or out of the queue
	yielded bool               // cancelled to free its slot for a waiting request
	started time.Time          // when it took its slot
	cancel  context.CancelFunc // ends it, once running
	done    chan struct{}
	report  *cache.StoredReport
	err     error
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
		scans: map[digest.Digest]*run{}, running: map[string]int{}, queue: map[string][]*run{},
		failed: failed, summaries: summaries, recents: recents, meta: map[string]*metadataEntry{},
		scansTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustproxy_scans_total",
			Help: "Scans requested from scanner adapters, by scanner and result (ok, error, or yielded: cancelled for a waiting request).",
		}, []string{"scanner", "result"}),
		queueLength: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trustproxy_scan_queue_length",
			Help: fmt.Sprintf("Images whose waiting requests queue for a scan slot (at most %d).", maxQueued),
		}),
		runningNow: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trustproxy_scans_running",
			Help: fmt.Sprintf("Scans holding a slot (at most %d).", maxScans),
		}),
		slotEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustproxy_scan_slot_events_total",
			Help: "Scan slot events: queued (a waiting request found no slot), yielded (a scan nobody waited for was cancelled for a queued one), displaced (taken off the full queue for another repository), queue_full (refused), busy (a request that does not wait started no scan), elsewhere (another replica held the image's scan lease: its report was awaited).",
		}, []string{"event"}),
	}
	for _, s := range cfg.Scanners {
		c, err := hc(s)
		if err != nil {
			return nil, fmt.Errorf("scan.scanners %s: %w", s.Name, err)
		}
		g.adapters = append(g.adapters, NewAdapter(s.Name, s.URL, s.Authorization, c))
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{g.scansTotal, g.queueLength, g.runningNow, g.slotEvents} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return g, nil
}

// Credentials checks the pull credentials the gate's scan requests carry.
func (g *Gate) Credentials() *Credentials { return g.creds }

// Check says whether s passes policy p: a fresh report finding nothing that
// p blocks. Without one a scan is started, and p.Missing says what the
// request gets meanwhile: refused (block), held up to p.Wait for the scan,
// queueing for a slot if need be (wait), or served (allow). A report too
// old to let an image through still refuses it when it finds what p
// blocks. A request that ends (ctx) stops waiting.
func (g *Gate) Check(ctx context.Context, s Subject, p *config.ScanPolicy) Verdict {
	stored, stale, why := g.stored(s.Digest, p)
	if stored != nil && !stale {
		return g.judge(stored, p)
	}
	if stored != nil {
		if v := g.judge(stored, p); !v.Pass {
			v.Detail += fmt.Sprintf(" (report of %s, older than max_report_age; %s)", stored.Received.UTC().Format(time.RFC3339), strings.TrimPrefix(scanNote(g.kick(s)), "; "))
			return v
		}
	}
	switch p.Missing {
	case config.MissingAllow:
		return Verdict{Pass: true, Detail: why + "; served as the policy allows (missing: allow)" + scanNote(g.kick(s))}
	case config.MissingBlock:
		return Verdict{Reason: ReasonMissing, Detail: why + "; the policy refuses images without one (missing: block)" + scanNote(g.kick(s))}
	}
	r, err := g.await(s)
	if r == nil {
		return unscanned(err)
	}
	wait := time.NewTimer(p.Wait)
	defer wait.Stop()
	select {
	case <-r.done:
		if r.err != nil {
			return unscanned(r.err)
		}
		return g.judge(r.report, p)
	case <-wait.C:
	case <-ctx.Done():
	}
	if g.leave(r) {
		return Verdict{Reason: ReasonPending, Detail: fmt.Sprintf("scan pending (waited %s, queued for one of the %d scan slots); retry shortly", p.Wait, maxScans)}
	}
	return Verdict{Reason: ReasonPending, Detail: fmt.Sprintf("scan pending (waited %s); retry shortly", p.Wait)}
}

// CheckCredential is the verdict on a pull of gr's own manifest with its
// scan credential, under p: the gate is skipped, as the scanner must pull
// what it scans, unless a report that arrived after the credential was
// minted fails p (its scan has ended, or CI found what p blocks
// meanwhile). Then the credential skips nothing any more and the pull gets
// that report's refusal.
//
// A credential is not instead valid only while its scan is in progress:
// a scan is in progress in one process, but the scanner pulls from
// whichever replica registry_url reaches (or from serve, beside check
// --scan), and only reports are shared between them. The report stored
// when the credential was minted does not end it: that is the report its
// scan replaces (a stale one that refuses, say).
func (g *Gate) CheckCredential(gr Grant, p *config.ScanPolicy) Verdict {
	scanner := Verdict{Pass: true, Detail: "pulled by its scanner (scan credential)"}
	stored, err := g.recentReport(gr.Digest)
	switch {
	case err != nil:
		g.log.Error("cannot read a stored scan report to check a scan credential", "digest", gr.Digest, "err", err)
		return Verdict{Reason: ReasonUnavailable, Detail: "the scan credential cannot be checked: the stored scan report does not read"}
	case stored == nil, stored.Received.Equal(gr.Report):
		return scanner
	}
	v := g.judge(stored, p)
	if v.Pass {
		return scanner
	}
	v.Detail += fmt.Sprintf("; the scan credential no longer skips the scan gate: this report (%s, received %s) arrived after it was minted",
		stored.Source, stored.Received.UTC().Format(time.RFC3339))
	return v
}

// unscanned is the verdict on an image whose scan did not report: no slot
// (scan_pending) or no scanner could scan it (scan_unavailable).
func unscanned(err error) Verdict {
	if _, ok := errors.AsType[*slotError](err); ok {
		return Verdict{Reason: ReasonPending, Detail: "scan pending: " + err.Error()}
	}
	return Verdict{Reason: ReasonUnavailable, Detail: "no scanner could scan this image: " + clientReason(err)}
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

// judge applies p to a stored report: what is at or above p.Severity, and
// not excused by p.Allowlist, refuses.
func (g *Gate) judge(stored *cache.StoredReport, p *config.ScanPolicy) Verdict {
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
	if f := r.Blocking(p.Severity, allowed); f != nil {
		v.Pass, v.Reason, v.Detail = false, ReasonVulnerable, f.Describe(p.Severity)
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
// to ctx, queueing for a slot if need be: `trustproxy check --scan`.
func (g *Gate) Scan(ctx context.Context, s Subject) (*cache.StoredReport, error) {
	g.failed.Remove(s.Digest)
	r, err := g.await(s)
	if r == nil {
		return nil, err
	}
	select {
	case <-r.done:
		return r.report, r.err
	case <-ctx.Done():
		g.leave(r)
		return nil, ctx.Err()
	}
}

// Prefetch starts a scan of s if it has no fresh report under p and a slot
// is free: a newly verified manifest is scanned before a client asks for
// it again.
func (g *Gate) Prefetch(s Subject, p *config.ScanPolicy) {
	if stored, stale, _ := g.stored(s.Digest, p); stored == nil || stale {
		_ = g.kick(s)
	}
}

// errNoScanner is why no scan can run at all.
var errNoScanner = errors.New("no scanner is configured (scan.scanners); post a report from CI")

// scanPoll is how often a replica waiting for another replica's scan
// looks for its report.
const scanPoll = 200 * time.Millisecond

// scanOnce scans s, unless another replica sharing the report store holds
// the lease of its scan: then it waits for that replica's report (reports
// are shared), and scans here if the lease ends without one (that scan
// failed, or its replica died). So two replicas asked for a new image at
// once start one scan. Only a report read from the store ends the wait: a
// lease never stands for a report.
func (g *Gate) scanOnce(ctx context.Context, s Subject) (*cache.StoredReport, error) {
	var before time.Time // the report that was there, if any: the awaited one is newer
	if r, err := g.store.Get(s.Digest); err == nil && r != nil {
		before = r.Received
	}
	newer := func() *cache.StoredReport {
		r, err := g.store.Get(s.Digest)
		if err != nil || r == nil || !r.Received.After(before) {
			return nil
		}
		return r
	}
	for {
		lease, holder := g.store.LeaseScan(s.Digest)
		if holder == nil {
			if lease != nil {
				defer lease.Release()
			}
			return g.scan(ctx, s)
		}
		g.slotEvents.WithLabelValues("elsewhere").Inc()
		g.log.Info("another replica is scanning this image: waiting for its report", "repo", s.Repository, "digest", s.Digest)
		for {
			select {
			case <-time.After(scanPoll):
			case <-ctx.Done():
				return nil, fmt.Errorf("another replica's scan of this image did not report within scan.timeout (%s)", g.cfg.Timeout)
			}
			if r := newer(); r != nil {
				g.recents.Remove(s.Digest)
				return r, nil
			}
			if e := g.store.ScanLease(s.Digest); e == nil || e.Owner != holder.Owner || !g.now().Before(e.Until) {
				break // its scan ended without a report here, or its replica died: take the lease
			}
		}
		if r := newer(); r != nil {
			g.recents.Remove(s.Digest)
			return r, nil
		}
	}
}

// scan has s scanned by every scanner that consumes its media type, and
// stores the merged report. It fails when any of them fails: a report
// is only as good as every scan the policy asked for.
func (g *Gate) scan(ctx context.Context, s Subject) (*cache.StoredReport, error) {
	started := g.now().UTC() // the report's time: one received meanwhile (CI's) is newer and stands
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
			result := "error"
			if errors.Is(ctx.Err(), context.Canceled) {
				result = "yielded"
			}
			g.scansTotal.WithLabelValues(a.Name(), result).Inc()
			return nil, err
		}
		g.scansTotal.WithLabelValues(a.Name(), "ok").Inc()
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
	scanned := &cache.StoredReport{Digest: s.Digest, Source: strings.Join(sources, "+"), Received: started, Report: b}
	stored, err := g.store.Put(scanned)
	if err != nil {
		return nil, fmt.Errorf("store the scan report: %w", err)
	}
	g.recents.Remove(s.Digest)
	g.log.Info("scanned", "repo", s.Repository, "digest", s.Digest, "scanners", scanned.Source, "vulnerabilities", len(merged.Vulnerabilities))
	if stored != scanned {
		g.log.Info("a report received during the scan is newer and stands", "digest", s.Digest, "source", stored.Source, "received", stored.Received)
	}
	return stored, nil
}

// scanWith runs one scan on a: the request, with a pull credential for
// s, then the report, polled as the adapter's Refresh-After says.
func (g *Gate) scanWith(ctx context.Context, a *Adapter, reportType string, s Subject) (*Report, error) {
	auth := g.creds.Mint(g.grant(s))
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

// grant is what the pull credential of a scan of s allows: s, for
// scan.credential_ttl, skipping the gate until a report other than the one
// stored now arrives and fails the policy (CheckCredential).
func (g *Gate) grant(s Subject) Grant {
	gr := Grant{Repository: s.Repository, Digest: s.Digest, Expires: g.now().Add(g.cfg.CredentialTTL)}
	if stored, err := g.recentReport(s.Digest); err == nil && stored != nil {
		gr.Report = stored.Received
	}
	return gr
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
	if _, err := g.store.Put(&cache.StoredReport{Digest: d, Source: "ci", Received: g.now().UTC(), Report: body}); err != nil {
		return err
	}
	g.recents.Remove(d)
	g.failed.Remove(d)
	g.log.Info("scan report posted", "digest", d, "vulnerabilities", len(r.Vulnerabilities))
	return nil
}
