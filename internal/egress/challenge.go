package egress

import (
	"strings"
)

// A challenge is one auth challenge of a WWW-Authenticate header
// (RFC 7235): a scheme such as Bearer or Basic and its parameters, whose
// names are lower-cased.
type challenge struct {
	scheme string
	params map[string]string
}

// maxChallengeBytes bounds the WWW-Authenticate headers read from a server.
const maxChallengeBytes = 8 << 10

// parseChallenges reads the challenges of WWW-Authenticate header values.
// It is lenient where servers are sloppy (spaces, unquoted values, empty
// list elements) and skips what it cannot read; it never fails. Only the
// first maxChallengeBytes of all values are read.
func parseChallenges(values []string) []challenge {
	var out []challenge
	budget := maxChallengeBytes
	for _, v := range values {
		if len(v) > budget {
			v = v[:budget]
		}
		budget -= len(v)
		out = append(out, parseHeader(v)...)
		if budget <= 0 {
			break
		}
	}
	return out
}

// parseHeader reads one header value: challenge *( "," challenge ), where a
// challenge is a token (the scheme) followed by comma-separated
// name=value parameters, a value being a token or a quoted string.
func parseHeader(s string) []challenge {
	var out []challenge
	var cur *challenge
	for {
		s = strings.TrimLeft(s, " \t,")
		if s == "" {
			return out
		}
		var tok string
		tok, s = readToken(s)
		if tok == "" {
			// Not a token: skip to the next list element.
			if i := strings.IndexByte(s, ','); i >= 0 {
				s = s[i+1:]
				continue
			}
			return out
		}
		rest := strings.TrimLeft(s, " \t")
		if strings.HasPrefix(rest, "=") && cur != nil {
			// A parameter of the current challenge.
			var val string
			val, s = value(strings.TrimLeft(rest[1:], " \t"))
			name := strings.ToLower(tok)
			if _, dup := cur.params[name]; !dup {
				cur.params[name] = val
			}
			continue
		}
		if strings.HasPrefix(rest, "=") {
			// A parameter with no challenge before it: skip it.
			_, s = value(strings.TrimLeft(rest[1:], " \t"))
			continue
		}
		out = append(out, challenge{scheme: tok, params: map[string]string{}})
		cur = &out[len(out)-1]
	}
}

// readToken returns the leading RFC 7230 token of s and the rest.
func readToken(s string) (string, string) {
	i := 0
	for i < len(s) && isTokenChar(s[i]) {
		i++
	}
	return s[:i], s[i:]
}

func isTokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~/", c) >= 0
}

// value returns a parameter value at the start of s (a quoted string with
// backslash escapes, or else everything up to the next comma, trimmed, as
// servers write URLs unquoted) and the rest.
func value(s string) (string, string) {
	if !strings.HasPrefix(s, `"`) {
		v, rest, _ := strings.Cut(s, ",")
		return strings.TrimSpace(v), rest
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch c := s[i]; c {
		case '"':
			return b.String(), s[i+1:]
		case '\\':
			if i+1 < len(s) {
				i++
				b.WriteByte(s[i])
			}
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), "" // unterminated: take what there is
}
