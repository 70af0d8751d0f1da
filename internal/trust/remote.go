package trust

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/theupdateframework/notary/storage"
	"github.com/trustproxy/trustproxy/config"
)

// LimitError says trust metadata from the server exceeded a configured bound.
type LimitError struct {
	What  string // e.g. "timestamp", "versioned roots"
	Limit int64
	Field string // the config field that sets the bound
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("%s exceeds the limit of %d (%s)", e.What, e.Limit, e.Field)
}

var (
	versionedRoot = regexp.MustCompile(`^[0-9]+\.root$`)
	checksumTail  = regexp.MustCompile(`\.[0-9a-f]{64}$`)
)

// boundedRemote is the notary RemoteStore of one update. It caps the bytes
// of each role, the number of versioned roots and of delegation roles
// fetched, and records the errors notary would otherwise swallow.
type boundedRemote struct {
	storage.RemoteStore
	limits   config.Limits
	deadline time.Time // of the whole update; each request is bounded by the transport

	mu          sync.Mutex
	roots       map[string]bool
	delegations map[string]bool
	limitErr    *LimitError
	unreachable error // a network error notary may have recovered from with its cache
}

// updateBudget is how many request timeouts one whole update may take.
const updateBudget = 2

func newBoundedRemote(rs storage.RemoteStore, l config.Limits) *boundedRemote {
	return &boundedRemote{RemoteStore: rs, limits: l, deadline: time.Now().Add(updateBudget * l.UpstreamTimeout),
		roots: map[string]bool{}, delegations: map[string]bool{}}
}

// GetSized fetches role name (e.g. timestamp, 3.root, targets/releases.<sha256>).
func (b *boundedRemote) GetSized(name string, size int64) ([]byte, error) {
	if time.Now().After(b.deadline) {
		// A network error, so that notary may still use valid cached metadata.
		err := storage.NetworkError{Wrapped: fmt.Errorf("the trust server took longer than %d × limits.upstream_timeout (%s) for one update",
			updateBudget, b.limits.UpstreamTimeout)}
		b.mu.Lock()
		b.unreachable = err
		b.mu.Unlock()
		return nil, err
	}
	role := checksumTail.ReplaceAllString(name, "")
	capBytes, field := b.limits.TargetsBytes, "limits.targets_bytes"
	b.mu.Lock()
	switch {
	case role == "root":
		capBytes, field = b.limits.RootBytes, "limits.root_bytes"
	case versionedRoot.MatchString(role):
		capBytes, field = b.limits.RootBytes, "limits.root_bytes"
		b.roots[role] = true
		if len(b.roots) > b.limits.MaxRootRotations {
			return nil, b.fail(&LimitError{What: "versioned roots in one update", Limit: int64(b.limits.MaxRootRotations), Field: "limits.max_root_rotations"})
		}
	case role == "timestamp":
		capBytes, field = b.limits.TimestampBytes, "limits.timestamp_bytes"
	case role == "snapshot":
		capBytes, field = b.limits.SnapshotBytes, "limits.snapshot_bytes"
	case strings.HasPrefix(role, "targets/"):
		b.delegations[role] = true
		if len(b.delegations) > b.limits.MaxDelegations {
			return nil, b.fail(&LimitError{What: "delegation roles", Limit: int64(b.limits.MaxDelegations), Field: "limits.max_delegations"})
		}
	}
	b.mu.Unlock()

	ask := capBytes + 1 // one byte more than allowed tells "too large" from "exactly at the cap"
	if size > 0 && size < capBytes {
		ask = size // notary knows the exact length from snapshot or timestamp
	}
	raw, err := b.RemoteStore.GetSized(name, ask)
	switch {
	case isNetworkError(err):
		b.mu.Lock()
		b.unreachable = err
		b.mu.Unlock()
		return nil, err
	case errors.As(err, new(storage.ErrMaliciousServer)) && ask > capBytes:
		// Content-Length beyond what we asked for.
		return nil, b.lock(&LimitError{What: role + " metadata size", Limit: capBytes, Field: field})
	case err != nil:
		return nil, err
	case int64(len(raw)) > capBytes:
		return nil, b.lock(&LimitError{What: role + " metadata size", Limit: capBytes, Field: field})
	}
	return raw, nil
}

// fail records e; b.mu is held and released.
func (b *boundedRemote) fail(e *LimitError) error {
	if b.limitErr == nil {
		b.limitErr = e
	}
	b.mu.Unlock()
	return e
}

func (b *boundedRemote) lock(e *LimitError) error {
	b.mu.Lock()
	return b.fail(e)
}

func (b *boundedRemote) state() (limit *LimitError, unreachable error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.limitErr, b.unreachable
}

func isNetworkError(err error) bool {
	return errors.As(err, new(storage.NetworkError)) || errors.As(err, new(storage.ErrServerUnavailable)) ||
		errors.As(err, new(storage.ErrOffline))
}

// newTransport returns the base transport of an upstream's Notary server:
// dial, TLS handshake and response header timeouts, the server's CA if
// configured, and an overall deadline per request.
func newTransport(n config.Notary, timeout time.Duration) (http.RoundTripper, error) {
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if n.CAFile != "" {
		pem, err := os.ReadFile(n.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read notary ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("notary ca_file %s holds no PEM certificate", n.CAFile)
		}
		tlsConf.RootCAs = pool
	}
	step := min(10*time.Second, timeout)
	t := &http.Transport{
		Proxy:                  http.ProxyFromEnvironment,
		DialContext:            (&net.Dialer{Timeout: step, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:        tlsConf,
		TLSHandshakeTimeout:    step,
		ResponseHeaderTimeout:  timeout,
		MaxResponseHeaderBytes: 64 << 10,
		IdleConnTimeout:        90 * time.Second,
		ForceAttemptHTTP2:      true,
	}
	return &deadlineTransport{base: t, timeout: timeout}, nil
}

// deadlineTransport bounds each request, body included, by timeout: notary's
// HTTPStore takes no context, so the deadline is set here.
type deadlineTransport struct {
	base    *http.Transport
	timeout time.Duration
}

func (d *deadlineTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithTimeout(r.Context(), d.timeout)
	resp, err := d.base.RoundTrip(r.WithContext(ctx))
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelBody) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// authTransport returns a transport that answers the Notary server's auth
// challenge (basic, or a bearer token with scope repository:<gun>:pull) as
// a registry's is answered. When the server cannot be reached it returns a
// transport that fails every request with that error, so that notary sees a
// network error and may fall back to its cached metadata.
func authTransport(ctx context.Context, base http.RoundTripper, n config.Notary, gun string) http.RoundTripper {
	u, err := url.Parse(n.URL)
	if err != nil {
		return failing{err}
	}
	var opts []name.Option
	if u.Scheme == "http" {
		opts = append(opts, name.Insecure)
	}
	reg, err := name.NewRegistry(u.Host, opts...)
	if err != nil {
		return failing{err}
	}
	auth := authn.Anonymous
	if n.Username != "" || n.Password != "" {
		auth = authn.FromConfig(authn.AuthConfig{Username: n.Username, Password: n.Password})
	}
	rt, err := transport.NewWithContext(ctx, reg, auth, base, []string{"repository:" + gun + ":pull"})
	if err != nil {
		return failing{err}
	}
	return rt
}

type failing struct{ err error }

func (f failing) RoundTrip(*http.Request) (*http.Response, error) { return nil, f.err }
