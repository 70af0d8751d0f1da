package scan

import (
	"testing"
)

func TestParseSeverity(t *testing.T) {
	tests := []struct {
		in      string
		want    Severity
		wantErr bool
	}{
		{in: "Unknown", want: SeverityUnknown},
		{in: "Negligible", want: SeverityNegligible},
		{in: "Low", want: SeverityLow},
		{in: "Medium", want: SeverityMedium},
		{in: "High", want: SeverityHigh},
		{in: "Critical", want: SeverityCritical},
		{in: "critical", want: SeverityCritical},
		{in: "CRITICAL", want: SeverityCritical},
		{in: "", wantErr: true},
		{in: " High", wantErr: true},
		{in: "Severe", wantErr: true},
		{in: "4", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSeverity(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseSeverity(%q) error %v, want error %v", tt.in, err, tt.wantErr)
			}
			if err == nil && got != tt.want {
				t.Errorf("ParseSeverity(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestSeverityTextRoundTrip(t *testing.T) {
	for s := SeverityUnknown; s <= SeverityCritical; s++ {
		b, err := s.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != s.String() {
			t.Errorf("MarshalText %q, String %q", b, s)
		}
		var got Severity
		if err := got.UnmarshalText(b); err != nil || got != s {
			t.Errorf("UnmarshalText(%q) = %v, %v", b, got, err)
		}
		if s > SeverityUnknown && !(s-1 < s) {
			t.Errorf("order broken at %v", s)
		}
	}
	if got := Severity(9).String(); got != "Severity(9)" {
		t.Errorf("String of 9 = %q", got)
	}
	if _, err := Severity(-1).MarshalText(); err == nil {
		t.Error("MarshalText of -1: no error")
	}
	var s Severity = SeverityHigh
	if err := s.UnmarshalText([]byte("severe")); err == nil || s != SeverityHigh {
		t.Errorf("UnmarshalText(severe) = %v, left %v", err, s)
	}
}
