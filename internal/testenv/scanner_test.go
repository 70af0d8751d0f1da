package testenv

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/internal/scan"
)

// scannerDo sends one request to s and returns the status, headers and body.
func scannerDo(t *testing.T, method, url, contentType, accept, body string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func TestScannerSpeaksTheSpec(t *testing.T) {
	reg := NewRegistry(t)
	img := Image(t, "scanner", 1, 100)
	d := reg.Push(t, "library/app", "v1", img)
	idx := reg.PushIndex(t, "library/app", "multi", Index(t, img))
	s := StartScanner(t)
	s.SetDelay(2 * time.Second)

	status, h, body := scannerDo(t, "GET", s.URL()+"/api/v1/metadata", "", "", "")
	if status != 200 || h.Get("Content-Type") != mediaScannerMetadata || !strings.Contains(body, `"name":"trustproxy-test-adapter"`) {
		t.Fatalf("metadata: %d %s %s", status, h.Get("Content-Type"), body)
	}

	const reqType = "application/vnd.scanner.adapter.scan.request+json; version=1.1"
	request := `{"registry":{"url":"` + reg.URL() + `"},"artifact":{"repository":"library/app","digest":"` + d.String() + `"}}`
	for _, tt := range []struct {
		contentType, body string
		status            int
		message           string
	}{
		{"application/json", request, 400, `unsupported content type "application/json"`},
		{reqType, `{"registry":`, 400, "unmarshalling scan request: unexpected EOF"},
		{reqType, `{"artifact":{"repository":"library/app","digest":"` + d.String() + `"}}`, 422, "missing registry.url"},
	} {
		status, h, body := scannerDo(t, "POST", s.URL()+"/api/v1/scan", tt.contentType, "", tt.body)
		var e struct{ Error struct{ Message string } }
		if status != tt.status || h.Get("Content-Type") != mediaScannerError || json.Unmarshal([]byte(body), &e) != nil || e.Error.Message != tt.message {
			t.Errorf("POST %s %q: %d %s, want %d %q", tt.contentType, tt.body, status, body, tt.status, tt.message)
		}
	}

	status, h, body = scannerDo(t, "POST", s.URL()+"/api/v1/scan", "application/vnd.scanner.adapter.scan.request+json; version=1.0", "", request)
	var sr struct{ ID string }
	if status != 202 || h.Get("Content-Type") != mediaScanResponse || json.Unmarshal([]byte(body), &sr) != nil || sr.ID == "" {
		t.Fatalf("scan: %d %s %s", status, h.Get("Content-Type"), body)
	}
	report := s.URL() + "/api/v1/scan/" + sr.ID + "/report"
	status, h, _ = scannerDo(t, "GET", report, "", scan.ReportV11, "")
	if status != 302 || h.Get("Refresh-After") != "1" {
		t.Errorf("report while scanning: %d, Refresh-After %q", status, h.Get("Refresh-After"))
	}
	if status, _, _ := scannerDo(t, "GET", report, "", "application/vnd.security.sbom.report+json; version=1.0", ""); status != 501 {
		t.Errorf("sbom report: %d", status)
	}
	if status, _, _ := scannerDo(t, "GET", s.URL()+"/api/v1/scan/nope/report", "", scan.ReportV11, ""); status != 404 {
		t.Errorf("unknown id: %d", status)
	}

	// An index is no image: the scan fails at the pull.
	s.SetDelay(0)
	s.SetConsumes(mediaOCIManifest, mediaDockerManifest, mediaDockerList)
	indexRequest := strings.Replace(request, d.String(), idx.String(), 1)
	_, _, body = scannerDo(t, "POST", s.URL()+"/api/v1/scan", reqType, "", indexRequest)
	if err := json.Unmarshal([]byte(body), &sr); err != nil {
		t.Fatal(err)
	}
	status, _, body = scannerDo(t, "GET", s.URL()+"/api/v1/scan/"+sr.ID+"/report", "", "", "")
	want := `is not an image manifest`
	if status != 500 || !strings.Contains(body, want) {
		t.Errorf("index: %d %s", status, body)
	}
	if n := s.ScanRequests(digest.Digest(idx.String())); n != 1 {
		t.Errorf("ScanRequests(index) = %d", n)
	}
}
