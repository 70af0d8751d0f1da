package proxy

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/internal/manifest"
)

// FuzzParseRequest feeds parse a request path and query, both as net/http
// reads them from a request line and as an arbitrary decoded path. parse
// must not panic, and what it accepts must name one configured upstream, a
// repository in the reference grammar and a sha256 digest or a tag.
func FuzzParseRequest(f *testing.F) {
	for _, tt := range parseTests {
		target, query, _ := strings.Cut(tt.target, "?")
		if len(target) > 4096 {
			continue // the 1 MB digest: the fuzzer makes long inputs itself
		}
		f.Add(target, query)
		if tt.url != nil {
			f.Add(tt.url.Path, query)
		}
	}
	s := parseServer(f)
	f.Fuzz(func(t *testing.T, path, query string) {
		if u, err := url.ParseRequestURI(path + "?" + query); err == nil {
			checkParsed(t, s, &http.Request{Method: http.MethodGet, URL: u})
		}
		checkParsed(t, s, &http.Request{Method: http.MethodGet, URL: &url.URL{Path: path, RawQuery: query}})
	})
}

func checkParsed(t *testing.T, s *Server, r *http.Request) {
	t.Helper()
	// A write's refusal names the repository its path is about: a valid
	// name of a configured upstream, or none.
	w := &http.Request{Method: http.MethodPut, URL: r.URL}
	if gun := s.writeRequest(w).name.String(); gun != "" {
		up, _, _ := strings.Cut(gun, "/")
		if _, err := reference.WithName(gun); err != nil || s.policy.Load().upstreams.Named(up) == nil {
			t.Fatalf("writeRequest(%q) names %q", r.URL, gun)
		}
	}
	req, err := s.parse(r)
	if err != nil {
		if req != nil {
			t.Fatalf("parse(%q) = %+v and error %v", r.URL, req, err)
		}
		if e, ok := errors.AsType[*requestError](err); !ok || e.detail == "" {
			t.Fatalf("parse(%q) error %T %v, want a *requestError that says why", r.URL, err, err)
		}
		return
	}
	where := r.URL.String()
	if req.from == nil || s.policy.Load().upstreams.Named(req.from.Name()) != req.from {
		t.Fatalf("%s: upstream %v is not one of the configured ones", where, req.from)
	}
	if n := len(s.policy.Load().upstreams.Names()); n != 2 {
		t.Fatalf("%s: %d upstreams after parse, want the 2 configured", where, n)
	}
	gun, repo := req.name.String(), req.name.Path()
	if gun != req.from.Name()+"/"+repo {
		t.Fatalf("%s: gun %q is not upstream %q + repo %q", where, gun, req.from.Name(), repo)
	}
	if _, err := reference.WithName(gun); err != nil {
		t.Fatalf("%s: accepted gun %q: %v", where, gun, err)
	}
	for _, bad := range []string{"..", "//", "%", "\x00", "\\"} {
		if strings.Contains(gun, bad) || strings.Contains(req.ref, bad) {
			t.Fatalf("%s: accepted gun %q ref %q containing %q", where, gun, req.ref, bad)
		}
	}
	seg := ""
	switch req.kind {
	case kindBlob:
		seg = "blobs"
		if req.dgst == "" {
			t.Fatalf("%s: blob request without digest", where)
		}
	case kindReferrers:
		seg = "referrers"
		if req.dgst == "" {
			t.Fatalf("%s: referrers request without digest", where)
		}
	case kindManifest:
		seg = "manifests"
		if req.dgst == "" && (!tagPattern.MatchString(req.ref) || len(req.ref) > 128) {
			t.Fatalf("%s: accepted tag %q", where, req.ref)
		}
	case kindTags:
		if req.ref != "" || req.dgst != "" {
			t.Fatalf("%s: tags request with ref %q digest %q", where, req.ref, req.dgst)
		}
		return
	case kindTrustData:
		if req.ref == "" || req.dgst != "" {
			t.Fatalf("%s: trust data request for file %q digest %q", where, req.ref, req.dgst)
		}
		return // the file name is trust's to check (trust.Verifier.Metadata)
	default:
		t.Fatalf("%s: unknown kind %d", where, req.kind)
	}
	if req.dgst != "" {
		if err := req.dgst.Validate(); err != nil || req.dgst.Algorithm() != digest.SHA256 || req.dgst.String() != req.ref {
			t.Fatalf("%s: accepted digest %q for ref %q (%v)", where, req.dgst, req.ref, err)
		}
	}
	// What is fetched is what was verified: joining the upstream URL must not
	// clean anything away.
	got := strings.TrimPrefix(req.from.URL(repo, seg, req.ref).Path, "/")
	if want := "v2/" + repo + "/" + seg + "/" + req.ref; got != want {
		t.Fatalf("%s: upstream path %q, want %q", where, got, want)
	}
}

// FuzzArtifactSubject feeds artifactSubject manifests as the upstream may
// send them, the referrers an attacker can push among them: what it
// accepts must be an OCI image manifest naming a sha256 subject, with no
// image config, image layer or manifest among what it lists.
func FuzzArtifactSubject(f *testing.F) {
	f.Add(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.dev.sigstore.bundle.v0.3+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","digest":"sha256:` + strings.Repeat("a", 64) + `","size":1543}],"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + strings.Repeat("b", 64) + `","size":428}}`)
	f.Add(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` + strings.Repeat("c", 64) + `","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:` + strings.Repeat("a", 64) + `","size":10}],"subject":{"digest":"sha256:` + strings.Repeat("b", 64) + `","size":428}}`)
	f.Fuzz(func(t *testing.T, body string) {
		m, err := manifest.Parse(digest.FromString(body), []byte(body))
		if err != nil {
			return
		}
		s, err := artifactSubject(m)
		if err != nil {
			return
		}
		if m.MediaType != "application/vnd.oci.image.manifest.v1+json" || s.Validate() != nil || s == m.Digest || imageConfigTypes[m.Refs[0].MediaType] {
			t.Fatalf("accepted %s (subject %s)", body, s)
		}
		for _, l := range m.Refs[1:] {
			if imageLayer(l.MediaType) || manifest.IsType(l.MediaType) || l.Size > maxReferrerBlob {
				t.Fatalf("accepted layer %+v", l)
			}
		}
	})
}
