package proxy

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"

	"github.com/trustproxy/trustproxy/internal/fill"
	"github.com/trustproxy/trustproxy/internal/upstream"
)

// A requestError is a request that cannot name any content: 400 or 404,
// or 405 for a route trustproxy does not serve.
type requestError struct {
	code   errcode.ErrorCode
	detail string
}

func (e *requestError) Error() string { return e.detail }

// A storageError is storage failing under a request that verified: the
// client is told to retry (503) and no more (where and how storage failed
// is the operator's business: the log line ServeHTTP writes says it).
type storageError struct{ err error }

// storageMessage is all a client is told of a storage failure.
const storageMessage = "trustproxy's storage failed; retry later"

func (e *storageError) Error() string { return fmt.Sprintf("storage failed: %v", e.err) }
func (e *storageError) Unwrap() error { return e.err }

// errMetadataNotFound is notary's error for trust data a server does not
// have (METADATA_NOT_FOUND, 404): what a notary client reads as "no trust
// data", and stops on.
var errMetadataNotFound = errcode.Register("trustproxy", errcode.ErrorDescriptor{
	Value:          "METADATA_NOT_FOUND",
	Message:        "trust metadata not found",
	Description:    "The trust metadata file is not served: the repository's trust data did not verify, or holds no such file.",
	HTTPStatusCode: http.StatusNotFound,
})

// A trustDataRefusal is a refusal of a request for trust data: whatever
// its reason, 404 METADATA_NOT_FOUND naming it.
type trustDataRefusal struct{ *Refusal }

// writeError is the one place registry errors are written. A refusal is
// sent as its reason's registry error (reasons), its message naming the
// reason. Request errors are 400/404/405, upstream failures 404, 429 or
// 503, storage failures and shutdown 503. The message always says what
// happened.
func writeError(w http.ResponseWriter, err error) {
	var e errcode.Error
	if r, ok := errors.AsType[*trustDataRefusal](err); ok {
		e = errMetadataNotFound.WithMessage(r.Error())
	} else if r, ok := errors.AsType[*Refusal](err); ok {
		e = registryError(r.Reason).WithMessage(r.Error())
	} else if r, ok := errors.AsType[*requestError](err); ok {
		e = r.code.WithMessage(r.detail)
	} else if u, ok := errors.AsType[*upstream.Error](err); ok {
		e = u.Code.WithMessage(u.Error())
		if u.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(u.RetryAfter.Round(time.Second)/time.Second)))
		}
	} else if _, ok := errors.AsType[*storageError](err); ok {
		e = errcode.ErrorCodeUnavailable.WithMessage(storageMessage)
	} else if errors.Is(err, fill.ErrClosing) {
		e = errcode.ErrorCodeUnavailable.WithMessage(err.Error())
	} else {
		e = errcode.ErrorCodeUnknown.WithMessage(err.Error())
	}
	w.Header().Del("Content-Length")
	w.Header().Del("Docker-Content-Digest")
	_ = errcode.ServeJSON(w, e)
}
