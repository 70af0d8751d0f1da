package severity

import (
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    Level
		wantErr bool
	}{
		{in: "Unknown", want: Unknown},
		{in: "Negligible", want: Negligible},
		{in: "Low", want: Low},
		{in: "Medium", want: Medium},
		{in: "High", want: High},
		{in: "Critical", want: Critical},
		{in: "critical", want: Critical},
		{in: "CRITICAL", want: Critical},
		{in: "", wantErr: true},
		{in: " High", wantErr: true},
		{in: "Severe", wantErr: true},
		{in: "4", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Parse(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Parse(%q) error %v, want error %v", tt.in, err, tt.wantErr)
			}
			if err == nil && got != tt.want {
				t.Errorf("Parse(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
	_, err := Parse("Important")
	if want := `unknown severity "Important" (want one of Unknown, Negligible, Low, Medium, High, Critical)`; err == nil || err.Error() != want {
		t.Errorf("Parse(Important) error %v, want %s", err, want)
	}
}

func TestOrderAndText(t *testing.T) {
	want := []string{"Unknown", "Negligible", "Low", "Medium", "High", "Critical"}
	for i, l := range []Level{Unknown, Negligible, Low, Medium, High, Critical} {
		if l.String() != want[i] || i > 0 && !(l > Level(i)) {
			t.Errorf("level %d is %v (%d), want %s above the one before", i, l, int(l), want[i])
		}
		b, err := l.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != strings.ToLower(want[i]) {
			t.Errorf("MarshalText %q, want %q", b, strings.ToLower(want[i]))
		}
		var got Level
		if err := got.UnmarshalText(b); err != nil || got != l {
			t.Errorf("UnmarshalText(%q) = %v, %v", b, got, err)
		}
	}
	if Level(0) >= Unknown {
		t.Error("the zero Level is not below Unknown")
	}
	if got := Level(9).String(); got != "Level(9)" {
		t.Errorf("String of 9 = %q", got)
	}
	for _, l := range []Level{0, -1, 7} {
		if _, err := l.MarshalText(); err == nil {
			t.Errorf("MarshalText of %d: no error", int(l))
		}
	}
}

// TestUnmarshal: the configuration takes the lower-case words only, and a
// bad word leaves the level as it was.
func TestUnmarshal(t *testing.T) {
	tests := []struct {
		yaml    string
		want    Level
		wantErr string
	}{
		{yaml: "high", want: High},
		{yaml: "unknown", want: Unknown},
		{yaml: "High", want: Medium, wantErr: `line 1: severity "High": want one of unknown, negligible, low, medium, high, critical`},
		{yaml: "severe", want: Medium, wantErr: `line 1: severity "severe": want one of unknown, negligible, low, medium, high, critical`},
		{yaml: "''", want: 0},
		{yaml: "[high]", want: Medium, wantErr: "line 1: severity: want one of unknown, negligible, low, medium, high, critical"},
	}
	for _, tt := range tests {
		t.Run(tt.yaml, func(t *testing.T) {
			got := Medium
			err := yaml.Unmarshal([]byte(tt.yaml), &got)
			if (err != nil) != (tt.wantErr != "") || err != nil && !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Unmarshal(%q) error %v, want %q", tt.yaml, err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("Unmarshal(%q) = %v, want %v", tt.yaml, got, tt.want)
			}
		})
	}
}

// FuzzParse checks that Parse accepts exactly the spec's words, in any case.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"Critical", "low", "NEGLIGIBLE", "", "Severe", "crit\u0131cal"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := Parse(s)
		if err != nil {
			return
		}
		if !strings.EqualFold(s, l.String()) {
			t.Fatalf("Parse(%q) = %v", s, l)
		}
	})
}
