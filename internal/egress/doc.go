// Package egress is every connection trustproxy opens to a server it does not
// run: upstream registries, their token services, Notary servers, and the
// revocation servers (CRL distribution points, OCSP responders) that
// certificates name. It decides what such a server can make trustproxy do.
//
// A Client serves one configured endpoint (a registry or a Notary server),
// whose Endpoint Configured makes from its config.Endpoint:
//
//   - Credentials go only to the endpoint's own origin and, through the
//     registry token protocol, to the token realms its configuration lists
//     (token_realms; the endpoint's own origin always counts). A challenge
//     naming any other realm is refused with a *RealmError before a
//     connection is made to that realm: a hostile server cannot collect the
//     configured username and password, or make trustproxy fetch from an
//     address of its choosing.
//   - Credentials come from the endpoint's one configured source (password,
//     password_file or docker_config), resolved when they are sent, so a
//     rotated password file or credential helper answer counts without a
//     restart; they are never logged.
//   - Redirects (followed by Do only) are capped, never go from https to
//     http, and never carry credentials: the Authorization header is added
//     per request, and only for the endpoint's own origin. A redirect to any
//     other host may only reach public addresses, checked on the address
//     actually dialled (after DNS resolution), unless the host is listed in
//     redirect_hosts (*AddressError otherwise).
//   - A 429 answer is remembered until its Retry-After (capped at
//     MaxRetryAfter): meanwhile requests to that origin fail at once with a
//     *RateLimitError instead of reaching it.
//   - Dial, TLS handshake and response headers are bounded by the endpoint's
//     timeout; bodies are bounded by the callers, who know their sizes.
//
// A Public client serves no endpoint: the hosts it reaches are named by data
// (a Notation certificate's revocation servers). It sends no credentials,
// follows redirects as Do does, and reaches public addresses only, except
// the hosts its setting lists (trust.notation.revocation_hosts).
//
// It knows nothing of manifests, blobs or TUF: internal/proxy and
// internal/trust use it.
package egress
