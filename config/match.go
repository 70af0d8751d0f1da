package config

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// Matches reports whether r's Repositories pattern matches gun, a GUN such as
// docker.io/library/alpine. A malformed pattern, which Load rejects, matches
// nothing.
func (r Rule) Matches(gun string) bool {
	return match(r.Repositories, gun)
}

// RuleFor returns the first of c's trust rules that matches gun. It returns
// false when none does: then the GUN is refused.
func (c *Config) RuleFor(gun string) (Rule, bool) {
	for _, r := range c.Trust.Rules {
		if r.Matches(gun) {
			return r, true
		}
	}
	return Rule{}, false
}

// match reports whether pattern matches gun, segment by segment: each segment
// of pattern is a path.Match pattern for one segment of gun, so * never
// crosses a slash. "**" alone matches every GUN, and a trailing "/**" matches
// one or more further segments. A malformed pattern matches nothing.
func match(pattern, gun string) bool {
	if pattern == "**" {
		return true
	}
	prefix, deep := strings.CutSuffix(pattern, "/**")
	want, got := strings.Split(prefix, "/"), strings.Split(gun, "/")
	switch {
	case deep && len(got) <= len(want):
		return false
	case deep:
		got = got[:len(want)]
	case len(got) != len(want):
		return false
	}
	for i, p := range want {
		if ok, err := path.Match(p, got[i]); !ok || err != nil {
			return false
		}
	}
	return true
}

// checkPattern says why pattern is not one match understands, or returns nil.
func checkPattern(pattern string) error {
	if pattern == "" {
		return errors.New(`required: a pattern over GUNs such as docker.io/library/*, docker.io/** or **`)
	}
	if pattern == "**" {
		return nil
	}
	prefix, _ := strings.CutSuffix(pattern, "/**")
	for seg := range strings.SplitSeq(prefix, "/") {
		switch _, err := path.Match(seg, ""); {
		case err != nil:
			return fmt.Errorf("bad pattern %q: %w", pattern, err)
		case seg == "":
			return fmt.Errorf("bad pattern %q: empty path segment", pattern)
		case strings.Contains(seg, "**"):
			return fmt.Errorf("bad pattern %q: ** may only stand alone or end the pattern as /**", pattern)
		}
	}
	return nil
}
