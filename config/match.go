package config

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// pattern is a Rule's Repositories compiled once: each segment a path.Match
// pattern for one segment of a GUN, so * never crosses a slash.
type pattern struct {
	all  bool     // "**": every GUN
	segs []string // checked to be valid path.Match patterns
	deep bool     // a trailing "/**": one or more further segments
}

// compilePattern compiles p. "**" alone matches every GUN, and a trailing
// "/**" matches one or more further segments; ** anywhere else is an error,
// as are empty segments and path.Match syntax errors.
func compilePattern(p string) (pattern, error) {
	switch p {
	case "":
		return pattern{}, errors.New("required: a pattern over GUNs such as docker.io/library/*, docker.io/** or **")
	case "**":
		return pattern{all: true}, nil
	}
	prefix, deep := strings.CutSuffix(p, "/**")
	segs := strings.Split(prefix, "/")
	for _, seg := range segs {
		switch {
		case seg == "":
			return pattern{}, fmt.Errorf("bad pattern %q: empty path segment", p)
		case strings.Contains(seg, "**"):
			return pattern{}, fmt.Errorf("bad pattern %q: ** may only stand alone or end the pattern as /**", p)
		}
		// path.Match checks the whole pattern, whatever it is matched against.
		if _, err := path.Match(seg, ""); err != nil {
			return pattern{}, fmt.Errorf("bad pattern %q: %w", p, err)
		}
	}
	return pattern{segs: segs, deep: deep}, nil
}

// matches reports whether gun matches p, segment by segment.
func (p *pattern) matches(gun string) bool {
	if p.all {
		return true
	}
	rest := gun
	for i, seg := range p.segs {
		g, tail, more := strings.Cut(rest, "/")
		if ok, _ := path.Match(seg, g); !ok {
			return false
		}
		if !more {
			return i == len(p.segs)-1 && !p.deep
		}
		rest = tail
	}
	// gun has segments beyond the pattern's (none for a zero pattern).
	return p.deep
}

// Matches reports whether r's Repositories pattern matches gun, a GUN such as
// docker.io/library/alpine. The pattern was compiled by Load; a Rule that
// Load did not return matches nothing.
func (r *Rule) Matches(gun string) bool {
	return r.pattern.matches(gun)
}

// RuleFor returns the first of t's rules that matches gun, pointing into
// t.Rules, or nil when none does: then the GUN is refused. It is the one way
// to find the rule for a GUN.
func (t *Trust) RuleFor(gun string) *Rule {
	for i := range t.Rules {
		if r := &t.Rules[i]; r.Matches(gun) {
			return r
		}
	}
	return nil
}
