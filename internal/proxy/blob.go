package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/distribution/distribution/v3"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/internal/fill"
)

// serveBlob answers GET and HEAD /v2/<name>/blobs/<digest>. The blob must be
// listed by a manifest verified in this repository. Stored blobs are served
// from storage (Range, HEAD, ETag); cold ones are fetched once however many
// clients ask, and streamed while they arrive (fill).
func (s *Server) serveBlob(w http.ResponseWriter, r *http.Request, req *request) error {
	ctx := r.Context()
	d, err := s.decide(ctx, req, decideOptions{})
	if err != nil {
		return err
	}
	repo, err := s.repository(ctx, req)
	if err != nil {
		return err
	}
	blobs := repo.Blobs(ctx)
	if stored, err := blobs.Stat(ctx, req.dgst); err == nil {
		// The storage collector may remove the blob between Stat and the
		// read: then it is fetched again, as if it had never been stored.
		if err := s.serveStored(ctx, w, r, blobs, stored); !errors.Is(err, errGone) {
			_ = s.settleBlob(ctx, d, "cache", nil)
			return err
		}
	}
	desc := d.desc
	if r.Method == http.MethodHead {
		// A HEAD starts no download: the length is the verified
		// manifest's, or (audit mode) the upstream's.
		if desc.Size < 0 {
			if desc.Size, err = req.from.BlobSize(ctx, req.name.Path(), req.dgst); err != nil {
				return err
			}
		}
		_ = s.settleBlob(ctx, d, "upstream", nil)
		fill.WriteHeaders(w, req.dgst, desc.Size)
		return nil
	}
	source, err := s.fills.Serve(ctx, w, r, fill.Blob{Repository: req.name, Desc: desc, From: req.from, Store: blobs})
	if errors.Is(err, fill.ErrStored) {
		stored, err := blobs.Stat(ctx, req.dgst)
		if err != nil {
			return &storageError{fmt.Errorf("blob %s, stored by another replica, cannot be read: %w", req.dgst, err)}
		}
		_ = s.settleBlob(ctx, d, "cache", nil)
		if err := s.serveStored(ctx, w, r, blobs, stored); !errors.Is(err, errGone) {
			return err
		}
		return &storageError{fmt.Errorf("blob %s, stored by another replica, was removed before it was read", req.dgst)}
	}
	err = s.settleBlob(ctx, d, string(source), err)
	if _, ok := errors.AsType[*fill.AbortedError](err); ok {
		// The client has a partial body: abort the connection so that it
		// can never take it for a complete one.
		panic(http.ErrAbortHandler)
	}
	if errors.Is(err, fill.ErrClientGone) {
		return nil
	}
	return err
}

// errGone says a blob that storage listed was removed before it was read
// (the storage collector): nothing was written to the client.
var errGone = errors.New("the stored blob was removed before it was read")

// serveStored serves a stored blob as distribution's BlobStore.ServeBlob
// does (Range, HEAD, ETag, If-None-Match), reading the storage driver's file
// itself: ServeBlob puts a 4 MiB buffer in front of every blob it opens
// (fifty clients, 200 MiB). A driver whose reader cannot seek is served by
// ServeBlob. errGone when the blob is not there any more.
func (s *Server) serveStored(ctx context.Context, w http.ResponseWriter, r *http.Request, blobs distribution.BlobStore, desc v1.Descriptor) error {
	if s.driver == nil {
		return serveBlob(ctx, w, r, blobs, desc.Digest)
	}
	rc, err := s.driver.Reader(ctx, blobDataPath(desc.Digest), 0)
	if errors.As(err, &storagedriver.PathNotFoundError{}) {
		return errGone
	}
	if err != nil {
		return serveBlob(ctx, w, r, blobs, desc.Digest)
	}
	defer rc.Close()
	rs, ok := rc.(io.ReadSeeker)
	if !ok {
		return serveBlob(ctx, w, r, blobs, desc.Digest)
	}
	h := w.Header()
	h.Set("Docker-Content-Digest", desc.Digest.String())
	h.Set("ETag", `"`+desc.Digest.String()+`"`)
	h.Set("Cache-Control", "max-age=31536000") // as distribution's: a blob never changes
	h.Set("Content-Type", cmp.Or(desc.MediaType, "application/octet-stream"))
	http.ServeContent(w, r, "", time.Time{}, rs)
	return nil
}

// serveBlob is distribution's ServeBlob, errGone when the blob is not
// there any more (ServeBlob then has written nothing).
func serveBlob(ctx context.Context, w http.ResponseWriter, r *http.Request, blobs distribution.BlobStore, d digest.Digest) error {
	err := blobs.ServeBlob(ctx, w, r, d)
	if errors.Is(err, distribution.ErrBlobUnknown) {
		return errGone
	}
	return err
}

// blobDataPath is where distribution's storage keeps a blob's bytes (its
// registry/storage/paths.go, blobDataPathSpec): the layout every registry
// sharing the storage reads.
func blobDataPath(d digest.Digest) string {
	return "/docker/registry/v2/blobs/" + d.Algorithm().String() + "/" + d.Encoded()[:2] + "/" + d.Encoded() + "/data"
}
