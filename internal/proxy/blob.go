package proxy

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/distribution/distribution/v3"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/config"
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
	if _, err := blobs.Stat(ctx, req.dgst); err == nil {
		s.settleBlob(ctx, d, "cache", nil)
		return blobs.ServeBlob(ctx, w, r, req.dgst)
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
	release, holder := s.fillLock(req)
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
		if _, err := blobs.Stat(ctx, req.dgst); err == nil {
			s.settleBlob(ctx, d, "cache", nil)
			return blobs.ServeBlob(ctx, w, r, req.dgst)
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
		release, holder = s.fillLock(req)
	}
	f, spool, err := s.joinFill(req, blobs, desc, release)
	if err != nil {
		return err
	}
	defer spool.Close()
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

// errClientGone is a client that left before its blob was sent.
var errClientGone = errors.New("the client went away")

// fillLock takes the cross-replica lock of req's blob when replicas share
// Redis and no fill of this process has it: release when this replica is to
// fill it, or the URL of the replica that holds it (never this one's).
func (s *Server) fillLock(req *request) (release func(), holder string) {
	if s.peers == nil {
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

// A fill is one download of a blob from an upstream into storage. Its bytes
// go to a spool file that every waiting client reads, and to a distribution
// blob writer that is committed only when the digest verifies. The download
// runs apart from any client: it completes when the client that started it
// goes away.
type fill struct {
	dgst digest.Digest
	path string // the spool file; removed when the fill ends (readers keep their fd)

	mu       sync.Mutex
	cond     *sync.Cond
	size     int64 // expected length; -1 until known
	started  bool  // the upstream answered 200
	written  int64
	done     bool
	verified bool
	err      error
}

// joinFill returns the fill under way for req's blob, or starts one, with the
// spool file opened for reading.
func (s *Server) joinFill(req *request, blobs distribution.BlobStore, desc v1.Descriptor, release func()) (*fill, *os.File, error) {
	key := req.gun + "@" + req.dgst.String()
	if release == nil {
		release = func() {}
	}
	// The lock is released on Redis after fillMu is: never a network call
	// under the lock every blob request takes.
	started := false
	defer func() {
		if !started {
			release()
		}
	}()
	s.fillMu.Lock()
	defer s.fillMu.Unlock()
	if s.closing {
		return nil, nil, &requestError{codeUnavailable, closingDetail}
	}
	if f, ok := s.fills[key]; ok {
		spool, err := os.Open(f.path) // a fill of this process has it (and its own lock)
		return f, spool, err
	}
	w, err := os.CreateTemp(s.spoolDir, "blob-*")
	if err != nil {
		return nil, nil, fmt.Errorf("spool blob: %w", err)
	}
	spool, err := os.Open(w.Name())
	if err != nil {
		w.Close()
		os.Remove(w.Name())
		return nil, nil, fmt.Errorf("spool blob: %w", err)
	}
	f := &fill{dgst: req.dgst, path: w.Name(), size: desc.Size}
	f.cond = sync.NewCond(&f.mu)
	s.fills[key] = f
	started = true
	s.running.Go(func() {
		err := s.runFill(req, blobs, desc, f, w)
		s.fillMu.Lock()
		delete(s.fills, key)
		s.fillMu.Unlock()
		release() // after the commit: a replica that then finds no lock finds the blob
		w.Close()
		os.Remove(w.Name())
		// Each client's request logs its own decision on the outcome.
		if err != nil {
			s.log.Warn("blob fetch failed", "repo", req.gun, "digest", req.dgst, "err", err)
		}
		f.finish(err)
	})
	return f, spool, nil
}

// runFill downloads the blob into spool and storage. It returns nil only when
// the blob verified and was committed. Close cancels it.
func (s *Server) runFill(req *request, blobs distribution.BlobStore, desc v1.Descriptor, f *fill, spool *os.File) (err error) {
	ctx, cancel := context.WithCancelCause(s.fillCtx)
	defer cancel(nil)
	lim := s.cfg.Limits
	// The idle timer bounds the wait for response headers, then each gap
	// between reads of the body; the deadline bounds the whole download, so
	// an upstream trickling bytes just inside the idle timeout cannot hold
	// it open.
	idle := time.AfterFunc(lim.UpstreamTimeout, func() {
		cancel(errors.New("the upstream made no progress within limits.upstream_timeout (headers) or limits.blob_idle_timeout (body)"))
	})
	defer idle.Stop()
	defer func() {
		result := "ok"
		if err != nil {
			result = "error"
			if _, ok := errors.AsType[*trust.RefusalError](err); ok {
				result = "mismatch"
			}
		}
		s.metrics.upstream.WithLabelValues("blob", result).Inc()
	}()

	resp, err := req.upstream.get(ctx, req.repo, "blobs", req.dgst.String(), nil, "")
	if err != nil {
		if c := context.Cause(ctx); c != nil {
			return &upstreamError{code: codeUnavailable, err: fmt.Errorf("blob %s from %s: %w", req.dgst, req.upstream.cfg.Name, c)}
		}
		return err
	}
	defer resp.Body.Close()
	idle.Reset(lim.BlobIdleTimeout)

	size := desc.Size
	if size < 0 {
		size = resp.ContentLength
	}
	budget := fillBudget(size, lim)
	deadline := time.AfterFunc(budget, func() {
		cancel(fmt.Errorf("the download took longer than its deadline of %s (limits.upstream_timeout + size / limits.min_transfer_rate)", budget))
	})
	defer deadline.Stop()
	mismatch := func(detail string) error {
		return &trust.RefusalError{GUN: req.gun, Ref: req.dgst.String(), Reason: ReasonDigestMismatch, Detail: detail}
	}
	if size >= 0 && resp.ContentLength >= 0 && resp.ContentLength != size {
		return mismatch(fmt.Sprintf("the upstream announced %d bytes, the verified manifest says %d", resp.ContentLength, size))
	}
	bw, err := blobs.Create(ctx)
	if err != nil {
		return fmt.Errorf("create blob writer: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			_ = bw.Cancel(context.WithoutCancel(ctx))
		}
	}()
	f.start(size)

	h := sha256.New()
	buf := make([]byte, 256<<10)
	var n int64
	for {
		k, rerr := resp.Body.Read(buf)
		if k > 0 {
			idle.Reset(lim.BlobIdleTimeout)
			n += int64(k)
			if size >= 0 && n > size {
				return mismatch(fmt.Sprintf("the upstream sent more than the %d bytes the verified manifest says", size))
			}
			if n > maxUnknownSize {
				return fmt.Errorf("the upstream sent more than %d bytes for a blob of unknown length", int64(maxUnknownSize))
			}
			h.Write(buf[:k])
			if _, err := bw.Write(buf[:k]); err != nil {
				return fmt.Errorf("write blob to storage: %w", err)
			}
			if _, err := spool.Write(buf[:k]); err != nil {
				return fmt.Errorf("write blob spool: %w", err)
			}
			f.progress(n)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if c := context.Cause(ctx); c != nil {
				rerr = c
			}
			return &upstreamError{code: codeUnavailable, err: fmt.Errorf("read blob %s from %s after %d bytes: %w", req.dgst, req.upstream.cfg.Name, n, rerr)}
		}
	}
	got := digest.NewDigest(digest.SHA256, h)
	if got != req.dgst || (size >= 0 && n != size) {
		return mismatch(fmt.Sprintf("the upstream's blob hashes to %s (%d bytes); nothing was cached", got, n))
	}
	if _, err := bw.Commit(ctx, v1.Descriptor{Digest: req.dgst, Size: n, MediaType: desc.MediaType}); err != nil {
		return fmt.Errorf("commit blob %s: %w", req.dgst, err)
	}
	committed = true
	return nil
}

// maxUnknownSize is the most a blob of unknown length (audit mode, no
// Content-Length) may be, and the size its deadline is set for.
const maxUnknownSize = 10 << 30

// fillBudget is the overall deadline of a download of size bytes (-1:
// unknown), counted from the upstream's answer.
func fillBudget(size int64, lim config.Limits) time.Duration {
	if size < 0 {
		size = maxUnknownSize
	}
	return lim.UpstreamTimeout + time.Duration(float64(size)/float64(lim.MinTransferRate)*float64(time.Second))
}

func (f *fill) start(size int64) {
	f.mu.Lock()
	f.size, f.started = size, true
	f.cond.Broadcast()
	f.mu.Unlock()
}

func (f *fill) progress(n int64) {
	f.mu.Lock()
	f.written = n
	f.cond.Broadcast()
	f.mu.Unlock()
}

func (f *fill) finish(err error) {
	f.mu.Lock()
	f.done, f.verified, f.err = true, err == nil, err
	f.cond.Broadcast()
	f.mu.Unlock()
}

// readable is how many spooled bytes a client may have: all once verified;
// before that, all but the last byte, so that no client ever holds a
// complete blob that turns out wrong. f.mu is held.
func (f *fill) readable() int64 {
	switch {
	case f.verified:
		return f.written
	case f.size > 0:
		return min(f.written, f.size-1)
	}
	return 0
}

// serve streams the fill to one client from its spool fd. Headers go out as
// soon as the upstream answers. If the fill fails after that, serve returns
// an *abortedError: the caller aborts the connection, so the client sees a
// truncated response, never a complete wrong one.
func (f *fill) serve(w http.ResponseWriter, r *http.Request, spool *os.File) error {
	ctx := r.Context()
	stop := context.AfterFunc(ctx, func() {
		f.mu.Lock()
		f.cond.Broadcast()
		f.mu.Unlock()
	})
	defer stop()

	f.mu.Lock()
	for !f.started && !f.done && ctx.Err() == nil {
		f.cond.Wait()
	}
	started, size, ferr := f.started, f.size, f.err
	f.mu.Unlock()
	if !started {
		if ferr == nil {
			ferr = ctx.Err()
		}
		return ferr
	}
	writeBlobHeaders(w, f.dgst, size)
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return nil
	}
	flusher, _ := w.(http.Flusher)
	var pos int64
	for {
		f.mu.Lock()
		for f.readable() <= pos && !f.done && ctx.Err() == nil {
			f.cond.Wait()
		}
		avail, done, verified := f.readable(), f.done, f.verified
		f.mu.Unlock()
		if ctx.Err() != nil {
			return errClientGone
		}
		if done && !verified {
			f.mu.Lock()
			ferr := f.err
			f.mu.Unlock()
			return &abortedError{ferr}
		}
		if avail > pos {
			k, err := io.Copy(w, io.NewSectionReader(spool, pos, avail-pos))
			pos += k
			if err != nil {
				return errClientGone // the fill goes on
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
		if done && pos >= avail {
			return nil
		}
	}
}
