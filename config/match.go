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
	ok, _ := match(r.Repositories, gun)
	return ok
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
// one or more further segments; ** anywhere else is an error, as are empty
// segments and path.Match syntax errors, whatever gun is.
func match(pattern, gun string) (bool, error) {
	switch pattern {
	case "":
		return false, errors.New("required: a pattern over GUNs such as docker.io/library/*, docker.io/** or **")
	case "**":
		return true, nil
	}
	prefix, deep := strings.CutSuffix(pattern, "/**")
	want, got := strings.Split(prefix, "/"), strings.Split(gun, "/")
	ok := len(got) == len(want)
	if deep {
		ok = len(got) > len(want)
	}
	for i, seg := range want {
		switch {
		case seg == "":
			return false, fmt.Errorf("bad pattern %q: empty path segment", pattern)
		case strings.Contains(seg, "**"):
			return false, fmt.Errorf("bad pattern %q: ** may only stand alone or end the pattern as /**", pattern)
		}
		var g string
		if i < len(got) {
			g = got[i]
		}
		m, err := path.Match(seg, g)
		if err != nil {
			return false, fmt.Errorf("bad pattern %q: %w", pattern, err)
		}
		ok = ok && m
	}
	return ok, nil
}
