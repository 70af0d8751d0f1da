package egress

import (
	"fmt"
	"time"
)

// A RealmError is a server's auth challenge naming a token realm that its
// endpoint's configuration does not allow. No request was made to the realm.
type RealmError struct {
	Field string // the endpoint's config path, e.g. upstreams[0]
	Realm string // as the challenge named it
	Why   string
}

func (e *RealmError) Error() string {
	return fmt.Sprintf("%s asked for credentials at token realm %q, which is refused (%s): credentials and token requests go only to its own origin and %s.token_realms; add the realm's origin there only if it is the registry's real token service",
		e.Field, e.Realm, e.Why, e.Field)
}

// A RateLimitError is a request not sent because the server answered 429
// and its Retry-After has not passed.
type RateLimitError struct {
	Field  string
	Origin string
	Until  time.Time
}

func (e *RateLimitError) Error() string {
	return fmt.Sprintf("%s (%s) is rate limiting trustproxy (429 Too Many Requests); not asking it again before %s",
		e.Field, e.Origin, e.Until.UTC().Format(time.RFC3339))
}

// RetryAfter is how long until the server may be asked again, at least a second.
func (e *RateLimitError) RetryAfter() time.Duration {
	return max(time.Until(e.Until).Round(time.Second), time.Second)
}

// An AddressError is a connection refused because a redirect (or, from a
// Public client, a certificate) led to a host that resolved to a loopback,
// private, link-local or otherwise non-public address, and the host is not
// listed in redirect_hosts (a Public client's setting).
type AddressError struct {
	Field  string
	Host   string
	Addr   string
	Public bool // from a Public client: Field is the setting that lists allowed hosts
}

func (e *AddressError) Error() string {
	if e.Public {
		return fmt.Sprintf("%s resolves to the non-public address %s: refused; list the host in %s if it is a server of yours", e.Host, e.Addr, e.Field)
	}
	return fmt.Sprintf("%s redirected trustproxy to %s, which resolves to the non-public address %s: refused; list the host in %s.redirect_hosts if it is the registry's own storage",
		e.Field, e.Host, e.Addr, e.Field)
}

// A RedirectError is a redirect refused by policy: too many, or from https
// to http.
type RedirectError struct {
	Field, Why string
}

func (e *RedirectError) Error() string {
	return fmt.Sprintf("%s: redirect refused: %s", e.Field, e.Why)
}
