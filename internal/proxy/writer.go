package proxy

import (
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

// Flush implements http.Flusher.
func (t *timedWriter) Flush() {
	t.extend()
	_ = t.rc.Flush()
}

// Unwrap lets http.ResponseController reach the connection.
func (t *timedWriter) Unwrap() http.ResponseWriter { return t.ResponseWriter }
