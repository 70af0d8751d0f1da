package retention

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/opencontainers/go-digest"
)

func TestAddLink(t *testing.T) {
	d := digest.FromString("x")
	hex := d.Encoded()
	tests := []struct {
		name string
		path string
		want map[string]*links
	}{
		{name: "layer", path: "docker.io/library/app/_layers/sha256/" + hex + "/link",
			want: map[string]*links{"docker.io/library/app": {layers: map[digest.Digest]bool{d: true}}}},
		{name: "revision", path: "docker.io/library/app/_manifests/revisions/sha256/" + hex + "/link",
			want: map[string]*links{"docker.io/library/app": {manifests: map[digest.Digest]bool{d: true}}}},
		{name: "tag index", path: "r/a/_manifests/tags/v1/index/sha256/" + hex + "/link",
			want: map[string]*links{"r/a": {tags: map[digest.Digest][]string{d: {"v1"}}}}},
		{name: "tag current", path: "r/a/_manifests/tags/v1/current/link", want: map[string]*links{}},
		{name: "not a digest", path: "r/a/_layers/sha256/zz/link", want: map[string]*links{}},
		{name: "short", path: "_layers/sha256/" + hex + "/link", want: map[string]*links{}},
	}
	norm := func(m map[string]*links) map[string]*links {
		for _, l := range m {
			for _, p := range []*map[digest.Digest]bool{&l.layers, &l.manifests} {
				if len(*p) == 0 {
					*p = nil
				}
			}
			if len(l.tags) == 0 {
				l.tags = nil
			}
		}
		return m
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inv := &inventory{repos: map[string]*links{}}
			inv.addLink(tt.path)
			if diff := cmp.Diff(tt.want, norm(inv.repos), cmp.AllowUnexported(links{})); diff != "" {
				t.Errorf("addLink(%s) (-want +got):\n%s", tt.path, diff)
			}
		})
	}
}

func TestLinkPaths(t *testing.T) {
	d := digest.FromString("x")
	l := &links{layers: map[digest.Digest]bool{d: true}, manifests: map[digest.Digest]bool{d: true},
		tags: map[digest.Digest][]string{d: {"v1"}}}
	want := []string{
		repositoriesRoot + "/r/a/_layers/sha256/" + d.Encoded(),
		repositoriesRoot + "/r/a/_manifests/tags/v1/index/sha256/" + d.Encoded(),
		repositoriesRoot + "/r/a/_manifests/revisions/sha256/" + d.Encoded(),
	}
	if diff := cmp.Diff(want, linkPaths("r/a", l, d)); diff != "" {
		t.Errorf("linkPaths (-want +got):\n%s", diff)
	}
}

// FuzzParseRecord: a pull record read from storage, which others may write,
// is refused or names a valid repository and digest whose record path is
// the one it was read from; never a panic.
func FuzzParseRecord(f *testing.F) {
	d := digest.FromString("manifest")
	good := `{"upstream":"docker.io","path":"library/app","digest":"` + d.String() + `","pulled":"2026-12-01T00:00:00Z"}`
	f.Add(good, recordPath("docker.io/library/app", d))
	f.Add(good, recordPath("docker.io/library/other", d))
	f.Add(`{"upstream":"registry.example.com:5443","path":"../../x","digest":"sha256:00"}`, "/trustproxy/retention/pulls/x")
	f.Add(`{}`, "")
	f.Fuzz(func(t *testing.T, b, path string) {
		r, err := parseRecord([]byte(b), path)
		if err != nil {
			return
		}
		n, err := r.name()
		if err != nil || r.Digest.Validate() != nil || recordPath(n.String(), r.Digest) != path {
			t.Fatalf("record %+v accepted at %q", r, path)
		}
	})
}
