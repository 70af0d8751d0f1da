package scan

import (
	"encoding/json"
	"testing"
	"time"
)

func TestReportType(t *testing.T) {
	var trivy, clair Metadata
	if err := json.Unmarshal(readTestdata(t, "trivy-metadata.json"), &trivy); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(readTestdata(t, "metadata-v1.0.json"), &clair); err != nil {
		t.Fatal(err)
	}
	const (
		oci    = "application/vnd.oci.image.manifest.v1+json"
		docker = "application/vnd.docker.distribution.manifest.v2+json"
		index  = "application/vnd.oci.image.index.v1+json"
	)
	both := Metadata{Capabilities: []Capability{{
		Type:              "vulnerability",
		ConsumesMIMETypes: []string{oci},
		ProducesMIMETypes: []string{ReportHarbor10, "application/vnd.security.vulnerability.report;version=1.1"},
	}}}
	sbomOnly := Metadata{Capabilities: []Capability{{
		Type: "sbom", ConsumesMIMETypes: []string{oci}, ProducesMIMETypes: []string{ReportV11},
	}}}
	split := Metadata{Capabilities: []Capability{
		{Type: "vulnerability", ConsumesMIMETypes: []string{docker}, ProducesMIMETypes: []string{ReportV11}},
		{Type: "vulnerability", ConsumesMIMETypes: []string{oci}, ProducesMIMETypes: []string{ReportHarbor10}},
	}}
	rawOnly := Metadata{Capabilities: []Capability{{
		ConsumesMIMETypes: []string{oci}, ProducesMIMETypes: []string{"application/vnd.scanner.adapter.vuln.report.raw"},
	}}}
	tests := []struct {
		name   string
		md     *Metadata
		mt     string
		want   string
		wantOK bool
	}{
		{name: "trivy oci", md: &trivy, mt: oci, want: ReportV11, wantOK: true},
		{name: "trivy docker", md: &trivy, mt: docker, want: ReportV11, wantOK: true},
		{name: "trivy index", md: &trivy, mt: index},
		{name: "trivy empty type", md: &trivy, mt: ""},
		{name: "v1.0 adapter, no type", md: &clair, mt: docker, want: ReportHarbor10, wantOK: true},
		{name: "prefers 1.1, spelled without space", md: &both, mt: oci, want: ReportV11, wantOK: true},
		{name: "sbom capability does not count", md: &sbomOnly, mt: oci},
		{name: "per capability: docker", md: &split, mt: docker, want: ReportV11, wantOK: true},
		{name: "per capability: oci", md: &split, mt: oci, want: ReportHarbor10, wantOK: true},
		{name: "raw only", md: &rawOnly, mt: oci},
		{name: "nil metadata", mt: oci},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := tt.md.ReportType(tt.mt)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("ReportType(%q) = %q, %v; want %q, %v", tt.mt, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestRefreshAfter(t *testing.T) {
	tests := []struct {
		h    string
		want time.Duration
	}{
		{"", time.Second},
		{"1", time.Second},
		{"5", 5 * time.Second},
		{" 7 ", 7 * time.Second},
		{"0", time.Second},
		{"-3", time.Second},
		{"1.5", time.Second},
		{"Wed, 21 Oct 2015 07:28:00 GMT", time.Second},
		{"60", time.Minute},
		{"3600", time.Minute},
		{"99999999999999999999", time.Second},
	}
	for _, tt := range tests {
		if got := refreshAfter(tt.h); got != tt.want {
			t.Errorf("refreshAfter(%q) = %v, want %v", tt.h, got, tt.want)
		}
	}
}

func TestCheckID(t *testing.T) {
	for _, id := range []string{"3fa85f64-5717-4562-b3fc-2c963f66afa6", "a:b@c", "abc%2F", "x?y#z"} {
		if err := checkID(id); err != nil {
			t.Errorf("checkID(%q): %v", id, err)
		}
	}
	for _, id := range []string{"", ".", "..", "a/b", `a\b`, "a b", "a\x00", "\xff", string(make([]byte, 257))} {
		if err := checkID(id); err == nil {
			t.Errorf("checkID(%q): no error", id)
		}
	}
}
