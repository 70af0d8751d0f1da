package proxy

import (
	"io"
	"math"
	"net/http"
	"time"
)

// timedWriter gives each write to the client timeout to complete, so a
// client that stops reading is disconnected instead of holding a
// connection and a goroutine: the write fails, the handler returns and
// net/http closes the connection. The deadline is set before every write,
// so a client that keeps reading is never cut off, however long the
// response.
type timedWriter struct {
	http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
}

func newTimedWriter(w http.ResponseWriter, timeout time.Duration) *timedWriter {
	return &timedWriter{ResponseWriter: w, rc: http.NewResponseController(w), timeout: timeout}
}

func (t *timedWriter) extend() { _ = t.rc.SetWriteDeadline(time.Now().Add(t.timeout)) }

func (t *timedWriter) WriteHeader(code int) {
	t.extend()
	t.ResponseWriter.WriteHeader(code)
}

func (t *timedWriter) Write(b []byte) (int, error) {
	t.extend()
	return t.ResponseWriter.Write(b)
}

// ReadFrom sends src to the client in pieces of at most copyPiece bytes,
// each given timeout. A file (or an io.LimitedReader of one) reaches a plain
// TCP connection through net/http's sendfile, without a copy.
func (t *timedWriter) ReadFrom(src io.Reader) (int64, error) {
	rf, ok := t.ResponseWriter.(io.ReaderFrom)
	if !ok {
		return io.Copy(writerOnly{t}, src)
	}
	r, left := src, int64(math.MaxInt64)
	lr, limited := src.(*io.LimitedReader)
	if limited {
		r, left = lr.R, lr.N
	}
	var n int64
	for left > 0 {
		want := min(left, copyPiece)
		t.extend()
		k, err := rf.ReadFrom(&io.LimitedReader{R: r, N: want})
		n, left = n+k, left-k
		if limited {
			lr.N = left
		}
		if err != nil || k < want {
			return n, err
		}
	}
	return n, nil
}

// copyPiece is the most sent to a client under one write deadline.
const copyPiece = 4 << 20

// writerOnly hides a writer's ReadFrom from io.Copy.
type writerOnly struct{ io.Writer }

// Flush implements http.Flusher.
func (t *timedWriter) Flush() {
	t.extend()
	_ = t.rc.Flush()
}

// Unwrap lets http.ResponseController reach the connection.
func (t *timedWriter) Unwrap() http.ResponseWriter { return t.ResponseWriter }
