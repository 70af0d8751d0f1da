package proxy

import (
	"cmp"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/distribution/distribution/v3"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/internal/trust"
)

// serveBlob answers GET and HEAD /v2/<name>/blobs/<digest>. The blob must be
// referenced by a manifest verified in this repository. Stored blobs are
// served by distribution (Range, HEAD, ETag); cold ones are fetched once from
// the upstream however many clients ask, and streamed while they arrive.
func (s *Server) serveBlob(w http.ResponseWriter, r *http.Request, req *request) error {
	ctx := r.Context()
	d, err := s.decide(ctx, req)
	if err != nil {
		return err
	}
	if err := d.Err(); err != nil {
		return err
	}
	desc := d.desc
	repo, err := s.repository(ctx, req.gun)
	if err != nil {
		return err
	}
	blobs := repo.Blobs(ctx)
	if stored, err := blobs.Stat(ctx, req.dgst); err == nil {
		s.settleBlob(ctx, d, "cache", nil)
		return s.serveStored(ctx, w, r, blobs, stored)
	}
	if r.Method == http.MethodHead {
		// A HEAD starts no download: the length is the verified
		// manifest's, or (audit mode) the upstream's.
		if desc.Size < 0 {
			if desc.Size, err = req.upstream.blobSize(ctx, req.repo, req.dgst); err != nil {
				return err
			}
		}
		s.settleBlob(ctx, d, "upstream", nil)
		writeBlobHeaders(w, req.dgst, desc.Size)
		return nil
	}
	release, holder := s.fillLock(req, desc.Size)
	for wait := peerWait; holder != ""; {
		err := s.peers.stream(ctx, w, r, holder, req.gun, req.dgst, desc.Size)
		if !errors.Is(err, errNoPeerFill) {
			s.settleBlob(ctx, d, "peer", err)
			if _, ok := errors.AsType[*abortedError](err); ok {
				panic(http.ErrAbortHandler)
			}
			return err
		}
		// The holder has no fill of it: it has ended (the blob is in
		// storage, or it failed), or it has not begun yet (the holder took
		// the lock a moment ago). A holder that does not answer at all is
		// not waited for.
		if stored, err := blobs.Stat(ctx, req.dgst); err == nil {
			s.settleBlob(ctx, d, "cache", nil)
			return s.serveStored(ctx, w, r, blobs, stored)
		}
		if errors.Is(err, errPeerUnreachable) || wait <= 0 {
			s.log.Debug("no fill on the lock holder; fetching here", "repo", req.gun, "digest", req.dgst, "holder", holder, "err", err)
			release, holder = nil, ""
			break
		}
		select {
		case <-time.After(peerRetry):
			wait -= peerRetry
		case <-ctx.Done():
			return ctx.Err()
		}
		release, holder = s.fillLock(req, desc.Size)
	}
	f, spool, err := s.joinFill(req, blobs, desc, release)
	if err != nil {
		return err
	}
	if spool != nil {
		defer spool.Close()
	}
	err = f.serve(w, r, spool)
	s.settleBlob(ctx, d, "upstream", err)
	if _, ok := errors.AsType[*abortedError](err); ok {
		// The client has a partial body: abort the connection so that it
		// can never take it for a complete one.
		panic(http.ErrAbortHandler)
	}
	if err == errClientGone {
		return nil
	}
	return err
}

// serveStored serves a stored blob as distribution's BlobStore.ServeBlob
// does (Range, HEAD, ETag, If-None-Match), reading the storage driver's file
// itself: ServeBlob puts a 4 MiB buffer in front of every blob it opens
// (fifty clients, 200 MiB). A driver whose reader cannot seek is served by
// ServeBlob.
func (s *Server) serveStored(ctx context.Context, w http.ResponseWriter, r *http.Request, blobs distribution.BlobStore, desc v1.Descriptor) error {
	if s.driver == nil {
		return blobs.ServeBlob(ctx, w, r, desc.Digest)
	}
	rc, err := s.driver.Reader(ctx, blobDataPath(desc.Digest), 0)
	if err != nil {
		return blobs.ServeBlob(ctx, w, r, desc.Digest)
	}
	defer rc.Close()
	rs, ok := rc.(io.ReadSeeker)
	if !ok {
		return blobs.ServeBlob(ctx, w, r, desc.Digest)
	}
	h := w.Header()
	h.Set("Docker-Content-Digest", desc.Digest.String())
	h.Set("ETag", `"`+desc.Digest.String()+`"`)
	h.Set("Cache-Control", "max-age=31536000") // as distribution's: a blob never changes
	h.Set("Content-Type", cmp.Or(desc.MediaType, "application/octet-stream"))
	http.ServeContent(w, r, "", time.Time{}, rs)
	return nil
}

// blobDataPath is where distribution's storage keeps a blob's bytes (its
// registry/storage/paths.go, blobDataPathSpec): the layout every registry
// sharing the storage reads.
func blobDataPath(d digest.Digest) string {
	return "/docker/registry/v2/blobs/" + d.Algorithm().String() + "/" + d.Encoded()[:2] + "/" + d.Encoded() + "/data"
}

// errClientGone is a client that left before its blob was sent.
var errClientGone = errors.New("the client went away")

// fillLock takes the cross-replica lock of req's blob, of size bytes (-1:
// unknown), when replicas share Redis and no fill of this process has it:
// release when this replica is to fill it, or the URL of the replica that
// holds it (never this one's). A blob of unknown length (audit mode) is
// filled here: a peer's stream is used only when the length to check it
// against is known.
func (s *Server) fillLock(req *request, size int64) (release func(), holder string) {
	if s.peers == nil || size < 0 {
		return nil, ""
	}
	s.fillMu.Lock()
	_, local := s.fills[req.gun+"@"+req.dgst.String()]
	s.fillMu.Unlock()
	if local {
		return nil, ""
	}
	release, holder = s.peers.acquire(req.gun, req.dgst)
	if holder == s.peers.self {
		holder = "" // our own fill, just started or just ended: join or start one here
	}
	return release, holder
}

// settleBlob logs and counts the decision on a blob once it is known how
// the serving ended: served, or refused by what the fill found (a digest
// mismatch). Blobs the decision refused or audited are logged by decide.
func (s *Server) settleBlob(ctx context.Context, d *Decision, source string, err error) {
	if d.Verdict != Served {
		return
	}
	if r, ok := errors.AsType[*trust.RefusalError](err); ok {
		d.Verdict, d.Reason, d.Message, d.refusal = Denied, r.Reason, r.Error(), r
	} else if err != nil {
		return // not a verdict: the upstream failed, or the client left early; logged as such
	} else {
		s.metrics.served.WithLabelValues("blob", source).Inc()
	}
	s.logDecision(ctx, d)
}

// abortedError is a fill that failed after its client got headers and
// part of the body.
type abortedError struct{ err error }

func (e *abortedError) Error() string { return e.err.Error() }
func (e *abortedError) Unwrap() error { return e.err }

func writeBlobHeaders(w http.ResponseWriter, dgst digest.Digest, size int64) {
	h := w.Header()
	h.Set("Docker-Content-Digest", dgst.String())
	h.Set("ETag", `"`+dgst.String()+`"`)
	h.Set("Content-Type", "application/octet-stream")
	if size >= 0 {
		h.Set("Content-Length", strconv.FormatInt(size, 10))
	}
}
