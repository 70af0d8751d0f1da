package retention

import (
	"context"
	"errors"
	"path"
	"strings"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"
)

// distribution's storage layout (its registry/storage/paths.go), which
// every registry sharing the storage reads.
const (
	blobsRoot        = "/docker/registry/v2/blobs"
	repositoriesRoot = "/docker/registry/v2/repositories"
)

// blobDir is the directory of blob d's data (distribution's blobPathSpec):
// removing it removes the blob.
func blobDir(d digest.Digest) string {
	return path.Join(blobsRoot, d.Algorithm().String(), d.Encoded()[:2], d.Encoded())
}

// blobData is the file of blob d's bytes.
func blobData(d digest.Digest) string { return path.Join(blobDir(d), "data") }

// A blob is one stored blob: its length and when its data was written.
type blob struct {
	size     int64
	modified time.Time
}

// links are what one repository links: its manifest revisions, its layers
// (every blob it stored, manifests' configs and layers), and the tags
// whose index lists a revision (trustproxy writes no tags; another
// registry sharing the storage may have).
type links struct {
	manifests map[digest.Digest]bool
	layers    map[digest.Digest]bool
	tags      map[digest.Digest][]string
}

// inventory is what storage holds: every blob, and every repository's
// links.
type inventory struct {
	blobs map[digest.Digest]blob
	repos map[string]*links
}

// scan walks the storage for its inventory: the blob tree, then the
// repository tree (uploads skipped).
func scan(ctx context.Context, d storagedriver.StorageDriver) (*inventory, error) {
	inv := &inventory{blobs: map[digest.Digest]blob{}, repos: map[string]*links{}}
	err := d.Walk(ctx, blobsRoot, func(fi storagedriver.FileInfo) error {
		if fi.IsDir() || path.Base(fi.Path()) != "data" {
			return nil
		}
		dir := path.Dir(fi.Path())
		dg := digest.NewDigestFromEncoded(digest.Algorithm(path.Base(path.Dir(path.Dir(dir)))), path.Base(dir))
		if dg.Validate() != nil || blobData(dg) != fi.Path() {
			return nil
		}
		inv.blobs[dg] = blob{size: fi.Size(), modified: fi.ModTime()}
		return nil
	})
	if err != nil && !errors.As(err, &storagedriver.PathNotFoundError{}) {
		return nil, err
	}
	err = d.Walk(ctx, repositoriesRoot, func(fi storagedriver.FileInfo) error {
		if fi.IsDir() {
			if path.Base(fi.Path()) == "_uploads" {
				return storagedriver.ErrSkipDir
			}
			return nil
		}
		if path.Base(fi.Path()) != "link" {
			return nil
		}
		inv.addLink(strings.TrimPrefix(fi.Path(), repositoriesRoot+"/"))
		return nil
	})
	if err != nil && !errors.As(err, &storagedriver.PathNotFoundError{}) {
		return nil, err
	}
	return inv, nil
}

// addLink adds the link at p (under the repositories root):
// <repo>/_layers/<alg>/<hex>/link, <repo>/_manifests/revisions/<alg>/<hex>/link
// or <repo>/_manifests/tags/<tag>/index/<alg>/<hex>/link. Other links
// (a tag's current) are not needed: removing a revision removes its index
// entries, and a tag whose current revision is gone resolves to nothing.
func (inv *inventory) addLink(p string) {
	seg := strings.Split(p, "/")
	n := len(seg)
	if n < 5 {
		return
	}
	dg := digest.NewDigestFromEncoded(digest.Algorithm(seg[n-3]), seg[n-2])
	if dg.Validate() != nil {
		return
	}
	l := func(repo []string) *links {
		name := strings.Join(repo, "/")
		r := inv.repos[name]
		if r == nil {
			r = &links{manifests: map[digest.Digest]bool{}, layers: map[digest.Digest]bool{}, tags: map[digest.Digest][]string{}}
			inv.repos[name] = r
		}
		return r
	}
	switch {
	case seg[n-4] == "_layers":
		l(seg[:n-4]).layers[dg] = true
	case n >= 6 && seg[n-4] == "revisions" && seg[n-5] == "_manifests":
		l(seg[:n-5]).manifests[dg] = true
	case n >= 8 && seg[n-4] == "index" && seg[n-6] == "tags" && seg[n-7] == "_manifests":
		r := l(seg[:n-7])
		r.tags[dg] = append(r.tags[dg], seg[n-5])
	}
}

// linkPaths are the links of repo to d to remove with d: its layer link,
// its manifest revision, and the tag index entries that list it.
func linkPaths(repo string, l *links, d digest.Digest) []string {
	base := path.Join(repositoriesRoot, repo)
	var out []string
	if l.layers[d] {
		out = append(out, path.Join(base, "_layers", d.Algorithm().String(), d.Encoded()))
	}
	for _, tag := range l.tags[d] {
		out = append(out, path.Join(base, "_manifests/tags", tag, "index", d.Algorithm().String(), d.Encoded()))
	}
	if l.manifests[d] {
		out = append(out, path.Join(base, "_manifests/revisions", d.Algorithm().String(), d.Encoded()))
	}
	return out
}
