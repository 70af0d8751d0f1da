package trust

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"

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
	// stale is why the last timestamp fetch failed in a way notary recovers
	// from by using its cached timestamp (404, 5xx, network, time budget):
	// the trust data is then not fresh.
	stale error
}

// updateBudget is how many request timeouts one whole update may take.
const updateBudget = 2

func newBoundedRemote(rs storage.RemoteStore, l config.Limits) *boundedRemote {
	return &boundedRemote{RemoteStore: rs, limits: l, deadline: time.Now().Add(updateBudget * l.UpstreamTimeout),
		roots: map[string]bool{}, delegations: map[string]bool{}}
}

// GetSized fetches role name (e.g. timestamp, 3.root, targets/releases.<sha256>).
func (b *boundedRemote) GetSized(name string, size int64) ([]byte, error) {
	role := checksumTail.ReplaceAllString(name, "")
	if time.Now().After(b.deadline) {
		// A network error, so that notary may still use valid cached metadata.
		return nil, b.noteFetch(role, storage.NetworkError{Wrapped: fmt.Errorf("the trust server took longer than %d × limits.upstream_timeout (%s) for one update",
			updateBudget, b.limits.UpstreamTimeout)})
	}
	capBytes, field := roleCap(b.limits, role)
	b.mu.Lock()
	switch {
	case versionedRoot.MatchString(role):
		b.roots[role] = true
		if len(b.roots) > b.limits.MaxRootRotations {
			return nil, b.fail(&LimitError{What: "versioned roots in one update", Limit: int64(b.limits.MaxRootRotations), Field: "limits.max_root_rotations"})
		}
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
	err = bodyNetworkError(err)
	b.noteFetch(role, err)
	switch {
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

// roleCap is the most bytes role's metadata may have, and the config
// field that sets it.
func roleCap(l config.Limits, role string) (int64, string) {
	switch {
	case role == "root", versionedRoot.MatchString(role):
		return l.RootBytes, "limits.root_bytes"
	case role == "timestamp":
		return l.TimestampBytes, "limits.timestamp_bytes"
	case role == "snapshot":
		return l.SnapshotBytes, "limits.snapshot_bytes"
	}
	return l.TargetsBytes, "limits.targets_bytes"
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

// noteFetch records the outcome of a fetch of role and returns err.
func (b *boundedRemote) noteFetch(role string, err error) error {
	if role != "timestamp" {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case err == nil:
		b.stale = nil
	case isNetworkError(err), errors.As(err, new(storage.ErrMetaNotFound)):
		// notary's downloadTimestamp falls back to its cache on exactly these.
		b.stale = err
	}
	return err
}

func (b *boundedRemote) state() (limit *LimitError, stale error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.limitErr, b.stale
}

// bodyNetworkError makes a failure to read a response body (the request
// timeout ending a trickled body, a connection cut mid-body) the
// storage.NetworkError that notary's HTTPStore returns when the same
// happens before the headers: notary then treats a slow or dying server
// alike, falling back to a valid cached timestamp (doc.go: slow counts as
// unreachable), where it would fail the update on the bare error.
func bodyNetworkError(err error) error {
	if err == nil || isNetworkError(err) {
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, new(net.Error)) {
		return storage.NetworkError{Wrapped: err}
	}
	return err
}

func isNetworkError(err error) bool {
	return errors.As(err, new(storage.NetworkError)) || errors.As(err, new(storage.ErrServerUnavailable)) ||
		errors.As(err, new(storage.ErrOffline))
}

// cause returns the error inside notary's NetworkError, which has no Unwrap.
func cause(err error) error {
	if ne, ok := errors.AsType[storage.NetworkError](err); ok && ne.Wrapped != nil {
		return ne.Wrapped
	}
	return err
}

// deadlineTransport bounds each request, body included, by timeout: notary's
// HTTPStore takes no context, so the deadline is set here.
type deadlineTransport struct {
	base    http.RoundTripper
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
