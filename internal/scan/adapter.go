package scan

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Media types of the adapter API's other bodies.
const (
	mediaMetadata11   = "application/vnd.scanner.adapter.metadata+json; version=1.1"
	mediaMetadata10   = "application/vnd.scanner.adapter.metadata+json; version=1.0"
	mediaScanRequest  = "application/vnd.scanner.adapter.scan.request+json; version=1.1"
	mediaScanResponse = "application/vnd.scanner.adapter.scan.response+json; version=1.0"
)

// Body limits, besides MaxReportBytes.
const (
	maxMetadataBytes = 1 << 20
	maxScanBytes     = 1 << 20
	maxErrorBytes    = 64 << 10
	maxIDBytes       = 256
	maxMessage       = 1024 // of an adapter's error message in ours
)

// Refresh-After bounds: the default when the adapter sends none (Trivy's adapter never does) or a bad
// one, and the longest wait believed.
const (
	defaultRefresh = time.Second
	maxRefresh     = time.Minute
)

var (
	// ErrScanFailed is wrapped by Report's error when the adapter answers 500: the scan failed, say
	// because the adapter could not pull the artifact. The same request may fail the same way again.
	ErrScanFailed = errors.New("the scan failed")
	// ErrUnknownScan is wrapped by Report's error when the adapter answers 404: it does not know the
	// scan id (it restarted, or the report expired). The spec's answer is a new scan request.
	ErrUnknownScan = errors.New("unknown scan id")
)

// Adapter is a client of one scanner adapter. It is safe for concurrent use.
type Adapter struct {
	name, base, authorization string
	hc                        *http.Client // a copy of the caller's that never follows redirects
}

// NewAdapter returns a client of the adapter at base, its URL without the /api/v1 suffix (the client
// appends /api/v1/...). name is how errors call the adapter. authorization, when not "", is sent as the
// Authorization header on every call to the adapter. hc (nil: http.DefaultClient) bounds nothing itself:
// every call takes a ctx; bodies are size-limited (metadata and scan responses 1 MiB, reports
// MaxReportBytes, error bodies 64 KiB). Redirects are never followed, so the Authorization header goes
// nowhere else and Report sees the spec's 302.
func NewAdapter(name, base, authorization string, hc *http.Client) *Adapter {
	if hc == nil {
		hc = http.DefaultClient
	}
	c := *hc
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &Adapter{name: name, base: strings.TrimRight(base, "/"), authorization: authorization, hc: &c}
}

// Name is the adapter's name, as errors give it.
func (a *Adapter) Name() string { return a.name }

// Metadata asks the adapter what it scans: GET /api/v1/metadata, accepting metadata versions 1.1 and 1.0.
func (a *Adapter) Metadata(ctx context.Context) (*Metadata, error) {
	const path = "/api/v1/metadata"
	resp, err := a.do(ctx, http.MethodGet, path, mediaMetadata11+", "+mediaMetadata10, "", nil)
	if err != nil {
		return nil, err
	}
	defer closeBody(resp)
	if resp.StatusCode != http.StatusOK {
		return nil, a.statusError(resp, path)
	}
	b, err := a.read(resp, path, maxMetadataBytes)
	if err != nil {
		return nil, err
	}
	var m Metadata
	if err := decodeObject(b, &m); err != nil {
		return nil, a.errorf(resp, path, "decode metadata: %w", err)
	}
	return &m, nil
}

// ScanRequest asks an adapter to pull an artifact from a registry and scan it.
type ScanRequest struct {
	Registry            Registry            `json:"registry"`
	Artifact            Artifact            `json:"artifact"`
	EnabledCapabilities []EnabledCapability `json:"enabled_capabilities,omitempty"`
}

// Registry is where the adapter pulls from: url is the registry's base URL (no /v2), authorization the
// Authorization header value it sends there, such as "Bearer <token>" or "Basic <base64 user:password>".
type Registry struct {
	URL           string `json:"url"`
	Authorization string `json:"authorization"`
}

// EnabledCapability narrows a scan to one capability type and, optionally, some of its report types.
type EnabledCapability struct {
	Type              string   `json:"type"`
	ProducesMIMETypes []string `json:"produces_mime_types,omitempty"`
}

// Scan submits req (POST /api/v1/scan) and returns the id to poll Report with. The adapter pulls the
// artifact later, asynchronously: an unreachable registry or refused credentials show in Report.
func (a *Adapter) Scan(ctx context.Context, req ScanRequest) (id string, err error) {
	const path = "/api/v1/scan"
	body, err := json.Marshal(req)
	if err != nil {
		return "", fmt.Errorf("scanner %s: POST %s: %w", a.name, path, err)
	}
	resp, err := a.do(ctx, http.MethodPost, path, mediaScanResponse, mediaScanRequest, body)
	if err != nil {
		return "", err
	}
	defer closeBody(resp)
	if resp.StatusCode != http.StatusAccepted {
		return "", a.statusError(resp, path)
	}
	b, err := a.read(resp, path, maxScanBytes)
	if err != nil {
		return "", err
	}
	var sr struct {
		ID string `json:"id"`
	}
	if err := decodeObject(b, &sr); err != nil {
		return "", a.errorf(resp, path, "decode scan response: %w", err)
	}
	if err := checkID(sr.ID); err != nil {
		return "", a.errorf(resp, path, "%w", err)
	}
	return sr.ID, nil
}

// Report polls for the report of scan id, asking for reportType (Metadata.ReportType). It returns the
// parsed report (ParseReport) when the adapter has it; (nil, refreshAfter, nil) while the scan runs (302),
// refreshAfter being the adapter's Refresh-After (1s when absent or bad, at most 1 minute); an error
// wrapping ErrScanFailed when the scan failed (500) and ErrUnknownScan when the adapter does not know id
// (404); another error for anything else. A 200 whose Content-Type names another vendor type (the raw
// report, an SBOM) is refused.
func (a *Adapter) Report(ctx context.Context, id, reportType string) (*Report, time.Duration, error) {
	if err := checkID(id); err != nil {
		return nil, 0, fmt.Errorf("scanner %s: report: %w", a.name, err)
	}
	path := "/api/v1/scan/" + url.PathEscape(id) + "/report"
	resp, err := a.do(ctx, http.MethodGet, path, reportType, "", nil)
	if err != nil {
		return nil, 0, err
	}
	defer closeBody(resp)
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusFound:
		return nil, refreshAfter(resp.Header.Get("Refresh-After")), nil
	case http.StatusInternalServerError:
		msg := a.errorMessage(resp)
		if msg == "" {
			msg = "500 Internal Server Error, no message"
		}
		return nil, 0, a.errorf(resp, path, "%w: %s", ErrScanFailed, msg)
	case http.StatusNotFound:
		return nil, 0, a.errorf(resp, path, "%w (404 Not Found): send a new scan request", ErrUnknownScan)
	default:
		return nil, 0, a.statusError(resp, path)
	}
	if ct := resp.Header.Get("Content-Type"); !harborReportType(ct) {
		return nil, 0, a.errorf(resp, path, "asked for %s, got %s", reportType, clean(ct))
	}
	b, err := a.read(resp, path, MaxReportBytes)
	if err != nil {
		return nil, 0, err
	}
	r, err := ParseReport(b)
	if err != nil {
		return nil, 0, a.errorf(resp, path, "%w", err)
	}
	return r, 0, nil
}

// harborReportType says whether a 200's Content-Type ct may label a HarborVulnerabilityReport: either
// report type, or a generic label (application/json, text/plain from servers that sniff). Another
// vendor type, such as the raw vendor report or an SBOM, is refused: it could parse as an object with no
// vulnerabilities, a clean report.
func harborReportType(ct string) bool {
	t, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return true // absent or unreadable: the body decides
	}
	delete(params, "charset")
	for _, want := range []string{ReportV11, ReportHarbor10} {
		if wt, wp, _ := mime.ParseMediaType(want); t == wt && maps.Equal(params, wp) {
			return true
		}
	}
	return !strings.Contains(t, "/vnd.")
}

// do sends one request to the adapter. The caller closes the response body.
func (a *Adapter) do(ctx context.Context, method, path, accept, contentType string, body []byte) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, rd)
	if err != nil {
		return nil, fmt.Errorf("scanner %s: %s %s: %w", a.name, method, path, err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if a.authorization != "" {
		req.Header.Set("Authorization", a.authorization)
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		// url.Error repeats the method and the full URL; the path is enough.
		if ue, ok := errors.AsType[*url.Error](err); ok {
			err = ue.Err
		}
		return nil, fmt.Errorf("scanner %s: %s %s: %w", a.name, method, path, err)
	}
	return resp, nil
}

// read returns resp's body, or an error when it holds more than limit bytes.
func (a *Adapter) read(resp *http.Response, path string, limit int64) ([]byte, error) {
	tooBig := func() error {
		return a.errorf(resp, path, "scanner %s sent more than %d bytes", a.name, limit)
	}
	if resp.ContentLength > limit {
		return nil, tooBig()
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, a.errorf(resp, path, "read body: %w", err)
	}
	if int64(len(b)) > limit {
		return nil, tooBig()
	}
	return b, nil
}

// errorf returns "scanner NAME: METHOD PATH: " and the formatted message.
func (a *Adapter) errorf(resp *http.Response, path, format string, args ...any) error {
	return fmt.Errorf("scanner %s: %s %s: %w", a.name, resp.Request.Method, path, fmt.Errorf(format, args...))
}

// statusError describes an unexpected status, with the adapter's error message when it sent one.
func (a *Adapter) statusError(resp *http.Response, path string) error {
	status := strconv.Itoa(resp.StatusCode) + " " + http.StatusText(resp.StatusCode)
	if loc := resp.Header.Get("Location"); resp.StatusCode/100 == 3 && loc != "" {
		status += " to " + clean(loc)
	}
	if msg := a.errorMessage(resp); msg != "" {
		return a.errorf(resp, path, "%s: %s", strings.TrimSpace(status), msg)
	}
	return a.errorf(resp, path, "%s", strings.TrimSpace(status))
}

// errorMessage returns the message of an ErrorResponse body, cleaned for a log line, or "" when the
// body is not one or is over 64 KiB.
func (a *Adapter) errorMessage(resp *http.Response) string {
	if resp.ContentLength > maxErrorBytes {
		return ""
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBytes+1))
	if err != nil || len(b) > maxErrorBytes {
		return ""
	}
	var e struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if decodeObject(b, &e) != nil {
		return ""
	}
	return cleanN(strings.TrimSpace(e.Error.Message), maxMessage)
}

// checkID refuses a scan id that is empty, long or could change the report URL's path once escaped
// (a reverse proxy in front of an adapter may clean "..").
func checkID(id string) error {
	switch {
	case id == "":
		return errors.New("empty scan id")
	case len(id) > maxIDBytes:
		return fmt.Errorf("scan id of %d bytes is over %d", len(id), maxIDBytes)
	case !utf8.ValidString(id), id == ".", id == "..", strings.ContainsAny(id, `/\`),
		strings.ContainsFunc(id, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }):
		return fmt.Errorf("unusable scan id %q", clean(id))
	}
	return nil
}

// refreshAfter reads a Refresh-After header: whole seconds.
func refreshAfter(h string) time.Duration {
	n, err := strconv.Atoi(strings.TrimSpace(h))
	if err != nil || n < 1 {
		return defaultRefresh
	}
	if n >= int(maxRefresh/time.Second) {
		return maxRefresh
	}
	return time.Duration(n) * time.Second
}

// closeBody reads a little of what is left, so that the connection can be reused, and closes.
func closeBody(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	_ = resp.Body.Close()
}
