package scan_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/internal/scan"
	"github.com/trustproxy/trustproxy/internal/severity"
	"github.com/trustproxy/trustproxy/internal/testenv"
)

const dockerManifest = "application/vnd.docker.distribution.manifest.v2+json"

var xz = scan.Vulnerability{ID: "CVE-2024-3094", Package: "xz-utils", Version: "5.6.0", FixVersion: "5.6.1", Severity: "Critical",
	Links: []string{"https://avd.aquasec.com/nvd/cve-2024-3094"}}

// pushed is an image in a real registry that wants a bearer token for its content.
type pushed struct {
	reg            *testenv.Registry
	repo           string
	digest, config digest.Digest
	token          string // the Authorization value the registry wants
}

func pushImage(t *testing.T) pushed {
	t.Helper()
	reg := testenv.NewRegistry(t)
	img := testenv.Image(t, "scan "+t.Name(), 1, 1000)
	h := reg.Push(t, "library/app", "v1", img)
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	p := pushed{reg: reg, repo: "library/app", digest: digest.Digest(h.String()), config: digest.Digest(cfg.String()), token: "Bearer pull-token"}
	reg.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/v2/" || r.Header.Get("Authorization") == p.token {
			return false
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="https://auth.invalid/token",service="test"`)
		w.WriteHeader(http.StatusUnauthorized)
		return true
	})
	return p
}

func (p pushed) request() scan.ScanRequest {
	return scan.ScanRequest{
		Registry:            scan.Registry{URL: p.reg.URL(), Authorization: p.token},
		Artifact:            scan.Artifact{Repository: p.repo, Digest: p.digest.String(), Tag: "v1", MimeType: dockerManifest},
		EnabledCapabilities: []scan.EnabledCapability{{Type: "vulnerability", ProducesMIMETypes: []string{scan.ReportV11}}},
	}
}

// poll asks for the report of id until the adapter has it or fails, as the spec's clients do.
func poll(t *testing.T, a *scan.Adapter, id, reportType string) (*scan.Report, error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r, after, err := a.Report(t.Context(), id, reportType)
		if err != nil || r != nil {
			return r, err
		}
		if time.Now().After(deadline) {
			t.Fatalf("no report for scan %s after 20s", id)
		}
		time.Sleep(after)
	}
}

// front passes requests to the adapter and records their Authorization headers.
type front struct {
	*httptest.Server
	mu    sync.Mutex
	auths []string
}

func startFront(t *testing.T, target string) *front {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	f := &front{}
	rp := httputil.NewSingleHostReverseProxy(u)
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.auths = append(f.auths, r.Method+" "+r.URL.Path+" "+r.Header.Get("Authorization"))
		f.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(f.Close)
	return f
}

func TestAdapterScanOneImage(t *testing.T) {
	img := pushImage(t)
	s := testenv.StartScanner(t)
	s.SetReport(img.digest, []scan.Vulnerability{xz, {ID: "CVE-2023-4911", Package: "libc6", Version: "2.36", Severity: "High"}})
	f := startFront(t, s.URL())
	a := scan.NewAdapter("test", f.URL, "Bearer adapter-secret", nil)
	if a.Name() != "test" {
		t.Errorf("Name %q", a.Name())
	}

	m, err := a.Metadata(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if m.Scanner.Name != "trustproxy-test-adapter" {
		t.Errorf("scanner %+v", m.Scanner)
	}
	rt, ok := m.ReportType(dockerManifest)
	if !ok || rt != scan.ReportV11 {
		t.Fatalf("ReportType = %q, %v", rt, ok)
	}
	id, err := a.Scan(t.Context(), img.request())
	if err != nil {
		t.Fatal(err)
	}
	r, err := poll(t, a, id, rt)
	if err != nil {
		t.Fatal(err)
	}
	want := scan.Artifact{Repository: img.repo, Digest: img.digest.String(), Tag: "v1", MimeType: dockerManifest}
	if d := cmp.Diff(want, r.Artifact); d != "" {
		t.Errorf("artifact (-want +got):\n%s", d)
	}
	if r.Severity != "Critical" || len(r.Vulnerabilities) != 2 || time.Since(r.GeneratedAt) > time.Minute {
		t.Errorf("report %+v", r)
	}
	f2 := r.Blocking(severity.High, nil)
	if got, want := f2.Describe(severity.High), "CVE-2024-3094 Critical in xz-utils 5.6.0, fixed in 5.6.1; 1 more at High or above"; got != want {
		t.Errorf("Describe = %q, want %q", got, want)
	}

	wantPulls := []testenv.Pull{
		{Ref: "library/app@" + img.digest.String(), Authorization: img.token, Status: 200},
		{Ref: "library/app@" + img.config.String(), Authorization: img.token, Status: 200},
	}
	if d := cmp.Diff(wantPulls, s.Pulls()); d != "" {
		t.Errorf("pulls (-want +got):\n%s", d)
	}
	if n := s.ScanRequests(img.digest); n != 1 {
		t.Errorf("ScanRequests = %d", n)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.auths) < 3 {
		t.Fatalf("adapter requests %q", f.auths)
	}
	for _, a := range f.auths {
		if !strings.HasSuffix(a, " Bearer adapter-secret") {
			t.Errorf("request without the adapter's authorization: %q", a)
		}
	}
	if s.Requests() != len(f.auths) {
		t.Errorf("Requests() = %d, front saw %d", s.Requests(), len(f.auths))
	}
}

func TestAdapterReportWhileScanning(t *testing.T) {
	img := pushImage(t)
	s := testenv.StartScanner(t)
	s.SetDelay(1500 * time.Millisecond)
	a := scan.NewAdapter("test", s.URL(), "", nil)
	id, err := a.Scan(t.Context(), img.request())
	if err != nil {
		t.Fatal(err)
	}
	r, after, err := a.Report(t.Context(), id, scan.ReportV11)
	if r != nil || after != time.Second || err != nil {
		t.Fatalf("Report while scanning = %v, %v, %v; want nil, 1s, nil", r, after, err)
	}
	if r, err := poll(t, a, id, scan.ReportHarbor10); err != nil || len(r.Vulnerabilities) != 0 || r.Severity != "Unknown" {
		t.Fatalf("clean report: %+v, %v", r, err)
	}
}

func TestAdapterScanFailsWhenPullFails(t *testing.T) {
	tests := []struct {
		name    string
		change  func(p *pushed)
		wantErr string
		want    []testenv.Pull // Ref filled in
	}{
		{
			name:    "refused credential",
			change:  func(p *pushed) { p.token = "Basic dXNlcjpwYXNz" },
			wantErr: "manifest: 401 Unauthorized",
			want:    []testenv.Pull{{Authorization: "Basic dXNlcjpwYXNz", Status: 401, Err: "401 Unauthorized"}},
		},
		{
			name: "unknown manifest",
			change: func(p *pushed) {
				p.digest = digest.FromString("not pushed")
			},
			wantErr: "manifest: 404 Not Found",
			want:    []testenv.Pull{{Authorization: "Bearer pull-token", Status: 404, Err: "404 Not Found"}},
		},
		{
			name: "corrupt manifest",
			change: func(p *pushed) {
				inner := p.reg.CorruptBody(testenv.GetPath("/manifests/" + p.digest.String()))
				p.reg.SetFault(inner)
			},
			wantErr: "manifest: content has digest sha256:",
			want:    []testenv.Pull{{Authorization: "Bearer pull-token", Status: 200}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := pushImage(t)
			tt.change(&img)
			s := testenv.StartScanner(t)
			a := scan.NewAdapter("test", s.URL(), "", nil)
			id, err := a.Scan(t.Context(), img.request())
			if err != nil {
				t.Fatal(err)
			}
			_, err = poll(t, a, id, scan.ReportV11)
			if !errors.Is(err, scan.ErrScanFailed) {
				t.Fatalf("error %v, want ErrScanFailed", err)
			}
			prefix := fmt.Sprintf("scanner test: GET /api/v1/scan/%s/report: the scan failed: pull %s/library/app@%s: ", id, img.reg.Host(), img.digest)
			if !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q\nwant %q and %q", err, prefix, tt.wantErr)
			}
			pulls := s.Pulls()
			for i := range tt.want {
				tt.want[i].Ref = "library/app@" + img.digest.String()
				if i < len(pulls) && tt.want[i].Err == "" {
					tt.want[i].Err = pulls[i].Err // checked through wantErr
				}
			}
			if d := cmp.Diff(tt.want, pulls); d != "" {
				t.Errorf("pulls (-want +got):\n%s", d)
			}
		})
	}
}

func TestAdapterFaults(t *testing.T) {
	img := pushImage(t)
	tests := []struct {
		fault   testenv.ScannerFault
		wantErr string
		is      error
	}{
		{fault: testenv.ScannerError500, wantErr: "the scan failed: scanner fault: internal error", is: scan.ErrScanFailed},
		{fault: testenv.ScannerGarbage, wantErr: "decode report: not a JSON object"},
		{fault: testenv.ScannerOversized, wantErr: "scanner test sent more than 16777216 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.wantErr, func(t *testing.T) {
			s := testenv.StartScanner(t)
			a := scan.NewAdapter("test", s.URL(), "", nil)
			id, err := a.Scan(t.Context(), img.request())
			if err != nil {
				t.Fatal(err)
			}
			s.SetFault(tt.fault)
			r, _, err := a.Report(t.Context(), id, scan.ReportV11)
			want := "scanner test: GET /api/v1/scan/" + id + "/report: " + tt.wantErr
			if r != nil || err == nil || err.Error() != want {
				t.Fatalf("Report = %v, %v\nwant error %q", r, err, want)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error is not %v", tt.is)
			}
		})
	}

	t.Run("down", func(t *testing.T) {
		s := testenv.StartScanner(t)
		s.SetFault(testenv.ScannerDown)
		a := scan.NewAdapter("test", s.URL(), "", nil)
		_, err := a.Metadata(t.Context())
		if err == nil || !strings.HasPrefix(err.Error(), "scanner test: GET /api/v1/metadata: ") {
			t.Fatalf("Metadata of a down adapter: %v", err)
		}
		if _, err := a.Scan(t.Context(), img.request()); err == nil || !strings.HasPrefix(err.Error(), "scanner test: POST /api/v1/scan: ") {
			t.Fatalf("Scan of a down adapter: %v", err)
		}
		if s.Requests() < 2 {
			t.Errorf("Requests() = %d", s.Requests())
		}
		s.SetFault(testenv.ScannerOK)
		if _, err := a.Metadata(t.Context()); err != nil {
			t.Fatalf("after recovery: %v", err)
		}
	})
}

func TestAdapterRefusals(t *testing.T) {
	img := pushImage(t)
	s := testenv.StartScanner(t)
	a := scan.NewAdapter("test", s.URL(), "", nil)

	_, _, err := a.Report(t.Context(), "3fa85f64-5717-4562-b3fc-2c963f66afa6", scan.ReportV11)
	if !errors.Is(err, scan.ErrUnknownScan) {
		t.Errorf("unknown id: %v", err)
	}

	id, err := a.Scan(t.Context(), img.request())
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = a.Report(t.Context(), id, "application/vnd.scanner.adapter.vuln.report.raw")
	if want := `: 501 Not Implemented: no capability to produce "application/vnd.scanner.adapter.vuln.report.raw"`; err == nil || !strings.HasSuffix(err.Error(), want) {
		t.Errorf("raw report: %v", err)
	}

	tests := []struct {
		name    string
		change  func(*scan.ScanRequest)
		wantErr string
	}{
		{"no repository", func(r *scan.ScanRequest) { r.Artifact.Repository = "" }, "422 Unprocessable Entity: missing artifact.repository"},
		{"no digest", func(r *scan.ScanRequest) { r.Artifact.Digest = "" }, "422 Unprocessable Entity: missing artifact.digest"},
		{"bad digest", func(r *scan.ScanRequest) { r.Artifact.Digest = "sha256:abc" }, "422 Unprocessable Entity: invalid artifact.digest"},
		{"no registry", func(r *scan.ScanRequest) { r.Registry.URL = "" }, "422 Unprocessable Entity: missing registry.url"},
		{"bad registry", func(r *scan.ScanRequest) { r.Registry.URL = "registry:5000" }, "422 Unprocessable Entity: invalid registry.url"},
		{"index", func(r *scan.ScanRequest) { r.Artifact.MimeType = "application/vnd.oci.image.index.v1+json" }, "501 Not Implemented: cannot scan artifacts"},
		{"sbom", func(r *scan.ScanRequest) { r.EnabledCapabilities[0].Type = "sbom" }, `501 Not Implemented: no capability of type "sbom"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := img.request()
			tt.change(&req)
			_, err := a.Scan(t.Context(), req)
			if want := "scanner test: POST /api/v1/scan: " + tt.wantErr; err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("error %v\nwant %q", err, want)
			}
		})
	}
	if n := s.ScanRequests(img.digest); n != 1 {
		t.Errorf("ScanRequests = %d, want 1 accepted", n)
	}
}

// TestAdapterProtocolErrors runs the client against adapters that break the spec.
func TestAdapterProtocolErrors(t *testing.T) {
	const id = "scan-1"
	tests := []struct {
		name    string
		handler http.HandlerFunc
		call    func(a *scan.Adapter) error
		wantErr string
	}{
		{
			name: "metadata redirect not followed",
			handler: func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, "http://elsewhere.invalid/api/v1/metadata", http.StatusMovedPermanently)
			},
			wantErr: "scanner x: GET /api/v1/metadata: 301 Moved Permanently to http://elsewhere.invalid/api/v1/metadata",
		},
		{
			name: "metadata 503 with message",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprint(w, `{"error":{"message":"updating the vulnerability DB"}}`)
			},
			wantErr: "scanner x: GET /api/v1/metadata: 503 Service Unavailable: updating the vulnerability DB",
		},
		{
			name: "metadata 500 with a huge body",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusInternalServerError)
				fmt.Fprintf(w, `{"error":{"message":"%s"}}`, strings.Repeat("x", 70<<10))
			},
			wantErr: "scanner x: GET /api/v1/metadata: 500 Internal Server Error",
		},
		{
			name: "metadata not an object",
			handler: func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprint(w, `null`)
			},
			wantErr: "scanner x: GET /api/v1/metadata: decode metadata: not a JSON object",
		},
		{
			name: "metadata over 1 MiB",
			handler: func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, `{"properties":{"x":"%s"}}`, strings.Repeat("x", 1<<20))
			},
			wantErr: "scanner x: GET /api/v1/metadata: scanner x sent more than 1048576 bytes",
		},
		{
			name: "scan answers 200",
			handler: func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprint(w, `{"id":"x"}`)
			},
			call:    scanCall,
			wantErr: "scanner x: POST /api/v1/scan: 200 OK",
		},
		{
			name: "scan id with a slash",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusAccepted)
				fmt.Fprint(w, `{"id":"../../metadata"}`)
			},
			call:    scanCall,
			wantErr: `scanner x: POST /api/v1/scan: unusable scan id "../../metadata"`,
		},
		{
			name: "scan without id",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusAccepted)
				fmt.Fprint(w, `{"ID":""}`)
			},
			call:    scanCall,
			wantErr: "scanner x: POST /api/v1/scan: empty scan id",
		},
		{
			name: "scan request as the spec says",
			handler: func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/vnd.scanner.adapter.scan.request+json; version=1.1" {
					w.WriteHeader(http.StatusBadRequest)
					return
				}
				w.WriteHeader(http.StatusAccepted)
				fmt.Fprint(w, `{"id":"a:b"}`)
			},
			call: func(a *scan.Adapter) error {
				id, err := a.Scan(context.Background(), scan.ScanRequest{})
				if err == nil && id != "a:b" {
					err = fmt.Errorf("id %q", id)
				}
				return err
			},
		},
		{
			name: "report 302 with Refresh-After",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Refresh-After", "5")
				w.Header().Set("Location", r.URL.String())
				w.WriteHeader(http.StatusFound)
			},
			call: func(a *scan.Adapter) error {
				r, after, err := a.Report(context.Background(), id, scan.ReportV11)
				if err == nil && (r != nil || after != 5*time.Second) {
					err = fmt.Errorf("got %v, %v", r, after)
				}
				return err
			},
		},
		{
			name: "report of another type",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/vnd.scanner.adapter.vuln.report.raw")
				fmt.Fprint(w, `{"SchemaVersion":2,"Results":[]}`)
			},
			call:    reportCall,
			wantErr: "scanner x: GET /api/v1/scan/scan-1/report: asked for application/vnd.security.vulnerability.report; version=1.1, got application/vnd.scanner.adapter.vuln.report.raw",
		},
		{
			name: "report as plain JSON",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json; charset=utf-8")
				fmt.Fprint(w, `{"scanner":{"name":"x"},"vulnerabilities":[{"id":"CVE-1","severity":"Low"}]}`)
			},
			call: reportCall,
		},
		{
			name: "report with a bad entry",
			handler: func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprint(w, `{"vulnerabilities":[{"id":"CVE-1","severity":"Low"},{"id":"CVE-2","severity":"Important"}]}`)
			},
			call:    reportCall,
			wantErr: `scanner x: GET /api/v1/scan/scan-1/report: vulnerability 1 (CVE-2): unknown severity "Important" (want one of Unknown, Negligible, Low, Medium, High, Critical)`,
		},
		{
			name: "report 500 without a body",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusInternalServerError)
			},
			call:    reportCall,
			wantErr: "scanner x: GET /api/v1/scan/scan-1/report: the scan failed: 500 Internal Server Error, no message",
		},
		{
			name: "report 307",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Location", "/elsewhere")
				w.WriteHeader(http.StatusTemporaryRedirect)
			},
			call:    reportCall,
			wantErr: "scanner x: GET /api/v1/scan/scan-1/report: 307 Temporary Redirect to /elsewhere",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler)
			defer srv.Close()
			a := scan.NewAdapter("x", srv.URL+"/", "", srv.Client())
			call := tt.call
			if call == nil {
				call = func(a *scan.Adapter) error { _, err := a.Metadata(context.Background()); return err }
			}
			err := call(a)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("error %v\nwant  %s", err, tt.wantErr)
			}
		})
	}
}

func scanCall(a *scan.Adapter) error {
	_, err := a.Scan(context.Background(), scan.ScanRequest{})
	return err
}

func reportCall(a *scan.Adapter) error {
	_, _, err := a.Report(context.Background(), "scan-1", scan.ReportV11)
	return err
}

func TestAdapterNetworkErrors(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	base := srv.URL
	srv.Close()
	a := scan.NewAdapter("gone", base, "", nil)
	_, err := a.Metadata(t.Context())
	if err == nil || !strings.HasPrefix(err.Error(), "scanner gone: GET /api/v1/metadata: dial tcp ") {
		t.Errorf("closed port: %v", err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := a.Scan(ctx, scan.ScanRequest{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	if _, _, err := a.Report(t.Context(), "a/b", scan.ReportV11); err == nil || err.Error() != `scanner gone: report: unusable scan id "a/b"` {
		t.Errorf("bad id: %v", err)
	}
}
