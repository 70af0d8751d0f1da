package scan

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/trustproxy/trustproxy/internal/severity"
)

func FuzzParseReport(f *testing.F) {
	f.Add(readTestdata(f, "trivy-report.json"))
	f.Add(readTestdata(f, "trivy-report-clean.json"))
	f.Add([]byte(`{"severity":"Unknown","vulnerabilities":[]}`))
	f.Add([]byte(`{"vulnerabilities":[{"id":"CVE-1","severity":"negligible"},{"id":"","severity":"High"}]}`))
	f.Add([]byte(`{"generated_at":"2024-04-02T09:14:27+01:00","vulnerabilities":null}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseReport(b)
		if err != nil {
			return
		}
		for i, v := range r.Vulnerabilities {
			if _, err := severity.Parse(v.Severity); err != nil {
				t.Fatalf("accepted vulnerability %d with severity %q", i, v.Severity)
			}
		}
		if r.Severity != "" {
			if _, err := severity.Parse(r.Severity); err != nil {
				t.Fatalf("accepted report severity %q", r.Severity)
			}
		}
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("marshal accepted report: %v", err)
		}
		again, err := ParseReport(out)
		if err != nil {
			t.Fatalf("re-parse: %v\n%s", err, out)
		}
		if d := cmp.Diff(r, again); d != "" {
			t.Fatalf("re-parsed report differs (-first +again):\n%s", d)
		}
		f := r.Blocking(severity.Unknown, nil)
		if (f == nil) != (len(r.Vulnerabilities) == 0) {
			t.Fatalf("Blocking at Unknown = %+v for %d vulnerabilities", f, len(r.Vulnerabilities))
		}
		if f != nil && f.More != len(r.Vulnerabilities)-1 {
			t.Fatalf("Blocking at Unknown: More %d for %d vulnerabilities", f.More, len(r.Vulnerabilities))
		}
		_ = f.Describe(severity.High)
	})
}

func FuzzMetadata(f *testing.F) {
	f.Add(readTestdata(f, "trivy-metadata.json"), "application/vnd.oci.image.manifest.v1+json")
	f.Add(readTestdata(f, "metadata-v1.0.json"), "application/vnd.docker.distribution.manifest.v2+json")
	f.Add([]byte(`{"capabilities":[{"consumes_mime_types":["a/b; x=\"y\""],"produces_mime_types":["application/vnd.security.vulnerability.report;VERSION=1.1"]}]}`), "A/B; X=y")
	f.Add([]byte(`{"capabilities":null}`), "")
	f.Fuzz(func(t *testing.T, b []byte, mediaType string) {
		var m Metadata
		if decodeObject(b, &m) != nil {
			return
		}
		for _, mt := range []string{mediaType, "application/vnd.oci.image.manifest.v1+json"} {
			got, ok := m.ReportType(mt)
			if ok != (got != "") || ok && got != ReportV11 && got != ReportHarbor10 {
				t.Fatalf("ReportType(%q) = %q, %v", mt, got, ok)
			}
		}
	})
}
