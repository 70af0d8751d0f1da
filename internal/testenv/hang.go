package testenv

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Front is a TCP front on 127.0.0.1 that forwards to a server until Hang:
// from then on it accepts connections and holds them, and nothing more
// reaches either side, as from a server that hangs (or a network that
// drops packets). Close makes its address refuse connections, as a
// stopped server's does.
type Front struct {
	l      net.Listener
	target string
	hang   atomic.Bool

	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

// NewFront starts a Front to target (host:port); t.Cleanup closes it.
func NewFront(t testing.TB, target string) *Front {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("front: %v", err)
	}
	f := &Front{l: l, target: target}
	f.wg.Go(f.accept)
	t.Cleanup(f.Close)
	return f
}

// Addr is the front's 127.0.0.1:PORT.
func (f *Front) Addr() string { return f.l.Addr().String() }

// Hang stops every byte in either direction, on open connections and new
// ones alike.
func (f *Front) Hang() { f.hang.Store(true) }

// Close refuses new connections and closes the open ones.
func (f *Front) Close() {
	f.l.Close()
	f.mu.Lock()
	for _, c := range f.conns {
		c.Close()
	}
	f.conns = nil
	f.mu.Unlock()
	f.wg.Wait()
}

func (f *Front) keep(c net.Conn) {
	f.mu.Lock()
	f.conns = append(f.conns, c)
	f.mu.Unlock()
}

func (f *Front) accept() {
	for {
		c, err := f.l.Accept()
		if err != nil {
			return
		}
		f.keep(c)
		if f.hang.Load() {
			continue
		}
		up, err := net.Dial("tcp", f.target)
		if err != nil {
			c.Close()
			continue
		}
		f.keep(up)
		f.wg.Go(func() { f.pipe(up, c) })
		f.wg.Go(func() { f.pipe(c, up) })
	}
}

// pipe copies src to dst until either closes; once the front hangs, what
// it reads is dropped.
func (f *Front) pipe(dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !f.hang.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
