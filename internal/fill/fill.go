package fill

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/distribution/distribution/v3"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/cache"
	"github.com/trustproxy/trustproxy/internal/upstream"
)

// A fill is one download of a blob from an upstream into storage, however
// many clients ask for it. The download runs apart from any client: it
// completes when the client that started it goes away.
//
// A blob of more than smallBlob bytes (or of unknown length) goes to a spool
// file as it arrives. Its clients are sent the spooled bytes at once, each
// from its own file descriptor, and a
// second goroutine copies them from the spool into a distribution blob
// writer, which hashes them: the download waits for neither. A small blob is
// held in memory, hashed, and stored with one write; its clients get it whole.
//
// Either way a client never holds a complete blob that did not verify: the
// last byte of a spooled blob is released only once distribution's commit
// has checked the digest, and a small blob only once it hashed right and was
// stored. Nothing is committed unless it verified.
type fill struct {
	dgst digest.Digest
	path string // the spool file, removed when the fill ends (readers keep their fd); "" for a small blob
	// lease is this replica's cross-replica lock on the blob, released when
	// the fill ends; upload is the ID of its upload, recorded in the lease.
	// Both are guarded by Fills.mu.
	lease  *cache.Lease
	upload string

	mu        sync.Mutex
	cond      *sync.Cond
	size      int64 // expected length; -1 until known
	started   bool  // the upstream answered 200
	written   int64 // bytes received (spooled, or in mem)
	announced int64 // written when waiting goroutines were last woken
	received  bool  // the whole body is spooled: written is its length
	mem       []byte
	done      bool
	verified  bool
	err       error
}

// smallBlob is the largest blob held in memory rather than spooled; at most
// memFillBudget bytes of such blobs are held at once, beyond which small
// blobs are spooled too.
const (
	smallBlob     = 1 << 20
	memFillBudget = 32 << 20
)

// join returns the fill under way for b, or starts one, with the spool file
// opened for reading (nil for a blob held in memory). lease, when not
// nil, is this replica's cross-replica lock on b, released once the fill
// ends; the fill records its upload in it.
func (fs *Fills) join(b Blob, lease *cache.Lease) (*fill, *os.File, error) {
	key := b.Repository.At(b.Desc.Digest)
	// The lock is released or noted on Redis after fs.mu is: never a
	// network call under the lock every blob request takes.
	kept, note := false, ""
	defer func() {
		switch {
		case lease == nil:
		case !kept:
			lease.Release()
		case note != "":
			lease.SetNote(note)
		}
	}()
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.closing {
		return nil, nil, ErrClosing
	}
	if f, ok := fs.fills[key]; ok {
		// A fill of this process has it. It may have started without the
		// lock this request took (a request of this process that found the
		// lock just taken by this replica, over a dead holder's): it keeps
		// the lock then, so that the others stream its fill.
		if lease != nil && f.lease == nil {
			f.lease, kept, note = lease, true, f.upload
		}
		if f.path == "" {
			return f, nil, nil
		}
		spool, err := os.Open(f.path)
		return f, spool, err
	}
	desc := b.Desc
	f := &fill{dgst: desc.Digest, size: desc.Size, lease: lease}
	f.cond = sync.NewCond(&f.mu)
	var w, spool *os.File
	inMemory := desc.Size > 0 && desc.Size <= smallBlob && fs.memFills+desc.Size <= memFillBudget
	if inMemory {
		fs.memFills += desc.Size
	} else {
		var err error
		if w, err = os.CreateTemp(fs.spoolDir, "blob-*"); err != nil {
			return nil, nil, fmt.Errorf("spool blob: %w", err)
		}
		if spool, err = os.Open(w.Name()); err != nil {
			w.Close()
			os.Remove(w.Name())
			return nil, nil, fmt.Errorf("spool blob: %w", err)
		}
		f.path = w.Name()
	}
	fs.fills[key] = f
	kept = true
	fs.running.Go(func() {
		err := fs.run(b, f, w)
		fs.mu.Lock()
		delete(fs.fills, key)
		if inMemory {
			fs.memFills -= desc.Size
		}
		l := f.lease
		fs.mu.Unlock()
		if l != nil {
			l.Release() // after the commit: a replica that then finds no lock finds the blob
		}
		if w != nil {
			w.Close()
			os.Remove(w.Name())
		}
		// Each client's request logs its own decision on the outcome.
		if err != nil {
			fs.log.Warn("blob fetch failed", "repo", b.Repository.String(), "digest", desc.Digest, "err", err)
		}
		f.finish(err)
	})
	return f, spool, nil
}

// run downloads the blob into spool (nil: into f.mem) and storage. It
// returns nil only when the blob verified and was committed. Close cancels
// it. The upload's ID goes into the fill's lease: a replica that takes the
// lock over from this one, dead, removes the upload.
func (fs *Fills) run(b Blob, f *fill, spool *os.File) (err error) {
	ctx, cancel := context.WithCancelCause(fs.ctx)
	defer cancel(nil)
	lim := fs.limits
	desc, blobs, dgst := b.Desc, b.Store, b.Desc.Digest
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
			if _, ok := errors.AsType[*MismatchError](err); ok {
				result = "mismatch"
			}
		}
		fs.fetches.WithLabelValues("blob", result).Inc()
	}()

	resp, err := b.From.Get(ctx, b.Repository.Path(), "blobs", dgst.String(), nil, "")
	if err != nil {
		if c := context.Cause(ctx); c != nil {
			return upstream.Unavailable(fmt.Errorf("blob %s from %s: %w", dgst, b.From.Name(), c))
		}
		return err
	}
	defer resp.Body.Close()
	idle.Reset(lim.BlobIdleTimeout)

	size := desc.Size
	if size < 0 {
		size = resp.ContentLength
	}
	budget := Budget(size, lim)
	deadline := time.AfterFunc(budget, func() {
		cancel(fmt.Errorf("the download took longer than its deadline of %s (limits.upstream_timeout + size / limits.min_transfer_rate)", budget))
	})
	defer deadline.Stop()
	mismatch := func(detail string) error { return &MismatchError{detail} }
	if size >= 0 && resp.ContentLength >= 0 && resp.ContentLength != size {
		return mismatch(fmt.Sprintf("the upstream announced %d bytes, the verified manifest says %d", resp.ContentLength, size))
	}
	body := &fillBody{r: resp.Body, ctx: ctx, idle: idle, timeout: lim.BlobIdleTimeout, size: size, blob: b, mismatch: mismatch}
	if spool == nil {
		return fillSmall(ctx, blobs, desc, f, body)
	}

	bw, err := blobs.Create(ctx)
	if err != nil {
		return fmt.Errorf("create blob writer: %w", err)
	}
	fs.mu.Lock()
	f.upload = bw.ID()
	lease := f.lease
	fs.mu.Unlock()
	if lease != nil {
		lease.SetNote(bw.ID())
	}
	committed := false
	defer func() {
		if !committed {
			_ = bw.Cancel(context.WithoutCancel(ctx))
		}
	}()
	f.start(size)
	stored := make(chan error, 1)
	v := dgst.Verifier()
	go func() {
		err := f.store(ctx, io.MultiWriter(bw, v))
		if err != nil {
			cancel(err) // the download stops too
		}
		stored <- err
	}()
	n, err := body.spool(f, spool)
	if err != nil {
		cancel(err)
		<-stored
		return err
	}
	if err := <-stored; err != nil {
		return err
	}
	// Commit checks the digest too, but only after the driver's writer is
	// committed, which its Cancel then cannot undo: a refused commit leaves
	// its upload behind (on S3 the wrong bytes, an object under _uploads)
	// until the next start's purge. Checked here, the upload is cancelled.
	if !v.Verified() {
		return mismatch(fmt.Sprintf("the upstream's %d bytes do not hash to the digest asked for; nothing was cached", n))
	}
	// distribution's blob writer hashed every byte it was given, which are
	// the bytes the clients were sent: Commit refuses a digest or length
	// other than the one asked for, and then nothing is stored.
	if _, err := bw.Commit(ctx, v1.Descriptor{Digest: dgst, Size: n, MediaType: desc.MediaType}); err != nil {
		if errors.As(err, new(distribution.ErrBlobInvalidDigest)) || errors.Is(err, distribution.ErrBlobInvalidLength) {
			return mismatch(fmt.Sprintf("the upstream's %d bytes do not hash to the digest asked for; nothing was cached", n))
		}
		return fmt.Errorf("commit blob %s: %w", dgst, err)
	}
	committed = true
	return nil
}

// fillBody reads an upstream's blob response, bounding it by the expected
// size and keeping the fill's idle timer going.
type fillBody struct {
	r        io.Reader
	ctx      context.Context
	idle     *time.Timer
	timeout  time.Duration
	size     int64 // -1: unknown
	n        int64
	blob     Blob
	mismatch func(string) error
}

// read reads into b, checking what has arrived against the size; it
// returns io.EOF at the end.
func (b *fillBody) read(p []byte) (int, error) {
	k, err := b.r.Read(p)
	if k > 0 {
		b.idle.Reset(b.timeout)
		b.n += int64(k)
		if b.size >= 0 && b.n > b.size {
			return 0, b.mismatch(fmt.Sprintf("the upstream sent more than the %d bytes the verified manifest says", b.size))
		}
		if b.n > maxUnknownSize {
			return 0, fmt.Errorf("the upstream sent more than %d bytes for a blob of unknown length", int64(maxUnknownSize))
		}
	}
	if err != nil && err != io.EOF {
		if c := context.Cause(b.ctx); c != nil {
			err = c
		}
		return k, upstream.Unavailable(fmt.Errorf("read blob %s from %s after %d bytes: %w", b.blob.Desc.Digest, b.blob.From.Name(), b.n, err))
	}
	return k, err
}

// short is the refusal of a body that ended before its announced length.
func (b *fillBody) short() error {
	if b.size >= 0 && b.n != b.size {
		return b.mismatch(fmt.Sprintf("the upstream sent %d bytes, the verified manifest says %d; nothing was cached", b.n, b.size))
	}
	return nil
}

// spool writes the body to the spool file, telling f's clients and its
// storage writer of every byte as it lands, and returns its length.
func (b *fillBody) spool(f *fill, spool *os.File) (int64, error) {
	buf := make([]byte, fillBuffer)
	for {
		k, err := b.read(buf)
		if k > 0 {
			if _, werr := spool.Write(buf[:k]); werr != nil {
				return b.n, fmt.Errorf("write blob spool: %w", werr)
			}
			f.progress(b.n, false)
		}
		if err == io.EOF {
			if err := b.short(); err != nil {
				return b.n, err
			}
			f.progress(b.n, true)
			return b.n, nil
		}
		if err != nil {
			return b.n, err
		}
	}
}

// fillBuffer is the most a fill reads from the upstream, or copies from
// its spool into storage, at a time.
const fillBuffer = 1 << 20

// store copies the spooled bytes into bw as they land, from its own file
// descriptor, until the whole body is stored or ctx ends.
func (f *fill) store(ctx context.Context, bw io.Writer) error {
	r, err := os.Open(f.path)
	if err != nil {
		return fmt.Errorf("read blob spool: %w", err)
	}
	defer r.Close()
	stop := context.AfterFunc(ctx, f.wake)
	defer stop()
	buf := make([]byte, fillBuffer)
	var pos int64
	for {
		f.mu.Lock()
		for f.written <= pos && !f.received && ctx.Err() == nil {
			f.cond.Wait()
		}
		avail, end := f.written, f.received
		f.mu.Unlock()
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		for pos < avail {
			k, err := r.ReadAt(buf[:min(int64(len(buf)), avail-pos)], pos)
			if k > 0 {
				if _, werr := bw.Write(buf[:k]); werr != nil {
					return fmt.Errorf("write blob to storage: %w", werr)
				}
				pos += int64(k)
			}
			if err != nil && err != io.EOF {
				return fmt.Errorf("read blob spool: %w", err)
			}
		}
		if end && pos >= avail {
			return nil
		}
	}
}

// fillSmall reads a small blob into f.mem, checks its digest and stores it
// with one write.
func fillSmall(ctx context.Context, blobs distribution.BlobStore, desc v1.Descriptor, f *fill, body *fillBody) error {
	buf := make([]byte, desc.Size+1) // one byte more: a longer body is refused by read
	var n int
	for {
		k, err := body.read(buf[n:])
		n += k
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if err := body.short(); err != nil {
		return err
	}
	buf = buf[:n]
	if got := digest.SHA256.FromBytes(buf); got != f.dgst {
		return body.mismatch(fmt.Sprintf("the upstream's blob hashes to %s (%d bytes); nothing was cached", got, n))
	}
	if _, err := blobs.Put(ctx, desc.MediaType, buf); err != nil {
		return fmt.Errorf("store blob %s: %w", f.dgst, err)
	}
	f.mu.Lock()
	f.size, f.started, f.mem, f.written, f.received = int64(n), true, buf, int64(n), true
	f.mu.Unlock()
	return nil
}

// maxUnknownSize is the most a blob of unknown length (audit mode, no
// Content-Length) may be, and the size its deadline is set for.
const maxUnknownSize = 10 << 30

// Budget is the overall deadline of a download of size bytes (-1:
// unknown), counted from the upstream's answer.
func Budget(size int64, lim config.Limits) time.Duration {
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

// progress records that n bytes have landed. Waiting clients are woken
// every sendBatch bytes and at the end, not at every read: with many
// clients each wake-up costs a copy and a write per client.
func (f *fill) progress(n int64, received bool) {
	f.mu.Lock()
	f.written, f.received = n, received
	if received || n-f.announced >= sendBatch || n == f.size {
		f.announced = n
		f.cond.Broadcast()
	}
	f.mu.Unlock()
}

// sendBatch is how many new bytes wake a fill's clients, and sendBuffer
// what each client copies them through. Copying measured faster than
// sendfile from the spool for fifty clients on loopback (10 s against 12 to
// 14 s for 50 × 256 MiB) and the same for one; a larger buffer, slightly
// faster, cost fifty clients 30 MiB more.
const (
	sendBatch  = 256 << 10
	sendBuffer = 64 << 10
)

func (f *fill) finish(err error) {
	f.mu.Lock()
	f.done, f.verified, f.err = true, err == nil, err
	f.cond.Broadcast()
	f.mu.Unlock()
}

// wake wakes every goroutine waiting on f, to look at its context.
func (f *fill) wake() {
	f.mu.Lock()
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

// writerOnly hides a ResponseWriter's ReadFrom from io.CopyBuffer, which
// would otherwise copy through net/http's own 32 KiB buffer, not buf.
type writerOnly struct{ io.Writer }

// serve streams the fill to one client: from spool, its own descriptor of
// the spool file, or, for a small blob (spool nil), from memory once it
// verified. Headers go out as soon as the upstream answers. If the fill
// fails after that, serve returns an *AbortedError: the caller aborts the
// connection, so the client sees a truncated response, never a complete
// wrong one.
func (f *fill) serve(w http.ResponseWriter, r *http.Request, spool *os.File) error {
	ctx := r.Context()
	stop := context.AfterFunc(ctx, f.wake)
	defer stop()

	f.mu.Lock()
	for (spool == nil || !f.started) && !f.done && ctx.Err() == nil {
		f.cond.Wait()
	}
	started, size, ferr, mem := f.started, f.size, f.err, f.mem
	if spool == nil && !f.verified {
		started = false
	}
	f.mu.Unlock()
	if !started {
		if ferr == nil {
			ferr = ctx.Err()
		}
		return ferr
	}
	WriteHeaders(w, f.dgst, size)
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return nil
	}
	flusher, _ := w.(http.Flusher)
	if spool != nil && flusher != nil {
		// Headers now, not with the first body bytes: a client's response
		// header timeout (containerd's is 30 s) must not depend on how long
		// the upstream takes to send the body.
		flusher.Flush()
	}
	if spool == nil {
		if _, err := w.Write(mem); err != nil {
			return ErrClientGone
		}
		return nil
	}
	var pos int64
	var buf []byte
	for {
		f.mu.Lock()
		for f.readable() <= pos && !f.done && ctx.Err() == nil {
			f.cond.Wait()
		}
		avail, done, verified := f.readable(), f.done, f.verified
		f.mu.Unlock()
		if ctx.Err() != nil {
			return ErrClientGone
		}
		if done && !verified {
			f.mu.Lock()
			ferr := f.err
			f.mu.Unlock()
			return &AbortedError{ferr}
		}
		if avail > pos {
			if buf == nil {
				buf = make([]byte, sendBuffer)
			}
			k, err := io.CopyBuffer(writerOnly{w}, io.NewSectionReader(spool, pos, avail-pos), buf)
			pos += k
			if err != nil {
				return ErrClientGone // the fill goes on
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
