package proxy

import (
	"errors"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/distribution/distribution/v3/registry/api/errcode"

	"github.com/trustproxy/trustproxy/internal/fill"
	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trust"
	"github.com/trustproxy/trustproxy/internal/upstream"
)

// TestWriteErrorGolden pins what clients read for each kind of refusal and
// failure: status, code and message, in the registry error format.
func TestWriteErrorGolden(t *testing.T) {
	errs := []struct {
		name string
		err  error
	}{
		{"not signed", &Refusal{GUN: "docker.io/library/app", Ref: "v2", Reason: Reason(trust.NotSigned),
			Detail: "no signed target of that name in the roles the rule allows; sign it (docker trust sign / notary addhash) or pull a signed tag"}},
		{"not referenced", &Refusal{GUN: "docker.io/library/app", Ref: "sha256:" + strings.Repeat("c", 64), Reason: ReasonNotReferenced,
			Detail: "no verified manifest of this repository refers to this blob; pull a signed tag"}},
		{"untrusted signer", &Refusal{GUN: "docker.io/library/app", Ref: "v1", Reason: Reason(trust.UntrustedSigner),
			Detail: "targets/releases is signed by key(s) abc, but the rule for docker.io/** trusts only alice"}},
		{"digest refusal with cause", &Refusal{GUN: "docker.io/library/app", Ref: "sha256:" + strings.Repeat("a", 64),
			Reason: ReasonDigestMismatch, Detail: "the upstream's blob hashes to sha256:bb… (10 bytes); nothing was cached"}},
		{"whole repository", &Refusal{GUN: "docker.io/library/app", Reason: Reason(trust.NoTrustData),
			Detail: "the trust server has no trust data for this repository", Err: errors.New("404")}},
		{"read only", &Refusal{GUN: "docker.io/library/app", Reason: ReasonReadOnly,
			Detail: "trustproxy is a read-only mirror; push to the upstream registry"}},
		{"bad name", &requestError{errcode.ErrorCodeNameInvalid, `invalid repository name "App"`}},
		{"bad digest", &requestError{errcode.ErrorCodeDigestInvalid, `invalid digest "sha256:../x": only sha256 digests are served`}},
		{"unknown route", &requestError{errcode.ErrorCodeNameUnknown, "unknown registry API route"}},
		{"unknown upstream", &requestError{errcode.ErrorCodeNameUnknown, `upstream "127.0.0.1:6379" (ns parameter) is not configured`}},
		{"catalog", &requestError{errcode.ErrorCodeUnsupported, "the catalog is not served: trustproxy lists no repositories"}},
		{"upstream down", upstream.Unavailable(errors.New("upstream docker.io unreachable: connection refused"))},
		{"upstream lacks blob", &upstream.Error{Code: errcode.ErrorCodeBlobUnknown, Err: errors.New("upstream docker.io answered 404 Not Found")}},
		{"storage", &storageError{errors.New("store manifest sha256:aa…: mkdir /var/lib/trustproxy/docker/registry/v2/blobs/sha256/aa: no space left on device")}},
		{"shutting down", fill.ErrClosing},
		{"other", errors.New("something unforeseen")},
	}
	var got strings.Builder
	for _, e := range errs {
		rec := httptest.NewRecorder()
		writeError(rec, e.err)
		fmt.Fprintf(&got, "%s: %d %s", e.name, rec.Code, rec.Body.String())
	}
	testenv.Golden(t, filepath.Join("testdata", "errors.golden"), []byte(got.String()))
}
