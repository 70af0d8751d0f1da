package referrers

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func sameOrigin(a, b string) bool {
	x, err1 := url.Parse(a)
	y, err2 := url.Parse(b)
	return err1 == nil && err2 == nil && x.Scheme == y.Scheme && x.Host == y.Host
}

func entries(n int, at string) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":%q,"digest":%q,"size":10}`, at, digest.FromString(fmt.Sprint(at, i)))
	}
	return `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` + b.String() + `]}`
}

// registry is an outside registry for List: api answers the referrers API
// (nil: 404, as distribution v3.1.2), tag the referrers tag.
func registry(t *testing.T, api func(w http.ResponseWriter, r *http.Request), tag string) Repository {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.Contains(r.URL.Path, "/referrers/") && api != nil:
			api(w, r)
		case strings.Contains(r.URL.Path, "/manifests/sha256-") && tag != "":
			w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
			fmt.Fprint(w, tag)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	return Repository{Scheme: u.Scheme, Host: u.Host, Path: "library/app"}
}

func TestList(t *testing.T) {
	subject := digest.FromString("subject")
	page := func(body, link string) func(w http.ResponseWriter, r *http.Request) {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
			if link != "" && r.URL.Query().Get("last") == "" {
				w.Header().Set("Link", link)
			}
			fmt.Fprint(w, body)
		}
	}
	tests := []struct {
		name    string
		api     func(w http.ResponseWriter, r *http.Request)
		tag     string
		filter  string
		lim     Limits
		want    int
		wantErr error
	}{
		{name: "no API, no tag: none", want: 0},
		{name: "no API: the referrers tag", tag: entries(3, "a"), want: 3},
		{name: "the tag, filtered", tag: entries(2, "b"), filter: "a", want: 0},
		{name: "the API", api: page(entries(2, "a"), ""), want: 2},
		{name: "pages followed", api: page(entries(2, "a"), `</v2/library/app/referrers/x?last=1>; rel="next"`), want: 4},
		{name: "a page elsewhere is not followed", api: page(entries(2, "a"), `<http://elsewhere.example/v2/x?last=1>; rel="next"`), want: 2},
		{name: "too many entries", api: page(entries(11, "a"), ""), lim: Limits{Entries: 10}, wantErr: ErrTooMany},
		{name: "too many over pages", api: page(entries(6, "a"), `</v2/library/app/referrers/x?last=1>; rel="next"`), lim: Limits{Entries: 10}, wantErr: ErrTooMany},
		{name: "too many bytes", api: page(entries(100, "a"), ""), lim: Limits{Bytes: 1000}, wantErr: ErrTooLarge},
		{name: "100,000 entries", tag: entries(100_000, "a"), wantErr: ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			repo := registry(t, tt.api, tt.tag)
			got, err := List(t.Context(), http.DefaultClient, repo, subject, tt.filter, tt.lim)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil || len(got) != tt.want {
				t.Fatalf("%d referrers, %v; want %d", len(got), err, tt.want)
			}
		})
	}
}

func TestListMalformed(t *testing.T) {
	repo := registry(t, nil, `{"schemaVersion":2,"manifests":[],"layers":[]}`)
	_, err := List(t.Context(), http.DefaultClient, repo, digest.FromString("s"), "", Limits{})
	if _, ok := errors.AsType[*MalformedError](err); !ok {
		t.Fatalf("err %v, want a *MalformedError", err)
	}
}
