package proxy

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// errorCode names the registry error a requestError or upstreamError becomes.
type errorCode int

const (
	codeNameInvalid errorCode = iota
	codeDigestInvalid
	codeTagInvalid
	codeNotFound
	codeNameUnknown
	codeManifestUnknown
	codeBlobUnknown
	codeUnavailable
	codeDenied
	codeUnsupported
	codePaginationInvalid
	codeTooManyRequests
)

func (c errorCode) registry() errcode.ErrorCode {
	switch c {
	case codeNameInvalid:
		return errcode.ErrorCodeNameInvalid
	case codeDigestInvalid:
		return errcode.ErrorCodeDigestInvalid
	case codeTagInvalid:
		return errcode.ErrorCodeTagInvalid
	case codeNameUnknown:
		return errcode.ErrorCodeNameUnknown
	case codeManifestUnknown:
		return errcode.ErrorCodeManifestUnknown
	case codeBlobUnknown:
		return errcode.ErrorCodeBlobUnknown
	case codeUnavailable:
		return errcode.ErrorCodeUnavailable
	case codeDenied:
		return errcode.ErrorCodeDenied
	case codeUnsupported:
		return errcode.ErrorCodeUnsupported
	case codePaginationInvalid:
		return errcode.ErrorCodePaginationNumberInvalid
	case codeTooManyRequests:
		return errcode.ErrorCodeTooManyRequests
	}
	return errcode.ErrorCodeUnknown
}

// An upstreamError is a failure to get content from an upstream registry.
type upstreamError struct {
	code       errorCode // codeManifestUnknown, codeBlobUnknown, codeUnavailable or codeTooManyRequests
	retryAfter time.Duration
	err        error
}

func (e *upstreamError) Error() string { return e.err.Error() }
func (e *upstreamError) Unwrap() error { return e.err }

// writeError is the one place registry errors are written. A refusal names
// its reason in the message; it is 404 MANIFEST_UNKNOWN (not_signed) or 404
// BLOB_UNKNOWN (not_referenced) when the repository's trust view verified
// and simply does not hold the reference, as the distribution spec answers
// for content a registry does not have, and 403 DENIED when the reference,
// its repository or its content fails a policy (docs/ARCHITECTURE.md,
// "Refusals"). Request errors are 400/404, upstream failures 404, 429 or
// 503. The message always says what happened.
func writeError(w http.ResponseWriter, err error) {
	var e errcode.Error
	if r, ok := errors.AsType[*trust.RefusalError](err); ok {
		switch r.Reason {
		case trust.NotSigned:
			e = errcode.ErrorCodeManifestUnknown.WithMessage(r.Error())
		case ReasonNotReferenced:
			e = errcode.ErrorCodeBlobUnknown.WithMessage(r.Error())
		default:
			e = errcode.ErrorCodeDenied.WithMessage(r.Error())
		}
	} else if r, ok := errors.AsType[*requestError](err); ok {
		e = r.code.registry().WithMessage(r.detail)
		if r.code == codeNotFound {
			e = errcode.ErrorCodeNameUnknown.WithMessage(r.detail)
		}
	} else if u, ok := errors.AsType[*upstreamError](err); ok {
		e = u.code.registry().WithMessage(u.Error())
		if u.retryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(u.retryAfter.Round(time.Second)/time.Second)))
		}
	} else {
		e = errcode.ErrorCodeUnknown.WithMessage(err.Error())
	}
	w.Header().Del("Content-Length")
	w.Header().Del("Docker-Content-Digest")
	_ = errcode.ServeJSON(w, e)
}
