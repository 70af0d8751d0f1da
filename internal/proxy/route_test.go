package proxy

import (
	"bufio"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/google/go-cmp/cmp"
	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/upstream"
)

// parseServer is a Server with only what parse reads: docker.io (the
// default) and ghcr.io.
func parseServer(t testing.TB) *Server {
	t.Helper()
	ups, err := upstream.NewSet(&config.Config{
		Upstreams: []config.Upstream{
			{Name: "docker.io", Endpoint: config.Endpoint{URL: "https://registry-1.docker.io"}},
			{Name: "ghcr.io", Endpoint: config.Endpoint{URL: "https://ghcr.io"}},
		},
		Limits: config.Limits{UpstreamTimeout: 5 * time.Second},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{}
	s.policy.Store(&policy{cfg: &config.Config{}, upstreams: ups})
	return s
}

// parsed is what a test compares of a *request.
type parsed struct {
	Kind     kind
	Upstream string
	Repo     string
	GUN      string
	Ref      string
	Digest   digest.Digest
}

// outcome is parse's answer: a request, or the registry code of its error.
type outcome struct {
	Req *parsed
	Err string
}

func parseOutcome(req *request, err error) outcome {
	if err != nil {
		if e, ok := errors.AsType[*requestError](err); ok {
			return outcome{Err: codeName(e.code)}
		}
		return outcome{Err: "not a *requestError: " + err.Error()}
	}
	return outcome{Req: &parsed{Kind: req.kind, Upstream: req.from.Name(), Repo: req.name.Path(), GUN: req.name.String(), Ref: req.ref, Digest: req.dgst}}
}

// codeName names c in test diffs.
func codeName(c errcode.ErrorCode) string { return c.String() }

const (
	alpineDigest = "sha256:4bcff63911fcb4448bd4fdacec207030997caf25e9bea4045fa6c8c44de311d1"
	sha512Digest = "sha512:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" +
		"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
)

// parseTest is one request. target is the request-target as a client sends
// it; when url is set it is the URL net/http reads from target (checked by
// TestParseURLsAreWhatNetHTTPReads) and parse is given a bare
// &http.Request{URL: url}, as a handler behind ServeMux would see it.
type parseTest struct {
	name   string
	target string
	url    *url.URL
	want   outcome
}

func ok(k kind, upstream, repo, ref string, dgst digest.Digest) outcome {
	return outcome{Req: &parsed{Kind: k, Upstream: upstream, Repo: repo, GUN: upstream + "/" + repo, Ref: ref, Digest: dgst}}
}

func refused(c errcode.ErrorCode) outcome { return outcome{Err: codeName(c)} }

var (
	longHex = strings.Repeat("a", 1<<20)
	repo255 = "org/" + strings.Repeat("a", 255-len("org/")) // reference.WithName bounds the path, not the domain
	repo256 = repo255 + "a"
	tag128  = strings.Repeat("t", 128)
	tag129  = tag128 + "t"
)

var parseTests = []parseTest{
	{name: "docker hub two-segment name", target: "/v2/library/alpine/manifests/3",
		want: ok(kindManifest, "docker.io", "library/alpine", "3", "")},
	{name: "docker hub official image gets library/", target: "/v2/alpine/manifests/3",
		want: ok(kindManifest, "docker.io", "library/alpine", "3", "")},
	{name: "ns docker.io", target: "/v2/library/alpine/manifests/3?ns=docker.io",
		want: ok(kindManifest, "docker.io", "library/alpine", "3", "")},
	{name: "ns docker.io official image", target: "/v2/alpine/manifests/3?ns=docker.io",
		want: ok(kindManifest, "docker.io", "library/alpine", "3", "")},
	{name: "ns ghcr.io", target: "/v2/org/img/manifests/1?ns=ghcr.io",
		want: ok(kindManifest, "ghcr.io", "org/img", "1", "")},
	{name: "ns ghcr.io one segment gets no library/", target: "/v2/img/manifests/1?ns=ghcr.io",
		want: ok(kindManifest, "ghcr.io", "img", "1", "")},
	{name: "ns wins over a path prefix", target: "/v2/ghcr.io/org/img/manifests/1?ns=docker.io",
		want: ok(kindManifest, "docker.io", "ghcr.io/org/img", "1", "")},
	{name: "ns not configured", target: "/v2/library/alpine/manifests/3?ns=127.0.0.1:6379",
		want: refused(errcode.ErrorCodeNameUnknown)},
	{name: "ns url not configured", target: "/v2/library/alpine/manifests/3?ns=" + url.QueryEscape("http://127.0.0.1:6379/"),
		want: refused(errcode.ErrorCodeNameUnknown)},
	{name: "empty ns is the default", target: "/v2/library/alpine/manifests/3?ns=",
		want: ok(kindManifest, "docker.io", "library/alpine", "3", "")},
	{name: "path prefix ghcr.io", target: "/v2/ghcr.io/org/img/manifests/1",
		want: ok(kindManifest, "ghcr.io", "org/img", "1", "")},
	{name: "path prefix docker.io official image", target: "/v2/docker.io/alpine/manifests/3",
		want: ok(kindManifest, "docker.io", "library/alpine", "3", "")},
	{name: "unconfigured host prefix is a docker hub path", target: "/v2/quay.io/org/img/manifests/1",
		want: ok(kindManifest, "docker.io", "quay.io/org/img", "1", "")},
	{name: "manifest by digest", target: "/v2/library/alpine/manifests/" + alpineDigest,
		want: ok(kindManifest, "docker.io", "library/alpine", alpineDigest, alpineDigest)},
	{name: "referrers of a digest", target: "/v2/library/alpine/referrers/" + alpineDigest + "?artifactType=application%2Fspdx%2Bjson",
		want: ok(kindReferrers, "docker.io", "library/alpine", alpineDigest, alpineDigest)},
	{name: "referrers of a tag", target: "/v2/library/alpine/referrers/latest",
		want: refused(errcode.ErrorCodeDigestInvalid)},
	{name: "manifest by sha512 digest", target: "/v2/library/alpine/manifests/" + sha512Digest,
		want: refused(errcode.ErrorCodeDigestInvalid)},
	{name: "blob", target: "/v2/library/alpine/blobs/" + alpineDigest,
		want: ok(kindBlob, "docker.io", "library/alpine", alpineDigest, alpineDigest)},
	{name: "blob on ghcr.io", target: "/v2/ghcr.io/org/img/blobs/" + alpineDigest,
		want: ok(kindBlob, "ghcr.io", "org/img", alpineDigest, alpineDigest)},
	{name: "blob digest with dot segments", target: "/v2/library/alpine/blobs/sha256:../../x",
		want: refused(errcode.ErrorCodeNameInvalid)},
	{name: "blob digest with encoded dot segments", target: "/v2/library/alpine/blobs/sha256:..%2F..%2Fx",
		url:  &url.URL{Path: "/v2/library/alpine/blobs/sha256:../../x", RawPath: "/v2/library/alpine/blobs/sha256:..%2F..%2Fx"},
		want: refused(errcode.ErrorCodeNameInvalid)},
	{name: "blob digest with dots", target: "/v2/library/alpine/blobs/sha256:..",
		want: refused(errcode.ErrorCodeDigestInvalid)},
	{name: "blob digest of 1 MB hex", target: "/v2/library/alpine/blobs/sha256:" + longHex,
		want: refused(errcode.ErrorCodeDigestInvalid)},
	{name: "blob sha512 digest", target: "/v2/library/alpine/blobs/" + sha512Digest,
		want: refused(errcode.ErrorCodeDigestInvalid)},
	{name: "blob uppercase hex", target: "/v2/library/alpine/blobs/" + strings.ToUpper(alpineDigest),
		want: refused(errcode.ErrorCodeDigestInvalid)},
	{name: "blob by tag", target: "/v2/library/alpine/blobs/latest",
		want: refused(errcode.ErrorCodeDigestInvalid)},
	{name: "uppercase name", target: "/v2/library/Alpine/manifests/3",
		want: refused(errcode.ErrorCodeNameInvalid)},
	{name: "name of 255 characters", target: "/v2/" + repo255 + "/manifests/3",
		want: ok(kindManifest, "docker.io", repo255, "3", "")},
	{name: "name over 255 characters", target: "/v2/" + repo256 + "/manifests/3",
		want: refused(errcode.ErrorCodeNameInvalid)},
	{name: "encoded dot dot", target: "/v2/library/%2e%2e/manifests/3",
		url:  &url.URL{Path: "/v2/library/../manifests/3", RawPath: "/v2/library/%2e%2e/manifests/3"},
		want: refused(errcode.ErrorCodeNameInvalid)},
	{name: "encoded slash", target: "/v2/library%2Falpine/manifests/3",
		url:  &url.URL{Path: "/v2/library/alpine/manifests/3", RawPath: "/v2/library%2Falpine/manifests/3"},
		want: refused(errcode.ErrorCodeNameInvalid)},
	{name: "needlessly encoded letter", target: "/v2/library/%61lpine/manifests/3",
		url:  &url.URL{Path: "/v2/library/alpine/manifests/3", RawPath: "/v2/library/%61lpine/manifests/3"},
		want: refused(errcode.ErrorCodeNameInvalid)},
	{name: "encoded percent", target: "/v2/library/alpine%25/manifests/3",
		url:  &url.URL{Path: "/v2/library/alpine%/manifests/3"},
		want: refused(errcode.ErrorCodeNameInvalid)},
	{name: "NUL byte", target: "/v2/library/alp%00ine/manifests/3",
		url:  &url.URL{Path: "/v2/library/alp\x00ine/manifests/3"},
		want: refused(errcode.ErrorCodeNameInvalid)},
	{name: "doubled slash", target: "/v2/library//alpine/manifests/3",
		want: refused(errcode.ErrorCodeNameInvalid)},
	{name: "trailing slash", target: "/v2/library/alpine/manifests/3/",
		want: refused(errcode.ErrorCodeNameInvalid)},
	{name: "dot segment", target: "/v2/library/./alpine/manifests/3",
		want: refused(errcode.ErrorCodeNameInvalid)},
	{name: "dot dot segment", target: "/v2/library/../alpine/manifests/3",
		want: refused(errcode.ErrorCodeNameInvalid)},
	{name: "dot dot escaping the prefix", target: "/v2/ghcr.io/../org/img/manifests/1",
		want: refused(errcode.ErrorCodeNameInvalid)},
	{name: "tag with invalid characters", target: "/v2/library/alpine/manifests/v1+build;$x=@y",
		want: refused(errcode.ErrorCodeTagInvalid)},
	// net/http keeps RawPath for characters it would escape itself, such as
	// "(", so parse refuses them as encoded before looking at the tag.
	{name: "tag with parentheses", target: "/v2/library/alpine/manifests/3$(id)",
		url:  &url.URL{Path: "/v2/library/alpine/manifests/3$(id)", RawPath: "/v2/library/alpine/manifests/3$(id)"},
		want: refused(errcode.ErrorCodeTagInvalid)},
	{name: "tag starting with a dot", target: "/v2/library/alpine/manifests/.3",
		want: refused(errcode.ErrorCodeTagInvalid)},
	{name: "tag of 128 characters", target: "/v2/library/alpine/manifests/" + tag128,
		want: ok(kindManifest, "docker.io", "library/alpine", tag128, "")},
	{name: "tag of 129 characters", target: "/v2/library/alpine/manifests/" + tag129,
		want: refused(errcode.ErrorCodeTagInvalid)},
	{name: "tags list", target: "/v2/library/alpine/tags/list",
		want: ok(kindTags, "docker.io", "library/alpine", "", "")},
	{name: "tags list on ghcr.io", target: "/v2/org/img/tags/list?ns=ghcr.io&n=10",
		want: ok(kindTags, "ghcr.io", "org/img", "", "")},
	{name: "tags without list", target: "/v2/library/alpine/tags/all",
		want: refused(errcode.ErrorCodeNameUnknown)},
	{name: "unknown route", target: "/v2/library/alpine/foo/bar",
		want: refused(errcode.ErrorCodeNameUnknown)},
	{name: "manifests without name", target: "/v2/manifests/3",
		want: refused(errcode.ErrorCodeNameUnknown)},
	{name: "catalog", target: "/v2/_catalog",
		want: refused(errcode.ErrorCodeNameUnknown)},
	{name: "not under /v2/", target: "/v1/library/alpine/manifests/3",
		want: refused(errcode.ErrorCodeNameUnknown)},
	// ServeHTTP answers /v2/ (the ping) before parse; parse alone sees an
	// empty name.
	{name: "v2 root", target: "/v2/",
		want: refused(errcode.ErrorCodeNameInvalid)},
	{name: "v2 without slash", target: "/v2",
		want: refused(errcode.ErrorCodeNameUnknown)},
}

func (tt parseTest) request() *http.Request {
	if tt.url != nil {
		u := *tt.url
		if i := strings.IndexByte(tt.target, '?'); i >= 0 {
			u.RawQuery = tt.target[i+1:]
		}
		return &http.Request{Method: http.MethodGet, URL: &u}
	}
	return httptest.NewRequest(http.MethodGet, tt.target, nil)
}

func TestParse(t *testing.T) {
	s := parseServer(t)
	for _, tt := range parseTests {
		t.Run(tt.name, func(t *testing.T) {
			got := parseOutcome(s.parse(tt.request()))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("parse(%.200q) (-want +got):\n%s", tt.target, diff)
			}
		})
	}
}

// TestParseURLsAreWhatNetHTTPReads checks that each URL the table builds by
// hand is the one net/http reads from the request line.
func TestParseURLsAreWhatNetHTTPReads(t *testing.T) {
	for _, tt := range parseTests {
		if tt.url == nil {
			continue
		}
		t.Run(tt.name, func(t *testing.T) {
			r, err := http.ReadRequest(bufio.NewReader(strings.NewReader("GET " + tt.target + " HTTP/1.1\r\nHost: proxy\r\n\r\n")))
			if err != nil {
				t.Fatal(err)
			}
			got := url.URL{Path: r.URL.Path, RawPath: r.URL.RawPath}
			if diff := cmp.Diff(*tt.url, got); diff != "" {
				t.Errorf("net/http reads %q as (-table +net/http):\n%s", tt.target, diff)
			}
		})
	}
}

// TestParseUnknownNSBuildsNoUpstream checks that an ns parameter only ever
// selects a configured upstream: none is added for it.
func TestParseUnknownNSBuildsNoUpstream(t *testing.T) {
	s := parseServer(t)
	for _, ns := range []string{"127.0.0.1:6379", "localhost", "169.254.169.254", "Docker.io", "docker.io.", "ghcr.io/"} {
		req, err := s.parse(httptest.NewRequest(http.MethodGet, "/v2/library/alpine/manifests/3?ns="+url.QueryEscape(ns), nil))
		if req != nil {
			t.Errorf("ns=%s: parsed %+v, want an error", ns, req)
		}
		if e, ok := errors.AsType[*requestError](err); !ok || e.code != errcode.ErrorCodeNameUnknown {
			t.Errorf("ns=%s: error %v, want NAME_UNKNOWN", ns, err)
		}
	}
	if diff := cmp.Diff([]string{"docker.io", "ghcr.io"}, s.policy.Load().upstreams.Names()); diff != "" {
		t.Errorf("upstreams changed (-want +got):\n%s", diff)
	}
}

// TestCheckOnlyManifests: check takes an image reference, and decides on
// its manifest only: a string that would route to another kind of request,
// or is no reference, is an error, not a decision.
func TestCheckOnlyManifests(t *testing.T) {
	s := parseServer(t)
	for _, image := range []string{
		"library/alpine@x/tags/list",
		"library/alpine@x/blobs/" + alpineDigest,
		"library/alpine:3/tags/list",
		"alpine:",
		"Alpine:3",
		"alpine@sha256:../x",
		"",
	} {
		if d, err := s.Check(t.Context(), image, false); err == nil {
			t.Errorf("check %q: decided %+v, want an error", image, d)
		}
	}
}
