package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
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
		err := s.serveStored(ctx, w, r, blobs, stored, d.desc.Size)
		if errors.Is(err, errCut) {
			_ = s.settleBlob(ctx, d, "cache", err)
			panic(http.ErrAbortHandler) // the client has all but the last byte: never a complete wrong blob
		}
		if !errors.Is(err, errGone) {
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
		err = s.serveStored(ctx, w, r, blobs, stored, d.desc.Size)
		if errors.Is(err, errCut) {
			panic(http.ErrAbortHandler)
		}
		if !errors.Is(err, errGone) {
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
// (the storage collector), or did not verify and was removed: nothing was
// written to the client, which may be sent the blob from the upstream.
var errGone = errors.New("the stored blob was removed before it was read")

// errCut says a stored blob's body was cut after its client had headers and
// part of it: the connection must be aborted, so that the client can never
// take it for a complete one.
var errCut = errors.New("the stored blob's body was cut")

// serveStored serves a stored blob: hashed as it is sent when
// storage_verify_blobs is on (serveVerified), else as distribution's
// BlobStore.ServeBlob does (Range, HEAD, ETag, If-None-Match), reading the
// storage driver's file itself: ServeBlob puts a 4 MiB buffer in front of
// every blob it opens (fifty clients, 200 MiB). A driver whose reader
// cannot seek is served by ServeBlob. size is the blob's verified length,
// -1 when unknown. errGone when the blob is not there any more (or did not
// verify), errCut when its body was cut.
func (s *Server) serveStored(ctx context.Context, w http.ResponseWriter, r *http.Request, blobs distribution.BlobStore, desc v1.Descriptor, size int64) error {
	if s.verifyBlobs {
		return s.serveVerified(ctx, w, r, blobs, desc, size)
	}
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
	setBlobHeaders(w.Header(), desc)
	http.ServeContent(w, r, "", time.Time{}, rs)
	return nil
}

// setBlobHeaders sets the headers of a stored blob's response, as
// distribution's ServeBlob does.
func setBlobHeaders(h http.Header, desc v1.Descriptor) {
	h.Set("Docker-Content-Digest", desc.Digest.String())
	h.Set("ETag", `"`+desc.Digest.String()+`"`)
	h.Set("Cache-Control", "max-age=31536000") // as distribution's: a blob never changes
	h.Set("Content-Type", cmp.Or(desc.MediaType, "application/octet-stream"))
}

// smallStored is the length up to which a stored blob is read whole and
// checked before any of it is sent (fill's smallBlob).
const smallStored = 1 << 20

// serveVerified serves a stored blob only as its bytes hash to its digest,
// at its verified length size (-1: unknown), as a fill serves an
// upstream's: a blob of up to smallStored is read and checked before
// anything is sent; of a larger one, the bytes asked for (the whole blob,
// or one Range) are sent as the blob is read and hashed from its start, all
// but the last, which goes out once the whole blob verified. Storage may be
// a bucket that others can write. Bytes that do not verify are logged,
// counted (trustproxy_storage_unusable_total{kind="blob"}) and deleted, so
// that the blob is fetched again: errGone when nothing was sent yet (the
// caller fetches it now), errCut when the client had part of it.
func (s *Server) serveVerified(ctx context.Context, w http.ResponseWriter, r *http.Request, blobs distribution.BlobStore, desc v1.Descriptor, size int64) error {
	d := desc.Digest
	if size >= 0 && desc.Size != size {
		s.blobUnusable(ctx, d, fmt.Errorf("stored length %d, the verified manifest says %d", desc.Size, size))
		return errGone
	}
	size = desc.Size
	h := w.Header()
	setBlobHeaders(h, desc)
	h.Set("Accept-Ranges", "bytes")
	if inm := r.Header.Get("If-None-Match"); inm != "" && (inm == "*" || strings.Contains(inm, h.Get("ETag"))) {
		w.WriteHeader(http.StatusNotModified) // no bytes: nothing to verify
		return nil
	}
	first, last, status := int64(0), size-1, http.StatusOK
	if rs, ir := r.Header.Get("Range"), r.Header.Get("If-Range"); rs != "" && (ir == "" || ir == h.Get("ETag")) {
		var ok bool
		if first, last, ok = parseRange(rs, size); !ok {
			h.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
			w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
			return nil
		}
		if first > 0 || last < size-1 {
			status = http.StatusPartialContent
			h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, size))
		}
	}
	h.Set("Content-Length", strconv.FormatInt(last-first+1, 10))
	if r.Method == http.MethodHead || size == 0 {
		w.WriteHeader(status)
		return nil
	}
	rc, err := s.openStored(ctx, blobs, d)
	if err != nil {
		return err
	}
	defer rc.Close()
	v := d.Verifier()
	src := io.TeeReader(io.LimitReader(rc, size+1), v) // a byte past the length is a wrong blob too
	if size <= smallStored {
		b, err := io.ReadAll(src)
		if err != nil {
			return &storageError{fmt.Errorf("read stored blob %s: %w", d, err)}
		}
		if int64(len(b)) != size || !v.Verified() {
			s.blobUnusable(ctx, d, fmt.Errorf("%d bytes stored that do not hash to the digest", len(b)))
			return errGone
		}
		w.WriteHeader(status)
		_, _ = w.Write(b[first : last+1])
		return nil
	}
	if _, err := io.CopyN(io.Discard, src, first); err != nil {
		return &storageError{fmt.Errorf("read stored blob %s: %w", d, err)}
	}
	w.WriteHeader(status)
	if _, err := io.CopyN(w, src, last-first); err != nil {
		return fmt.Errorf("%w: %w", errCut, err)
	}
	held := make([]byte, 1)
	if _, err := io.ReadFull(src, held); err != nil {
		return fmt.Errorf("%w: %w", errCut, err)
	}
	rest, err := io.Copy(io.Discard, src)
	if err != nil {
		return fmt.Errorf("%w: %w", errCut, err)
	}
	if last+1+rest != size || !v.Verified() {
		s.blobUnusable(ctx, d, fmt.Errorf("%d bytes stored that do not hash to the digest", last+1+rest))
		return errCut
	}
	_, _ = w.Write(held)
	return nil
}

// parseRange reads a Range header of one range of bytes ("bytes=a-b",
// "bytes=a-", "bytes=-n") of a blob of size bytes: the first and last
// byte, ok false when it is not satisfiable. Anything else (several
// ranges, another unit) is taken as no Range: the whole blob, as RFC 9110
// lets a server answer.
func parseRange(header string, size int64) (first, last int64, ok bool) {
	spec, found := strings.CutPrefix(header, "bytes=")
	a, b, dash := strings.Cut(strings.TrimSpace(spec), "-")
	if !found || !dash || strings.Contains(spec, ",") {
		return 0, size - 1, true
	}
	if a == "" { // the last n bytes
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n <= 0 {
			return 0, size - 1, err != nil
		}
		return max(size-n, 0), size - 1, true
	}
	first, err := strconv.ParseInt(a, 10, 64)
	if err != nil || first < 0 {
		return 0, size - 1, true
	}
	last = size - 1
	if b != "" {
		if last, err = strconv.ParseInt(b, 10, 64); err != nil || last < first {
			return 0, size - 1, true
		}
		last = min(last, size-1)
	}
	return first, last, first < size
}

// openStored opens the stored blob d; errGone when it is not there.
func (s *Server) openStored(ctx context.Context, blobs distribution.BlobStore, d digest.Digest) (io.ReadCloser, error) {
	var rc io.ReadCloser
	var err error
	if s.driver != nil {
		rc, err = s.driver.Reader(ctx, blobDataPath(d), 0)
	} else {
		rc, err = blobs.Open(ctx, d)
	}
	if errors.As(err, &storagedriver.PathNotFoundError{}) || errors.Is(err, distribution.ErrBlobUnknown) {
		return nil, errGone
	}
	if err != nil {
		return nil, &storageError{fmt.Errorf("open stored blob %s: %w", d, err)}
	}
	return rc, nil
}

// blobUnusable logs and counts a stored blob that did not verify, and
// deletes its bytes so that the next request fetches it again (whoever
// altered them could have deleted them anyway).
func (s *Server) blobUnusable(ctx context.Context, d digest.Digest, why error) {
	s.metrics.unusable.WithLabelValues("blob").Inc()
	s.log.Error("stored blob unusable, fetching it again from the upstream; inspect the storage, which may have been altered",
		"digest", d, "err", why)
	if s.driver == nil {
		return
	}
	if err := s.driver.Delete(context.WithoutCancel(ctx), blobDataPath(d)); err != nil && !errors.As(err, &storagedriver.PathNotFoundError{}) {
		s.log.Error("cannot delete an unusable stored blob; delete it by hand", "path", blobDataPath(d), "err", err)
	}
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
