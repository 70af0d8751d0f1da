package retention

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/opencontainers/go-digest"
	"github.com/redis/go-redis/v9"

	"github.com/trustproxy/trustproxy/internal/cache"
	"github.com/trustproxy/trustproxy/internal/testenv"
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

// The collector's lock on a real Redis: one holder at a time, a done lock
// holds off the others until its end, and what is not a genuine lock (not
// sealed, another type, over) is taken over.
func TestLock(t *testing.T) {
	r := testenv.StartRedis(t, "")
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr()})
	t.Cleanup(func() { rdb.Close() })
	sh, err := cache.NewShared(rdb, "trustproxy:", []byte(testenv.StateKey), cache.NewRedisHealth(slog.New(slog.DiscardHandler)), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	a, b := newRedisLock(sh), newRedisLock(sh)
	if err := a.acquire(ctx); err != nil {
		t.Fatalf("a: %v", err)
	}
	if err := b.acquire(ctx); err == nil || err.Error() != "another replica is collecting" {
		t.Fatalf("b while a holds the lock: %v", err)
	}
	if ok, err := a.refresh(ctx); !ok || err != nil {
		t.Fatalf("a refresh: %v, %v", ok, err)
	}
	if err := a.release(ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := b.acquire(ctx); err == nil || err.Error() != "another replica collected recently" {
		t.Fatalf("b after a's collection: %v", err)
	}
	for _, plant := range []func() error{
		func() error { return rdb.Set(ctx, a.key, `{"owner":"x","until":"2999-01-01T00:00:00Z"}`, 0).Err() },
		func() error { rdb.Del(ctx, a.key); return rdb.SAdd(ctx, a.key, "x").Err() },
		func() error { return rdb.Set(ctx, a.key, make([]byte, 2*maxLock), 0).Err() },
		func() error { // genuine but over
			return rdb.Set(ctx, a.key, b.seal(lock{Owner: "gone", Until: time.Now().Add(-time.Second)}), 0).Err()
		},
	} {
		rdb.Del(ctx, a.key)
		if err := plant(); err != nil {
			t.Fatal(err)
		}
		if err := b.acquire(ctx); err != nil {
			t.Fatalf("b over a planted lock: %v", err)
		}
		if ok, err := a.refresh(ctx); ok || err != nil {
			t.Fatalf("a refreshed a lock it lost: %v, %v", ok, err)
		}
		if err := b.release(context.Background(), 0); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := rdb.Exists(ctx, a.key).Result(); n != 0 {
		t.Errorf("a released lock is still on redis")
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
