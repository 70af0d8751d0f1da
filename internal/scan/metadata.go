package scan

import (
	"maps"
	"mime"
	"strings"
)

// Metadata is a ScannerAdapterMetadata: what the adapter scans and which reports it makes.
type Metadata struct {
	Scanner      ScannerInfo       `json:"scanner"`
	Capabilities []Capability      `json:"capabilities"`
	Properties   map[string]string `json:"properties"`
}

// Capability is a ScannerCapability.
type Capability struct {
	Type              string   `json:"type"` // "" means vulnerability (spec: backward compatible)
	ConsumesMIMETypes []string `json:"consumes_mime_types"`
	ProducesMIMETypes []string `json:"produces_mime_types"`
}

// ReportType returns the report media type to ask for a manifest of manifestMediaType: ReportV11 when a
// vulnerability capability consuming it produces ReportV11, else ReportHarbor10 when one produces that;
// false when no vulnerability capability consumes manifestMediaType or none of those two is produced.
// Adapters consume image manifests: an index is scanned through its image manifests.
func (m *Metadata) ReportType(manifestMediaType string) (string, bool) {
	if m == nil || manifestMediaType == "" {
		return "", false
	}
	var v11, harbor10 bool
	for _, c := range m.Capabilities {
		if c.Type != "" && !strings.EqualFold(c.Type, "vulnerability") {
			continue
		}
		if !containsMediaType(c.ConsumesMIMETypes, manifestMediaType) {
			continue
		}
		v11 = v11 || containsMediaType(c.ProducesMIMETypes, ReportV11)
		harbor10 = harbor10 || containsMediaType(c.ProducesMIMETypes, ReportHarbor10)
	}
	switch {
	case v11:
		return ReportV11, true
	case harbor10:
		return ReportHarbor10, true
	}
	return "", false
}

func containsMediaType(list []string, mt string) bool {
	for _, s := range list {
		if sameMediaType(s, mt) {
			return true
		}
	}
	return false
}

// sameMediaType compares media types as RFC 2045 does: type and parameter names in any case, spaces
// around ";" ignored ("...report;version=1.1" is ReportV11). Unparsable strings must be equal.
func sameMediaType(a, b string) bool {
	ta, pa, errA := mime.ParseMediaType(a)
	tb, pb, errB := mime.ParseMediaType(b)
	if errA != nil || errB != nil {
		return a == b
	}
	return ta == tb && maps.Equal(pa, pb)
}
