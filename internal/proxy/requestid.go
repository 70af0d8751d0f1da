package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
)

// RequestIDHeader is the response header that carries a request's ID, the
// request_id of its decision line: what an operator asks a user for.
const RequestIDHeader = "X-Request-Id"

type requestIDKey struct{}

// withRequestID gives r an ID of trustproxy's own making, sent back in
// RequestIDHeader. An ID the client sent is not used: a client must not be
// able to make its requests' lines look like another's.
func withRequestID(w http.ResponseWriter, r *http.Request) *http.Request {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	w.Header().Set(RequestIDHeader, id)
	return r.WithContext(context.WithValue(r.Context(), requestIDKey{}, id))
}

// RequestID is the ID of the request ctx belongs to; "" outside one
// (trustproxy check).
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}
