package scan

import (
	"fmt"
	"strconv"
	"strings"
)

// Severity of a vulnerability, ordered: Unknown < Negligible < Low < Medium < High < Critical.
type Severity int

// The severities of the spec's Severity enum, in order.
const (
	SeverityUnknown Severity = iota
	SeverityNegligible
	SeverityLow
	SeverityMedium
	SeverityHigh
	SeverityCritical
)

var severityNames = [...]string{"Unknown", "Negligible", "Low", "Medium", "High", "Critical"}

// ParseSeverity returns the severity named s, one of the spec's enum words in any case
// ("Critical", "critical"). Anything else, "" included, is an error.
func ParseSeverity(s string) (Severity, error) {
	for i, n := range severityNames {
		if strings.EqualFold(s, n) {
			return Severity(i), nil
		}
	}
	return 0, fmt.Errorf("unknown severity %q (want one of %s)", s, strings.Join(severityNames[:], ", "))
}

// String returns the severity as the spec spells it: "Critical".
func (s Severity) String() string {
	if s < 0 || int(s) >= len(severityNames) {
		return "Severity(" + strconv.Itoa(int(s)) + ")"
	}
	return severityNames[s]
}

// MarshalText returns the spec's spelling, so that logs and config dumps show words.
func (s Severity) MarshalText() ([]byte, error) {
	if s < 0 || int(s) >= len(severityNames) {
		return nil, fmt.Errorf("invalid severity %d", int(s))
	}
	return []byte(severityNames[s]), nil
}

// UnmarshalText sets s from a severity name in any case, as ParseSeverity.
func (s *Severity) UnmarshalText(b []byte) error {
	v, err := ParseSeverity(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}
