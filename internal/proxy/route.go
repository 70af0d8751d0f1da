package proxy

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/internal/scan"
)

// kind is what a /v2/ request asks for.
type kind int

const (
	kindManifest kind = iota
	kindBlob
	kindTags
)

func (k kind) String() string {
	switch k {
	case kindBlob:
		return "blob"
	case kindTags:
		return "tags"
	}
	return "manifest"
}

// request is a parsed and validated /v2/<name>/... request.
type request struct {
	kind     kind
	upstream *upstream
	repo     string // repository path at the upstream, e.g. library/alpine
	gun      string // upstream name + "/" + repo, as Docker Content Trust names it
	ref      string // tag or digest (manifests), digest (blobs)
	dgst     digest.Digest
	check    bool        // trustproxy check: decide without fetching the manifest unless the scan gate needs it
	grant    *scan.Grant // a scanner's pull credential, checked to cover this request
	rescan   bool        // trustproxy check --scan: scan the manifest now, before the gate decides
}

// A requestError is a request that cannot name any content: 400 or 404.
type requestError struct {
	code   errorCode
	detail string
}

func (e *requestError) Error() string { return e.detail }

// parse validates r before anything is looked up: the path must be in
// canonical form (no percent-encoding, empty, "." or ".." segments), the name
// must follow the reference grammar, the digest must parse, and the upstream
// (chosen by the ns parameter or a path prefix) must be configured.
func (s *Server) parse(r *http.Request) (*request, error) {
	if strings.Contains(r.URL.RawPath, "%") || strings.Contains(r.URL.Path, "%") {
		return nil, &requestError{codeNameInvalid, "percent-encoded request paths are not accepted"}
	}
	rest, ok := strings.CutPrefix(r.URL.Path, "/v2/")
	if !ok {
		return nil, &requestError{codeNotFound, "not a registry API path"}
	}
	name, k, ref, err := splitPath(rest)
	if err != nil {
		return nil, err
	}
	up, repo, err := s.upstreams.pick(r.URL.Query(), name)
	if err != nil {
		return nil, err
	}
	req := &request{kind: k, upstream: up, repo: repo, gun: up.cfg.Name + "/" + repo, ref: ref}
	if _, err := reference.WithName(req.gun); err != nil {
		return nil, &requestError{codeNameInvalid, fmt.Sprintf("invalid repository name %q: %v", repo, err)}
	}
	switch {
	case k == kindBlob || strings.Contains(ref, ":"):
		d, err := digest.Parse(ref)
		if err != nil || d.Algorithm() != digest.SHA256 {
			return nil, &requestError{codeDigestInvalid, fmt.Sprintf("invalid digest %q: only sha256 digests are served", ref)}
		}
		req.dgst = d
	case k == kindManifest:
		if !tagPattern.MatchString(ref) {
			return nil, &requestError{codeTagInvalid, fmt.Sprintf("invalid tag %q", ref)}
		}
	}
	return req, nil
}

// splitPath splits "<name>/manifests/<ref>", "<name>/blobs/<digest>" and
// "<name>/tags/list".
func splitPath(rest string) (name string, k kind, ref string, err error) {
	segs := strings.Split(rest, "/")
	for _, s := range segs {
		if s == "" || s == "." || s == ".." {
			return "", 0, "", &requestError{codeNameInvalid, "request path has empty, \".\" or \"..\" segments"}
		}
	}
	n := len(segs)
	switch {
	case n >= 3 && segs[n-2] == "manifests":
		return strings.Join(segs[:n-2], "/"), kindManifest, segs[n-1], nil
	case n >= 3 && segs[n-2] == "blobs":
		return strings.Join(segs[:n-2], "/"), kindBlob, segs[n-1], nil
	case n >= 3 && segs[n-2] == "tags" && segs[n-1] == "list":
		return strings.Join(segs[:n-2], "/"), kindTags, "", nil
	}
	return "", 0, "", &requestError{codeNotFound, "unknown registry API route"}
}

// tagPattern is the tag grammar of the distribution spec, anchored.
var tagPattern = regexp.MustCompile(`^` + reference.TagRegexp.String() + `$`)
