package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/internal/scan"
	"github.com/trustproxy/trustproxy/internal/severity"
)

// ScannerFault is how a Scanner misbehaves.
type ScannerFault int

// Scanner faults. Report faults apply to scan ids the adapter knows, whatever the state of the scan.
const (
	ScannerOK        ScannerFault = iota
	ScannerDown                   // every request: the connection is closed without an answer
	ScannerError500               // report: 500 with an ErrorResponse
	ScannerGarbage                // report: 200 with a body that is not JSON
	ScannerOversized              // report: 200 with a body over scan.MaxReportBytes, no Content-Length
)

// Media types the test adapter speaks, besides the scan package's.
const (
	mediaOCIManifest    = "application/vnd.oci.image.manifest.v1+json"
	mediaOCIIndex       = "application/vnd.oci.image.index.v1+json"
	mediaDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	mediaDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"

	mediaScannerMetadata = "application/vnd.scanner.adapter.metadata+json; version=1.1"
	mediaScanResponse    = "application/vnd.scanner.adapter.scan.response+json; version=1.0"
	mediaScannerError    = "application/vnd.scanner.adapter.error+json; version=1.0"
	mediaScanRequestType = "application/vnd.scanner.adapter.scan.request+json" // versions 1.0 and 1.1
)

// scannerName is the adapter's name in its metadata and reports.
const scannerName = "trustproxy-test-adapter"

// Scanner is a Harbor scanner adapter (API v1.2) on 127.0.0.1, the stand-in for Trivy's adapter, which
// needs a vulnerability database. Like Trivy's, before it reports it pulls the artifact from the scan
// request's registry (its scheme and host: Trivy's adapter drops a path): a ping of /v2/ (no
// credentials; 200 or 401 will do), the manifest by digest and its config blob, with the request's registry.authorization sent verbatim as the Authorization header
// (it follows no auth challenge: Trivy exchanges Basic credentials for a token, Bearer tokens go as
// they are). It checks what it pulls against the digests; if a pull fails, the scan fails and the report
// is a 500 naming the pull. It pulls no layers. Methods are safe for concurrent use.
type Scanner struct {
	srv    *httptest.Server
	ctx    context.Context // cancelled at cleanup: ends the scans
	cancel context.CancelFunc
	jobs   sync.WaitGroup
	pullHC *http.Client

	mu       sync.Mutex
	reports  map[digest.Digest][]scan.Vulnerability
	delay    time.Duration
	holds    map[digest.Digest]chan struct{}
	fault    ScannerFault
	consumes []string
	produces []string
	scans    map[digest.Digest]int
	pulls    []Pull
	requests int
	ids      map[string]*scanJob
}

// scanJob is one accepted scan request. done is closed when report or failure is set.
type scanJob struct {
	req     scan.ScanRequest
	done    chan struct{}
	report  *scan.Report
	failure string
}

// Pull is one GET the adapter made to a registry for a scan.
type Pull struct {
	Ref           string // repository@digest: the manifest's, then its config blob's
	Authorization string // the Authorization header sent, "" for none
	Status        int    // the registry's status, 0 when no answer came
	Err           string // why the pull failed, "" when it did not
}

// StartScanner starts the adapter on 127.0.0.1; t.Cleanup stops it and the scans it runs.
func StartScanner(t testing.TB) *Scanner {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &Scanner{
		ctx:      ctx,
		cancel:   cancel,
		pullHC:   &http.Client{Timeout: 30 * time.Second},
		reports:  map[digest.Digest][]scan.Vulnerability{},
		consumes: []string{mediaOCIManifest, mediaDockerManifest},
		produces: []string{scan.ReportV11, scan.ReportHarbor10},
		scans:    map[digest.Digest]int{},
		ids:      map[string]*scanJob{},
		holds:    map[digest.Digest]chan struct{}{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/metadata", s.metadata)
	mux.HandleFunc("POST /api/v1/scan", s.accept)
	mux.HandleFunc("GET /api/v1/scan/{id}/report", s.report)
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.requests++
		down := s.fault == ScannerDown
		s.mu.Unlock()
		if down {
			hangUp(w)
			return
		}
		mux.ServeHTTP(w, r)
	}))
	s.srv.Config.ErrorLog = discardLog()
	s.srv.Start()
	t.Cleanup(func() {
		cancel()
		s.srv.Close()
		s.jobs.Wait()
		s.pullHC.CloseIdleConnections()
	})
	return s
}

// URL is the adapter's base URL, http://127.0.0.1:PORT, without /api/v1.
func (s *Scanner) URL() string { return s.srv.URL }

// SetReport sets the vulnerabilities reported for manifest digest d by scans that end from now on. With
// no entry a report is clean: no vulnerabilities, severity "Unknown". A report's artifact echoes its
// scan request, its severity is its worst vulnerability's, generated_at is when the scan ended.
func (s *Scanner) SetReport(d digest.Digest, vulns []scan.Vulnerability) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reports[d] = slices.Clone(vulns)
}

// SetDelay sets how long a scan takes after its pulls (default 0).
func (s *Scanner) SetDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}

// Hold makes the scans of manifest digest d wait after their pulls until Release(d) (or the adapter
// stops): a slow scan whose end the test chooses. The delay applies after the hold.
func (s *Scanner) Hold(d digest.Digest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holds[d] == nil {
		s.holds[d] = make(chan struct{})
	}
}

// Release ends the hold of d: its scans, held now or started later, go on to report.
func (s *Scanner) Release(d digest.Digest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h := s.holds[d]; h != nil {
		close(h)
		delete(s.holds, d)
	}
}

// SetFault sets how the adapter misbehaves from now on; ScannerOK ends it.
func (s *Scanner) SetFault(f ScannerFault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault = f
}

// SetConsumes sets the manifest media types the metadata says it scans (default: OCI image manifest and
// Docker schema2 manifest). A scan request naming another artifact.mime_type is refused with 501.
func (s *Scanner) SetConsumes(mediaTypes ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.consumes = slices.Clone(mediaTypes)
}

// SetProduces sets the report media types the metadata offers and the report endpoint accepts
// (default: scan.ReportV11 and scan.ReportHarbor10).
func (s *Scanner) SetProduces(mediaTypes ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.produces = slices.Clone(mediaTypes)
}

// ScanRequests is how many scan requests for manifest digest d the adapter accepted.
func (s *Scanner) ScanRequests(d digest.Digest) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.scans[d]
}

// Pulls returns the registry GETs the adapter made, in order.
func (s *Scanner) Pulls() []Pull {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.pulls)
}

// Requests is how many requests the adapter received, on any path.
func (s *Scanner) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

func (s *Scanner) metadata(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	md := scan.Metadata{
		Scanner: scan.ScannerInfo{Name: scannerName, Vendor: "trustproxy", Version: "1.2"},
		Capabilities: []scan.Capability{{
			Type:              "vulnerability",
			ConsumesMIMETypes: slices.Clone(s.consumes),
			ProducesMIMETypes: slices.Clone(s.produces),
		}},
		Properties: map[string]string{
			"harbor.scanner-adapter/scanner-type":                      "os-package-vulnerability",
			"harbor.scanner-adapter/vulnerability-database-updated-at": time.Now().UTC().Format(time.RFC3339),
		},
	}
	s.mu.Unlock()
	writeScannerJSON(w, http.StatusOK, mediaScannerMetadata, md)
}

// accept is POST /api/v1/scan: validate as Trivy's adapter does, answer 202 and an id, scan meanwhile.
func (s *Scanner) accept(w http.ResponseWriter, r *http.Request) {
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != mediaScanRequestType || (params["version"] != "1.0" && params["version"] != "1.1") {
		writeScannerError(w, http.StatusBadRequest, fmt.Sprintf("unsupported content type %q", r.Header.Get("Content-Type")))
		return
	}
	var req scan.ScanRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	if err := dec.Decode(&req); err != nil {
		writeScannerError(w, http.StatusBadRequest, "unmarshalling scan request: "+err.Error())
		return
	}
	code, msg := s.validate(req)
	if code != 0 {
		writeScannerError(w, code, msg)
		return
	}
	id := newScanID()
	j := &scanJob{req: req, done: make(chan struct{})}
	s.mu.Lock()
	s.ids[id] = j
	s.scans[digest.Digest(req.Artifact.Digest)]++
	s.mu.Unlock()
	s.jobs.Add(1)
	go func() {
		defer s.jobs.Done()
		s.run(j)
	}()
	writeScannerJSON(w, http.StatusAccepted, mediaScanResponse, map[string]string{"id": id})
}

// validate returns the status and message refusing req, or 0.
func (s *Scanner) validate(req scan.ScanRequest) (int, string) {
	s.mu.Lock()
	consumes, produces := s.consumes, s.produces
	s.mu.Unlock()
	for _, c := range req.EnabledCapabilities {
		if c.Type != "vulnerability" {
			return http.StatusNotImplemented, fmt.Sprintf("no capability of type %q", c.Type)
		}
		for _, p := range c.ProducesMIMETypes {
			if !slices.Contains(produces, p) {
				return http.StatusNotImplemented, fmt.Sprintf("cannot produce %q", p)
			}
		}
	}
	switch u, err := url.ParseRequestURI(req.Registry.URL); {
	case req.Registry.URL == "":
		return http.StatusUnprocessableEntity, "missing registry.url"
	case err != nil, u.Scheme != "http" && u.Scheme != "https", u.Host == "":
		return http.StatusUnprocessableEntity, "invalid registry.url"
	}
	if req.Artifact.Repository == "" {
		return http.StatusUnprocessableEntity, "missing artifact.repository"
	}
	if req.Artifact.Digest == "" {
		return http.StatusUnprocessableEntity, "missing artifact.digest"
	}
	if _, err := digest.Parse(req.Artifact.Digest); err != nil {
		return http.StatusUnprocessableEntity, "invalid artifact.digest: " + err.Error()
	}
	if mt := req.Artifact.MimeType; mt != "" && !slices.Contains(consumes, mt) {
		return http.StatusNotImplemented, fmt.Sprintf("cannot scan artifacts of type %q", mt)
	}
	return 0, ""
}

// run pulls the artifact of j, waits the delay and files the report or the failure.
func (s *Scanner) run(j *scanJob) {
	defer close(j.done)
	if err := s.pull(j.req); err != nil {
		j.failure = err.Error()
		return
	}
	d := digest.Digest(j.req.Artifact.Digest)
	s.mu.Lock()
	delay, hold := s.delay, s.holds[d]
	s.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-s.ctx.Done():
			j.failure = "adapter stopped"
			return
		}
	}
	select {
	case <-time.After(delay):
	case <-s.ctx.Done():
		j.failure = "adapter stopped"
		return
	}
	s.mu.Lock()
	vulns := slices.Clone(s.reports[d])
	s.mu.Unlock()
	worst := severity.Unknown
	for _, v := range vulns {
		if sev, err := severity.Parse(v.Severity); err == nil && sev > worst {
			worst = sev
		}
	}
	j.report = &scan.Report{
		GeneratedAt:     time.Now().UTC(),
		Artifact:        j.req.Artifact,
		Scanner:         scan.ScannerInfo{Name: scannerName, Vendor: "trustproxy", Version: "1.2"},
		Severity:        worst.String(),
		Vulnerabilities: vulns,
	}
}

// pull fetches the manifest of req and its config blob, as Trivy's adapter does before it scans.
func (s *Scanner) pull(req scan.ScanRequest) error {
	// Trivy's adapter makes an image reference host:port/repository@digest of the registry URL: a path
	// in the URL is dropped. The URL parsed in validate.
	u, _ := url.Parse(req.Registry.URL)
	base := u.Scheme + "://" + u.Host
	repo, dgst := req.Artifact.Repository, digest.Digest(req.Artifact.Digest)
	ref := u.Host + "/" + repo + "@" + dgst.String()
	fail := func(format string, args ...any) error {
		return fmt.Errorf("pull %s: %s", ref, fmt.Sprintf(format, args...))
	}

	// go-containerregistry pings first, without credentials, and goes on after a 200 or a 401.
	resp, err := s.get(base+"/v2/", "", "")
	if err != nil {
		return fail("ping: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusUnauthorized {
		return fail("ping: %s", resp.Status)
	}

	accept := strings.Join([]string{mediaOCIManifest, mediaOCIIndex, mediaDockerManifest, mediaDockerList}, ", ")
	b, err := s.fetch(base+"/v2/"+repo+"/manifests/"+dgst.String(), repo, dgst, accept, req.Registry.Authorization, 4<<20)
	if err != nil {
		return fail("manifest: %v", err)
	}
	var m struct {
		MediaType string `json:"mediaType"`
		Config    *struct {
			Digest digest.Digest `json:"digest"`
		} `json:"config"`
		Manifests []json.RawMessage `json:"manifests"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return fail("manifest: %v", err)
	}
	if m.Config == nil || m.Manifests != nil {
		return fail("manifest of type %q is not an image manifest", m.MediaType)
	}
	if err := m.Config.Digest.Validate(); err != nil {
		return fail("config digest: %v", err)
	}
	if _, err := s.fetch(base+"/v2/"+repo+"/blobs/"+m.Config.Digest.String(), repo, m.Config.Digest, "", req.Registry.Authorization, 64<<20); err != nil {
		return fail("config %s: %v", m.Config.Digest, err)
	}
	return nil
}

// fetch GETs u, records the Pull, and returns the body after checking the status and the digest.
func (s *Scanner) fetch(u, repo string, dgst digest.Digest, accept, authorization string, limit int64) ([]byte, error) {
	p := Pull{Ref: repo + "@" + dgst.String(), Authorization: authorization}
	b, err := func() ([]byte, error) {
		resp, err := s.get(u, accept, authorization)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		p.Status = resp.StatusCode
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("%s", resp.Status)
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
		if err != nil {
			return nil, err
		}
		if int64(len(b)) > limit {
			return nil, fmt.Errorf("over %d bytes", limit)
		}
		if got := dgst.Algorithm().FromBytes(b); got != dgst {
			return nil, fmt.Errorf("content has digest %s", got)
		}
		return b, nil
	}()
	if err != nil {
		p.Err = err.Error()
	}
	s.mu.Lock()
	s.pulls = append(s.pulls, p)
	s.mu.Unlock()
	return b, err
}

func (s *Scanner) get(u, accept, authorization string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(s.ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	return s.pullHC.Do(req)
}

// report is GET /api/v1/scan/{id}/report.
func (s *Scanner) report(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	produces, fault := s.produces, s.fault
	j := s.ids[r.PathValue("id")]
	s.mu.Unlock()

	accept := r.Header.Get("Accept")
	if (accept == "" || accept == "*/*") && len(produces) > 0 {
		accept = produces[0]
	}
	if !slices.Contains(produces, accept) {
		writeScannerError(w, http.StatusNotImplemented, fmt.Sprintf("no capability to produce %q", accept))
		return
	}
	if j == nil {
		writeScannerError(w, http.StatusNotFound, "cannot find scan job: "+r.PathValue("id"))
		return
	}
	switch fault {
	case ScannerError500:
		writeScannerError(w, http.StatusInternalServerError, "scanner fault: internal error")
		return
	case ScannerGarbage:
		w.Header().Set("Content-Type", accept)
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "<html><body>502 Bad Gateway</body></html>\n")
		return
	case ScannerOversized:
		w.Header().Set("Content-Type", accept)
		w.WriteHeader(http.StatusOK)
		writeOversized(w)
		return
	}

	// A scan that ends soon is waited for, so that tests without a delay do not poll.
	select {
	case <-j.done:
	case <-time.After(200 * time.Millisecond):
	case <-r.Context().Done():
		return
	case <-s.ctx.Done():
		return
	}
	select {
	case <-j.done:
	default:
		w.Header().Set("Refresh-After", "1")
		w.Header().Set("Location", r.URL.String())
		w.WriteHeader(http.StatusFound)
		return
	}
	if j.failure != "" {
		writeScannerError(w, http.StatusInternalServerError, j.failure)
		return
	}
	writeScannerJSON(w, http.StatusOK, accept, j.report)
}

// writeOversized writes a well-formed report a little over scan.MaxReportBytes, in chunks: only its
// size is wrong.
func writeOversized(w io.Writer) {
	const head = `{"severity":"Unknown","vulnerabilities":[],"padding":"`
	if _, err := io.WriteString(w, head); err != nil {
		return
	}
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	for n := 0; n < scan.MaxReportBytes; n += len(chunk) {
		if _, err := w.Write(chunk); err != nil {
			return
		}
	}
	_, _ = io.WriteString(w, `"}`)
}

func writeScannerJSON(w http.ResponseWriter, status int, mediaType string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeScannerError(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", mediaType)
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// writeScannerError writes the spec's ErrorResponse.
func writeScannerError(w http.ResponseWriter, status int, msg string) {
	b, _ := json.Marshal(map[string]map[string]string{"error": {"message": msg}})
	w.Header().Set("Content-Type", mediaScannerError)
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// hangUp closes the connection without an answer, as an adapter that is going away.
func hangUp(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	_ = conn.Close()
}

func newScanID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
