package testenv

import (
	"net"
	"sync"
	"testing"
)

// Capture is a raw TCP listener on 127.0.0.1 that answers nothing and records every
// connection made to it and every byte sent: the place a hostile challenge names, to
// show that nothing reached it.
type Capture struct {
	l net.Listener

	mu    sync.Mutex
	conns int
	bytes []byte
}

// NewCapture starts a Capture; t.Cleanup stops it.
func NewCapture(t testing.TB) *Capture {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &Capture{l: l}
	go c.accept()
	t.Cleanup(func() { l.Close() })
	return c
}

func (c *Capture) accept() {
	for {
		conn, err := c.l.Accept()
		if err != nil {
			return
		}
		c.mu.Lock()
		c.conns++
		c.mu.Unlock()
		go func() {
			defer conn.Close()
			buf := make([]byte, 4096)
			for {
				n, err := conn.Read(buf)
				c.mu.Lock()
				c.bytes = append(c.bytes, buf[:n]...)
				c.mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
}

// Addr is the listener's 127.0.0.1:PORT.
func (c *Capture) Addr() string { return c.l.Addr().String() }

// Seen returns the connections accepted so far and the bytes received on them.
func (c *Capture) Seen() (conns int, received []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conns, append([]byte(nil), c.bytes...)
}
