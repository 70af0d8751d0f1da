package severity

import (
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Level is a vulnerability severity. Levels are ordered:
// Unknown < Negligible < Low < Medium < High < Critical. The zero Level is
// no severity (a policy that has not set one) and is below them all.
type Level int8

// The severities of the spec's Severity enum, in order.
const (
	Unknown Level = iota + 1
	Negligible
	Low
	Medium
	High
	Critical
)

// words are the spec's spellings of the levels, by Level.
var words = [...]string{Unknown: "Unknown", Negligible: "Negligible", Low: "Low", Medium: "Medium", High: "High", Critical: "Critical"}

// valid says whether l is one of the spec's levels.
func (l Level) valid() bool { return l >= Unknown && l <= Critical }

// Parse returns the level named s, one of the spec's words in any case
// ("Critical", "critical", "CRITICAL"), as scanner reports spell them.
// Anything else, "" included, is an error.
func Parse(s string) (Level, error) {
	for l := Unknown; l <= Critical; l++ {
		if strings.EqualFold(s, words[l]) {
			return l, nil
		}
	}
	return 0, fmt.Errorf("unknown severity %q (want one of %s)", s, strings.Join(words[Unknown:], ", "))
}

// String returns the level as the spec spells it: "Critical".
func (l Level) String() string {
	if !l.valid() {
		return "Level(" + strconv.Itoa(int(l)) + ")"
	}
	return words[l]
}

// MarshalText returns the level as the configuration writes it: "critical".
func (l Level) MarshalText() ([]byte, error) {
	if !l.valid() {
		return nil, fmt.Errorf("invalid severity %d", int(l))
	}
	return []byte(strings.ToLower(words[l])), nil
}

// UnmarshalText sets l from one of the words the configuration documents,
// the spec's in lower case (unknown, ..., critical), or from "" to the zero
// Level, which a configuration leaves to its default. It rejects any other
// word, leaving l as it was.
func (l *Level) UnmarshalText(b []byte) error {
	s := string(b)
	if s == "" {
		*l = 0
		return nil
	}
	v, err := Parse(s)
	if err != nil || s != strings.ToLower(s) {
		return fmt.Errorf("severity %q: want one of %s", b, strings.ToLower(strings.Join(words[Unknown:], ", ")))
	}
	*l = v
	return nil
}

// UnmarshalYAML is UnmarshalText with the line of the YAML node in the error,
// which yaml.v3 leaves out for TextUnmarshaler errors.
func (l *Level) UnmarshalYAML(n *yaml.Node) error {
	err := fmt.Errorf("severity: want one of %s", strings.ToLower(strings.Join(words[Unknown:], ", ")))
	if n.Kind == yaml.ScalarNode {
		err = l.UnmarshalText([]byte(n.Value))
	}
	if err != nil {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %v", n.Line, err)}}
	}
	return nil
}
