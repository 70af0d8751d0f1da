package scan

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trustproxy/trustproxy/internal/severity"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseReportTrivy(t *testing.T) {
	r, err := ParseReport(readTestdata(t, "trivy-report.json"))
	if err != nil {
		t.Fatal(err)
	}
	want := &Report{
		GeneratedAt: time.Date(2024, 4, 2, 9, 14, 27, 118902341, time.UTC),
		Artifact: Artifact{
			Repository: "library/debian",
			Digest:     "sha256:9a07a7ef1b0e6a5b7ea7ab7c3a34f1a3e8c1e4c8d0b6ad13d8e7f1a7b4c5d6e7",
			MimeType:   "application/vnd.docker.distribution.manifest.v2+json",
		},
		Scanner:  ScannerInfo{Name: "Trivy", Vendor: "Aqua Security", Version: "v0.50.1"},
		Severity: "Critical",
	}
	got := *r
	got.Vulnerabilities = nil
	if d := cmp.Diff(want, &got); d != "" {
		t.Errorf("report (-want +got):\n%s", d)
	}
	if len(r.Vulnerabilities) != 5 {
		t.Fatalf("%d vulnerabilities", len(r.Vulnerabilities))
	}
	wantFirst := Vulnerability{
		ID: "CVE-2024-3094", Package: "xz-utils", Version: "5.6.0-0.2", FixVersion: "5.6.1+really5.4.5-1",
		Severity:    "Critical",
		Description: "Malicious code was discovered in the upstream tarballs of xz, starting with version 5.6.0.",
		Links:       []string{"https://avd.aquasec.com/nvd/cve-2024-3094"},
	}
	if d := cmp.Diff(wantFirst, r.Vulnerabilities[0]); d != "" {
		t.Errorf("first vulnerability (-want +got):\n%s", d)
	}
}

func TestParseReport(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		want    *Report // compared when not nil
		wantErr string  // substring; "" for success
	}{
		{name: "clean trivy", body: string(readTestdata(t, "trivy-report-clean.json"))},
		{name: "empty object", body: `{}`, wantErr: "names neither its scanner"},
		{name: "leading space", body: " \n{\"scanner\":{\"name\":\"t\"}}", want: &Report{Scanner: ScannerInfo{Name: "t"}}},
		{
			name: "severities normalized",
			body: `{"scanner":{"name":"t"},"severity":"HIGH","vulnerabilities":[{"id":"CVE-1","severity":"high"}]}`,
			want: &Report{Scanner: ScannerInfo{Name: "t"}, Severity: "High", Vulnerabilities: []Vulnerability{{ID: "CVE-1", Severity: "High"}}},
		},
		{name: "null", body: `null`, wantErr: "not a JSON object"},
		{name: "array", body: `[{"id":"CVE-1"}]`, wantErr: "not a JSON object"},
		{name: "empty", body: ``, wantErr: "not a JSON object"},
		{name: "not JSON", body: `<html>`, wantErr: "not a JSON object"},
		{name: "truncated", body: `{"vulnerabilities":[{"id":"CVE-1","severity":"High"}`, wantErr: "decode report"},
		{name: "trailing data", body: `{} {}`, wantErr: "decode report"},
		{name: "wrong type", body: `{"vulnerabilities":{"id":"CVE-1"}}`, wantErr: "decode report"},
		{name: "bad time", body: `{"generated_at":"yesterday"}`, wantErr: "decode report"},
		{name: "no id", body: `{"vulnerabilities":[{"package":"openssl","severity":"High"}]}`, wantErr: `vulnerability 0 (package "openssl") has no id`},
		{name: "blank id", body: `{"vulnerabilities":[{"id":"CVE-1","severity":"Low"},{"id":" ","severity":"High"}]}`, wantErr: "vulnerability 1"},
		{name: "no severity", body: `{"vulnerabilities":[{"id":"CVE-1"}]}`, wantErr: `vulnerability 0 (CVE-1): unknown severity ""`},
		{name: "bad severity", body: `{"vulnerabilities":[{"id":"CVE-1","severity":"Severe"}]}`, wantErr: `unknown severity "Severe"`},
		{name: "numeric severity", body: `{"vulnerabilities":[{"id":"CVE-1","severity":4}]}`, wantErr: "decode report"},
		{name: "bad report severity", body: `{"severity":"Bad","vulnerabilities":[]}`, wantErr: "report severity"},
		{name: "oversized", body: `{"padding":"` + strings.Repeat("x", MaxReportBytes) + `"}`, wantErr: "over the 16777216-byte limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseReport([]byte(tt.body))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.want != nil {
				if d := cmp.Diff(tt.want, got); d != "" {
					t.Errorf("(-want +got):\n%s", d)
				}
			}
		})
	}
}

func TestBlocking(t *testing.T) {
	trivy, err := ParseReport(readTestdata(t, "trivy-report.json"))
	if err != nil {
		t.Fatal(err)
	}
	vuln := func(id, sev string) Vulnerability { return Vulnerability{ID: id, Severity: sev} }
	tests := []struct {
		name      string
		report    *Report
		threshold severity.Level
		allowed   []string
		want      *Finding
	}{
		{
			name: "trivy at High", report: trivy, threshold: severity.High,
			want: &Finding{Worst: trivy.Vulnerabilities[0], More: 2},
		},
		{
			name: "trivy at Critical", report: trivy, threshold: severity.Critical,
			want: &Finding{Worst: trivy.Vulnerabilities[0]},
		},
		{
			name: "trivy at Critical, allowed", report: trivy, threshold: severity.Critical,
			allowed: []string{"CVE-2024-3094"},
		},
		{
			name: "trivy at High, worst allowed", report: trivy, threshold: severity.High,
			allowed: []string{"CVE-2024-3094"},
			want:    &Finding{Worst: trivy.Vulnerabilities[2], More: 1}, // by bytes, CVE-2023-44487 < CVE-2023-4911
		},
		{
			name: "trivy at Unknown counts all", report: trivy, threshold: severity.Unknown,
			want: &Finding{Worst: trivy.Vulnerabilities[0], More: 4},
		},
		{
			name: "clean report saying Critical", report: &Report{Severity: "Critical"}, threshold: severity.Low,
		},
		{name: "nil report", threshold: severity.Low},
		{
			name:      "ties go to the lowest ID whatever the order",
			report:    &Report{Vulnerabilities: []Vulnerability{vuln("CVE-9", "High"), vuln("CVE-10", "High"), vuln("CVE-1", "Low")}},
			threshold: severity.Medium,
			want:      &Finding{Worst: vuln("CVE-10", "High"), More: 1},
		},
		{
			name:      "same ID in two packages",
			report:    &Report{Vulnerabilities: []Vulnerability{{ID: "CVE-1", Package: "openssl", Severity: "High"}, {ID: "CVE-1", Package: "libssl3", Severity: "High"}}},
			threshold: severity.High,
			want:      &Finding{Worst: Vulnerability{ID: "CVE-1", Package: "libssl3", Severity: "High"}, More: 1},
		},
		{
			name:      "unparsed severity counts as Critical",
			report:    &Report{Vulnerabilities: []Vulnerability{vuln("CVE-1", "High"), vuln("CVE-2", "Severe")}},
			threshold: severity.Critical,
			want:      &Finding{Worst: vuln("CVE-2", "Severe")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var allowed func(string) bool
			if tt.allowed != nil {
				allowed = func(id string) bool {
					for _, a := range tt.allowed {
						if a == id {
							return true
						}
					}
					return false
				}
			}
			got := tt.report.Blocking(tt.threshold, allowed)
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
			if tt.report != nil && tt.want != nil {
				// The result does not depend on the report's order.
				rev := *tt.report
				rev.Vulnerabilities = make([]Vulnerability, len(tt.report.Vulnerabilities))
				for i, v := range tt.report.Vulnerabilities {
					rev.Vulnerabilities[len(rev.Vulnerabilities)-1-i] = v
				}
				if d := cmp.Diff(got, rev.Blocking(tt.threshold, allowed)); d != "" {
					t.Errorf("reversed report (-forward +reversed):\n%s", d)
				}
			}
		})
	}
}

func TestDescribe(t *testing.T) {
	tests := []struct {
		name      string
		finding   *Finding
		threshold severity.Level
		want      string
	}{
		{
			name:      "all parts",
			finding:   &Finding{Worst: Vulnerability{ID: "CVE-2024-3094", Package: "xz-utils", Version: "5.6.0", FixVersion: "5.6.1", Severity: "Critical"}, More: 3},
			threshold: severity.High,
			want:      "CVE-2024-3094 Critical in xz-utils 5.6.0, fixed in 5.6.1; 3 more at High or above",
		},
		{
			name:      "no fix, no more",
			finding:   &Finding{Worst: Vulnerability{ID: "CVE-2022-0563", Package: "util-linux", Version: "2.38.1", Severity: "Low"}},
			threshold: severity.Low,
			want:      "CVE-2022-0563 Low in util-linux 2.38.1",
		},
		{
			name:      "severity spelled by the spec",
			finding:   &Finding{Worst: Vulnerability{ID: "CVE-1", Package: "p", Severity: "CRITICAL"}, More: 1},
			threshold: severity.Medium,
			want:      "CVE-1 Critical in p; 1 more at Medium or above",
		},
		{
			name:      "no package",
			finding:   &Finding{Worst: Vulnerability{ID: "GHSA-xxxx", Severity: "High", FixVersion: "2.0"}},
			threshold: severity.High,
			want:      "GHSA-xxxx High, fixed in 2.0",
		},
		{
			name:      "control characters and length",
			finding:   &Finding{Worst: Vulnerability{ID: "CVE-1\n\x1b[31m", Package: strings.Repeat("é", 100), Severity: "High"}},
			threshold: severity.High,
			want:      "CVE-1??[31m High in " + strings.Repeat("é", 64) + "…",
		},
		{name: "nil", threshold: severity.High, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.finding.Describe(tt.threshold); got != tt.want {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}
