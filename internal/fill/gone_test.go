package fill

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/trustproxy/trustproxy/internal/cache"
)

// TestHolderGone: a fill lock's holder is taken for gone, its lock taken
// over and its upload removed, only when its host refused the connection,
// or when it does not answer and its lock missed a refresh. A dial that
// timed out or found no route (a partition, a flood at the peer port) to
// a holder that keeps its lock fresh leaves its fill alone.
func TestHolderGone(t *testing.T) {
	now := time.Now()
	fresh := &cache.LeaseEntry{Until: now.Add(fillLockTTL - time.Second)}   // refreshed a second ago
	stale := &cache.LeaseEntry{Until: now.Add(fillLockTTL/3 + time.Second)} // missed a refresh
	// what the client's Do returns, and what stream makes of it
	dialErr := func(err error) error {
		return &url.Error{Op: "Get", URL: "https://10.0.0.7:5001/internal/fills", Err: &net.OpError{Op: "dial", Net: "tcp", Err: err}}
	}
	rawRefused, rawNoRoute, rawTimeout := dialErr(os.NewSyscallError("connect", syscall.ECONNREFUSED)), dialErr(os.NewSyscallError("connect", syscall.EHOSTUNREACH)), dialErr(timeoutErr{})
	if !down(rawRefused) || down(rawNoRoute) || down(rawTimeout) {
		t.Fatal("down: want only a refused dial")
	}
	refused := fmt.Errorf("%w: %v", errPeerDown, rawRefused)
	noRoute := fmt.Errorf("%w: %v", errPeerUnreachable, rawNoRoute)
	timeout := fmt.Errorf("%w: %v", errPeerUnreachable, rawTimeout)
	for _, tc := range []struct {
		name   string
		err    error
		holder *cache.LeaseEntry
		gone   bool
	}{
		{"refused, fresh lock", refused, fresh, true},
		{"timed out, fresh lock", timeout, fresh, false},
		{"no route, fresh lock", noRoute, fresh, false},
		{"timed out, stale lock", timeout, stale, true},
		{"no fill yet, stale lock", errNoPeerFill, stale, false},
	} {
		if got := holderGone(tc.err, tc.holder, now); got != tc.gone {
			t.Errorf("%s: gone %v, want %v", tc.name, got, tc.gone)
		}
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }
