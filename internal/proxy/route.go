package proxy

import (
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/internal/gun"
	"github.com/trustproxy/trustproxy/internal/scan"
	"github.com/trustproxy/trustproxy/internal/upstream"
)

// kind is what a /v2/ request asks for.
type kind int

const (
	kindManifest kind = iota
	kindBlob
	kindTags
	kindTrustData // notary's read API: /v2/<gun>/_trust/tuf/<file>
	kindWrite     // any request that is not a GET or HEAD
	kindReferrers // the referrers API: /v2/<name>/referrers/<digest>
)

func (k kind) String() string {
	switch k {
	case kindBlob:
		return "blob"
	case kindTags:
		return "tags"
	case kindTrustData:
		return "trust_data"
	case kindWrite:
		return "write"
	case kindReferrers:
		return "referrers"
	}
	return "manifest"
}

// request is a parsed and validated /v2/<name>/... request.
type request struct {
	kind kind
	pol  *policy            // the configuration the request is judged by, taken once when it was routed
	from *upstream.Registry // the upstream the name routes to
	name gun.Name
	ref  string // tag or digest (manifests), digest (blobs), file (trust data); the method of a write
	dgst digest.Digest
	// authorization is the request's Authorization header: a scanner's
	// pull credential, when it is one (decide's first step checks it).
	authorization string
	grant         *scan.Grant // the credential, once it is checked to cover this request
	artifactType  string      // the referrers API's artifactType filter; "" for none
}

// parse validates a GET or HEAD r before anything is looked up: the path
// must be in canonical form (no percent-encoding, empty, "." or ".."
// segments) and name a read route, the name must follow the reference
// grammar once routed to a configured upstream (by the ns parameter or a
// path prefix), and a digest must parse.
func (s *Server) parse(r *http.Request) (*request, error) {
	if strings.Contains(r.URL.RawPath, "%") || strings.Contains(r.URL.Path, "%") {
		return nil, &requestError{errcode.ErrorCodeNameInvalid, "percent-encoded request paths are not accepted"}
	}
	req, err := s.route(r)
	if err != nil {
		return nil, err
	}
	switch {
	case req.kind == kindBlob || req.kind == kindReferrers || strings.Contains(req.ref, ":"):
		d, err := digest.Parse(req.ref)
		if err != nil || d.Algorithm() != digest.SHA256 {
			return nil, &requestError{errcode.ErrorCodeDigestInvalid, fmt.Sprintf("invalid digest %q: only sha256 digests are served", req.ref)}
		}
		req.dgst = d
	case req.kind == kindManifest:
		if !tagPattern.MatchString(req.ref) {
			return nil, &requestError{errcode.ErrorCodeTagInvalid, fmt.Sprintf("invalid tag %q", req.ref)}
		}
	}
	if req.kind == kindReferrers {
		req.artifactType = r.URL.Query().Get("artifactType")
	}
	req.authorization = r.Header.Get("Authorization")
	return req, nil
}

// writeRequest is the write r as decide judges it: about the repository
// its path names, when it names one.
func (s *Server) writeRequest(r *http.Request) *request {
	req, err := s.route(r)
	if err != nil {
		req = &request{pol: s.policy.Load()}
	}
	req.kind, req.ref, req.dgst = kindWrite, r.Method, ""
	return req
}

// route splits r's path, the one path parser of every route, and routes
// its name to an upstream: "<name>/manifests/<ref>", "<name>/blobs/<digest>",
// "<name>/tags/list", "<name>/referrers/<digest>" and, for a write, "<name>/blobs/uploads/[<id>]".
func (s *Server) route(r *http.Request) (*request, error) {
	rest, ok := strings.CutPrefix(r.URL.Path, "/v2/")
	if !ok {
		return nil, &requestError{errcode.ErrorCodeNameUnknown, "not a registry API path"}
	}
	if name, file, ok := strings.Cut(rest, "/_trust/tuf/"); ok {
		return s.routeTrustData(r, name, file)
	}
	segs := strings.Split(rest, "/")
	n := len(segs)
	read := r.Method == http.MethodGet || r.Method == http.MethodHead
	upload := !read && n >= 4 && segs[n-3] == "blobs" && segs[n-2] == "uploads"
	checked := segs
	if upload {
		checked = segs[:n-1] // the upload's id, or "" for a new upload
	}
	for _, s := range checked {
		if s == "" || s == "." || s == ".." {
			return nil, &requestError{errcode.ErrorCodeNameInvalid, "request path has empty, \".\" or \"..\" segments"}
		}
	}
	var k kind
	var name, ref string
	switch {
	case upload:
		name, k = strings.Join(segs[:n-3], "/"), kindWrite
	case n >= 3 && segs[n-2] == "manifests":
		name, k, ref = strings.Join(segs[:n-2], "/"), kindManifest, segs[n-1]
	case n >= 3 && segs[n-2] == "blobs":
		name, k, ref = strings.Join(segs[:n-2], "/"), kindBlob, segs[n-1]
	case read && n >= 3 && segs[n-2] == "referrers":
		name, k, ref = strings.Join(segs[:n-2], "/"), kindReferrers, segs[n-1]
	case n >= 3 && segs[n-2] == "tags" && segs[n-1] == "list":
		name, k = strings.Join(segs[:n-2], "/"), kindTags
	default:
		return nil, &requestError{errcode.ErrorCodeNameUnknown, "unknown registry API route"}
	}
	pol := s.policy.Load()
	from, repo, err := pol.upstreams.Route(r.URL.Query(), name)
	if nc, ok := errors.AsType[*upstream.NotConfiguredError](err); ok {
		return nil, &requestError{errcode.ErrorCodeNameUnknown, nc.Error()}
	}
	if err != nil {
		return nil, &requestError{errcode.ErrorCodeNameInvalid, err.Error()}
	}
	return &request{kind: k, pol: pol, from: from, name: repo, ref: ref}, nil
}

// routeTrustData routes a request for the trust metadata file of
// repository name (notary's read API). Its name is checked as any other's;
// the file name is trust's to check.
func (s *Server) routeTrustData(r *http.Request, name, file string) (*request, error) {
	for _, seg := range strings.Split(name+"/"+file, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return nil, &requestError{errcode.ErrorCodeNameInvalid, "request path has empty, \".\" or \"..\" segments"}
		}
	}
	pol := s.policy.Load()
	from, repo, err := pol.upstreams.Route(r.URL.Query(), name)
	if nc, ok := errors.AsType[*upstream.NotConfiguredError](err); ok {
		return nil, &requestError{errcode.ErrorCodeNameUnknown, nc.Error()}
	}
	if err != nil {
		return nil, &requestError{errcode.ErrorCodeNameInvalid, err.Error()}
	}
	return &request{kind: kindTrustData, pol: pol, from: from, name: repo, ref: file}, nil
}

// tagPattern is the tag grammar of the distribution spec, anchored.
var tagPattern = regexp.MustCompile(`^` + reference.TagRegexp.String() + `$`)
