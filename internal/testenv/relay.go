package testenv

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Relay is a TCP relay on 127.0.0.1 in front of another address, which sends
// that address's bytes back at a bounded rate: a slow network between a
// client and a real server. What the client sends goes through at once.
type Relay struct {
	l      net.Listener
	target string
	rate   int // bytes per second, from the target

	mu    sync.Mutex
	conns map[net.Conn]bool
	done  bool
	wg    sync.WaitGroup
}

// Throttle starts a Relay to target (host:port) that passes the target's
// answers at rate bytes per second, per connection; t.Cleanup stops it.
func Throttle(t testing.TB, target string, rate int) *Relay {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("relay: %v", err)
	}
	r := &Relay{l: l, target: target, rate: rate, conns: map[net.Conn]bool{}}
	r.wg.Go(r.accept)
	t.Cleanup(r.Stop)
	return r
}

// Addr is the relay's 127.0.0.1:PORT.
func (r *Relay) Addr() string { return r.l.Addr().String() }

// URL is http:// and Addr.
func (r *Relay) URL() string { return "http://" + r.Addr() }

// Stop closes the relay and every connection through it, and waits for its
// goroutines. It is safe to call more than once.
func (r *Relay) Stop() {
	r.mu.Lock()
	r.done = true
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.l.Close()
	r.wg.Wait()
}

// track adds c to the open connections, or closes it and returns false
// once the relay is stopping.
func (r *Relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		c.Close()
		return false
	}
	r.conns[c] = true
	return true
}

func (r *Relay) untrack(c net.Conn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
	c.Close()
}

func (r *Relay) accept() {
	for {
		c, err := r.l.Accept()
		if err != nil {
			return
		}
		if !r.track(c) {
			return
		}
		r.wg.Go(func() { r.relay(c) })
	}
}

// relay joins c to a new connection to the target until either side closes.
func (r *Relay) relay(c net.Conn) {
	defer r.untrack(c)
	up, err := net.Dial("tcp", r.target)
	if err != nil {
		return
	}
	if !r.track(up) {
		return
	}
	defer r.untrack(up)
	var once sync.Once
	closeBoth := func() { once.Do(func() { c.Close(); up.Close() }) }
	var wg sync.WaitGroup
	wg.Go(func() {
		_, _ = io.Copy(up, c)
		closeBoth()
	})
	r.throttled(c, up)
	closeBoth()
	wg.Wait()
}

// throttled copies src to dst, pausing after each read for as long as its
// bytes take at the relay's rate.
func (r *Relay) throttled(dst io.Writer, src io.Reader) {
	buf := make([]byte, max(1, r.rate/20))
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
			time.Sleep(time.Duration(n) * time.Second / time.Duration(r.rate))
		}
		if err != nil {
			return
		}
	}
}
