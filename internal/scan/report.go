package scan

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/trustproxy/trustproxy/internal/severity"
)

// Report media types a client may ask for (Accept) and MaxReportBytes, the largest report accepted.
const (
	ReportV11      = "application/vnd.security.vulnerability.report; version=1.1"
	ReportHarbor10 = "application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0"
	MaxReportBytes = 16 << 20 // a report body larger than this is refused
)

// Report is a HarborVulnerabilityReport. Fields the spec adds beyond these
// (preferred_cvss, cwe_ids, vendor_attributes) are ignored.
type Report struct {
	GeneratedAt     time.Time       `json:"generated_at"`
	Artifact        Artifact        `json:"artifact"`
	Scanner         ScannerInfo     `json:"scanner"`
	Severity        string          `json:"severity"`
	Vulnerabilities []Vulnerability `json:"vulnerabilities"`
}

// Vulnerability is a VulnerabilityItem of a report.
type Vulnerability struct {
	ID          string   `json:"id"`
	Package     string   `json:"package"`
	Version     string   `json:"version"`
	FixVersion  string   `json:"fix_version"`
	Severity    string   `json:"severity"`
	Description string   `json:"description"`
	Links       []string `json:"links"`
}

// ScannerInfo names a scanner, as in metadata and reports.
type ScannerInfo struct {
	Name    string `json:"name"`
	Vendor  string `json:"vendor"`
	Version string `json:"version"`
}

// Artifact is the artifact of a scan request, echoed in its report.
type Artifact struct {
	Repository string `json:"repository"`
	Digest     string `json:"digest"`
	Tag        string `json:"tag"`
	MimeType   string `json:"mime_type"`
}

// ParseReport reads a report: at most MaxReportBytes, a JSON object, every vulnerability with an id and a
// severity in the spec's enum (else an error naming the entry), the report's own severity (if present) in
// the enum. Severities are rewritten in the spec's spelling ("CRITICAL" becomes "Critical").
func ParseReport(b []byte) (*Report, error) {
	if len(b) > MaxReportBytes {
		return nil, fmt.Errorf("report of %d bytes is over the %d-byte limit", len(b), MaxReportBytes)
	}
	var r Report
	if err := decodeObject(b, &r); err != nil {
		return nil, fmt.Errorf("decode report: %w", err)
	}
	if r.Severity != "" {
		sev, err := severity.Parse(r.Severity)
		if err != nil {
			return nil, fmt.Errorf("report severity: %w", err)
		}
		r.Severity = sev.String()
	}
	for i := range r.Vulnerabilities {
		v := &r.Vulnerabilities[i]
		if strings.TrimSpace(v.ID) == "" {
			return nil, fmt.Errorf("vulnerability %d (package %q) has no id", i, clean(v.Package))
		}
		sev, err := severity.Parse(v.Severity)
		if err != nil {
			return nil, fmt.Errorf("vulnerability %d (%s): %w", i, clean(v.ID), err)
		}
		v.Severity = sev.String()
	}
	if r.Scanner.Name == "" && r.GeneratedAt.IsZero() {
		// An empty object would otherwise pass as a clean report.
		return nil, errors.New("not a vulnerability report: it names neither its scanner nor when it was generated")
	}
	return &r, nil
}

// decodeObject decodes b, which must hold one JSON object, into v: null, arrays and other values are
// errors, where json.Unmarshal would leave v as it was.
func decodeObject(b []byte, v any) error {
	if t := bytes.TrimLeft(b, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return errors.New("not a JSON object")
	}
	return json.Unmarshal(b, v)
}

// Finding is what a report holds at or above a threshold, not allow-listed.
type Finding struct {
	Worst Vulnerability // the most severe (ties: the lowest ID, for stable output)
	More  int           // how many more at or above the threshold
}

// Blocking returns the vulnerabilities of r at or above threshold whose ID allowed(id) does not excuse
// (allowed may be nil), worst first; nil when none. A report with no vulnerabilities passes whatever its
// overall Severity says: clean reports often say "Unknown". A severity that does not parse (only in
// reports not made by ParseReport) counts as Critical.
func (r *Report) Blocking(threshold severity.Level, allowed func(id string) bool) *Finding {
	if r == nil {
		return nil
	}
	var f *Finding
	var worst severity.Level
	for _, v := range r.Vulnerabilities {
		sev, err := severity.Parse(v.Severity)
		if err != nil {
			sev = severity.Critical
		}
		if sev < threshold || (allowed != nil && allowed(v.ID)) {
			continue
		}
		if f == nil {
			f, worst = &Finding{Worst: v}, sev
			continue
		}
		f.More++
		if sev > worst || sev == worst && lessVuln(v, f.Worst) {
			f.Worst, worst = v, sev
		}
	}
	return f
}

// lessVuln orders vulnerabilities of equal severity by ID, then package and versions, so that the
// worst one does not depend on the report's order.
func lessVuln(a, b Vulnerability) bool {
	return cmp.Or(
		strings.Compare(a.ID, b.ID),
		strings.Compare(a.Package, b.Package),
		strings.Compare(a.Version, b.Version),
		strings.Compare(a.FixVersion, b.FixVersion),
	) < 0
}

// Describe says what blocks, for an operator:
// "CVE-2024-3094 Critical in xz-utils 5.6.0, fixed in 5.6.1; 3 more at High or above".
// Fields from the report are cut to 128 bytes and control characters replaced. A nil Finding is "".
func (f *Finding) Describe(threshold severity.Level) string {
	if f == nil {
		return ""
	}
	v := f.Worst
	sev := clean(v.Severity)
	if s, err := severity.Parse(v.Severity); err == nil {
		sev = s.String()
	}
	var b strings.Builder
	b.WriteString(clean(v.ID) + " " + sev)
	if v.Package != "" {
		b.WriteString(" in " + clean(v.Package))
		if v.Version != "" {
			b.WriteString(" " + clean(v.Version))
		}
	}
	if v.FixVersion != "" {
		b.WriteString(", fixed in " + clean(v.FixVersion))
	}
	if f.More > 0 {
		fmt.Fprintf(&b, "; %d more at %s or above", f.More, threshold)
	}
	return b.String()
}

// maxField is how much of a string from an adapter goes into a message.
const maxField = 128

// clean makes s, from an adapter, fit for a log line or an error: invalid UTF-8 and control characters
// become '?', and it is cut to maxField bytes.
func clean(s string) string { return cleanN(s, maxField) }

// cleanN is clean with a limit of n bytes.
func cleanN(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r == utf8.RuneError || unicode.IsControl(r) {
			return '?'
		}
		return r
	}, s)
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
