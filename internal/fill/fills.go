package fill

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/cache"
	"github.com/trustproxy/trustproxy/internal/gun"
	"github.com/trustproxy/trustproxy/internal/upstream"
)

// Fills are the blob downloads of one process.
type Fills struct {
	spoolDir string
	limits   config.Limits
	log      *slog.Logger
	fetches  *prometheus.CounterVec // trustproxy_upstream_fetches_total{kind,result}
	peers    *peers                 // nil: fills are not shared between replicas
	// takeovers counts fill locks taken over from replicas that did not answer.
	takeovers prometheus.Counter

	mu       sync.Mutex
	fills    map[string]*fill // blob downloads under way, by gun.Name.At
	memFills int64            // bytes of the fills held in memory (smallBlob)
	closing  bool             // Close was called: no fill starts or is joined
	ctx      context.Context  // the parent of every fill's context (fills outlive requests); Close cancels it
	stop     context.CancelCauseFunc
	running  sync.WaitGroup // the fill goroutines
}

// New returns the fills of a process that spools under dataDir/spool,
// within lim. Spool files a stopped process left are removed. Fetches are
// counted on fetches (labels kind and result).
func New(dataDir string, lim config.Limits, fetches *prometheus.CounterVec, log *slog.Logger) (*Fills, error) {
	spool := filepath.Join(dataDir, "spool")
	if err := os.MkdirAll(spool, 0o700); err != nil {
		return nil, fmt.Errorf("spool directory: %w", err)
	}
	removeStaleSpool(spool, max(time.Hour, 2*lim.BlobIdleTimeout), log)
	ctx, stop := context.WithCancelCause(context.Background())
	return &Fills{spoolDir: spool, limits: lim, log: log, fetches: fetches,
		takeovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trustproxy_fill_lock_takeovers_total",
			Help: "Fill locks this replica took over from a replica that did not answer (it died mid-fill, or cannot be reached from here).",
		}),
		fills: map[string]*fill{}, ctx: ctx, stop: stop}, nil
}

// Share makes this process one replica of several on sh's Redis: a blob is
// fetched from the upstream by one replica at a time, and the others stream
// its fill from the replica at its URL self, dialled only inside networks
// (all addresses when none), and only over https under clientTLS when it
// is not nil (PeerTLS).
func (fs *Fills) Share(sh *cache.Shared, self string, networks []netip.Prefix, clientTLS *tls.Config) {
	fs.peers = newPeers(sh, self, networks, clientTLS, fs.limits)
}

// Collectors are the metrics of fs that its caller registers:
// trustproxy_fill_lock_takeovers_total.
func (fs *Fills) Collectors() []prometheus.Collector { return []prometheus.Collector{fs.takeovers} }

// A Blob is one blob to fill: the repository it was asked for in, its
// verified descriptor (Size -1 when unknown: audit mode), the upstream it is
// fetched from, and the storage it is committed to.
type Blob struct {
	Repository gun.Name
	Desc       v1.Descriptor
	From       *upstream.Registry
	Store      distribution.BlobStore
}

// Source says where Serve sent a blob from.
type Source string

const (
	FromUpstream Source = "upstream" // a fill of this replica
	FromPeer     Source = "peer"     // another replica's fill
)

// Errors of Serve that are not the upstream's.
var (
	// ErrClientGone is a client that left before its blob was sent; the
	// fill goes on for the others.
	ErrClientGone = errors.New("the client went away")
	// ErrClosing is a fill asked for once Close has begun.
	ErrClosing = errors.New("trustproxy is shutting down")
	// ErrStored says the blob is in storage now, as another replica's fill
	// ended: serve it from there.
	ErrStored = errors.New("the blob is stored")
)

// A MismatchError is an upstream's or peer's bytes that are not the blob:
// another digest, or another length than the verified one. Nothing was
// cached.
type MismatchError struct{ Detail string }

func (e *MismatchError) Error() string { return e.Detail }

// An AbortedError is a fill that failed after its client got headers and
// part of the body: the caller must abort the connection, so that the
// client can never take it for a complete one.
type AbortedError struct{ Err error }

func (e *AbortedError) Error() string { return e.Err.Error() }
func (e *AbortedError) Unwrap() error { return e.Err }

// peerWait bounds how long a replica waits for a live holder's fill to
// begin, asking again every peerRetry, before it fetches the blob itself.
const (
	peerWait  = 2 * time.Second
	peerRetry = 50 * time.Millisecond
)

// Serve streams b, which is not in storage, to the client of r: from the
// fill of another replica that holds its lock, or else from this
// replica's, joined or started. It returns where the bytes came from, or
// ErrStored when the blob turned up in storage meanwhile.
//
// A holder that is gone (holderGone: it died with its lock) is not waited
// for: this replica takes its lock over with a compare-and-set on the
// entry it read, removes the upload its fill left in the storage
// (cleanUpload), and fetches the blob; of several replicas that find it
// so at once, one takes the lock and the others stream its fill, so the
// blob is fetched once more, not once per replica. A holder that does not
// answer here but keeps its lock fresh is waited for at most peerWait,
// then this replica fetches the blob itself, leaving its fill alone.
func (fs *Fills) Serve(ctx context.Context, w http.ResponseWriter, r *http.Request, b Blob) (Source, error) {
	key := b.Repository.At(b.Desc.Digest)
	lease, holder := fs.lock(b)
	for deadline := time.Now().Add(peerWait); holder != nil; {
		err := fs.peers.stream(ctx, w, r, holder.URL, key, b.Desc.Digest, b.Desc.Size)
		if !errors.Is(err, errNoPeerFill) {
			return FromPeer, err
		}
		// The holder has no fill of it: it has ended (the blob is in
		// storage, or it failed), or it has not begun yet (the holder took
		// the lock a moment ago), or the holder does not answer.
		if _, serr := b.Store.Stat(ctx, b.Desc.Digest); serr == nil {
			return FromPeer, ErrStored
		}
		if holderGone(err, holder, time.Now()) {
			if lease = fs.peers.takeOver(key, holder); lease != nil {
				fs.takeovers.Inc()
				fs.log.Info("took over the fill lock of a replica that is gone", "repo", b.Repository.String(), "digest", b.Desc.Digest, "holder", holder.URL, "err", err)
				if holder.Note != "" {
					fs.cleanUpload(ctx, b, holder)
				}
				break
			}
			// Another replica took it over, or the holder refreshed it:
			// look again.
		}
		// Bounded by the clock, not by the retries: each may take a dial
		// or an upstream timeout.
		if time.Now().After(deadline) {
			fs.log.Debug("no fill on the lock holder; fetching here", "repo", b.Repository.String(), "digest", b.Desc.Digest, "holder", holder.URL, "err", err)
			lease = nil
			break
		}
		select {
		case <-time.After(peerRetry):
		case <-ctx.Done():
			return FromPeer, ctx.Err()
		}
		lease, holder = fs.lock(b)
	}
	f, spool, err := fs.join(b, lease)
	if err != nil {
		return FromUpstream, err
	}
	if spool != nil {
		defer spool.Close()
	}
	return FromUpstream, f.serve(w, r, spool)
}

// cleanUpload removes the upload that the fill of holder, a replica that
// is gone, left in b's repository (holder.Note, its upload's ID), instead
// of leaving it to the next replica to start. An upload that is no longer
// there (committed, or removed already) is nothing to do.
func (fs *Fills) cleanUpload(ctx context.Context, b Blob, holder *cache.LeaseEntry) {
	bw, err := b.Store.Resume(ctx, holder.Note)
	if errors.Is(err, distribution.ErrBlobUploadUnknown) {
		return
	}
	if err == nil {
		err = bw.Cancel(ctx)
	}
	if err != nil {
		fs.log.Warn("cannot remove the upload of a replica that stopped mid-fill; the next replica to start purges it", "repo", b.Repository.String(),
			"digest", b.Desc.Digest, "holder", holder.URL, "upload", holder.Note, "err", err)
		return
	}
	fs.log.Info("removed the upload of a replica that stopped mid-fill", "repo", b.Repository.String(), "digest", b.Desc.Digest, "holder", holder.URL, "upload", holder.Note)
}

// lock takes the cross-replica lock of b when replicas share Redis and no
// fill of this process has it: the lease when this replica is to fill it,
// or the entry of the replica that holds it (never this one). A blob of
// unknown length (audit mode) is filled here: a peer's stream is used only
// when the length to check it against is known.
func (fs *Fills) lock(b Blob) (*cache.Lease, *cache.LeaseEntry) {
	if fs.peers == nil || b.Desc.Size < 0 {
		return nil, nil
	}
	key := b.Repository.At(b.Desc.Digest)
	fs.mu.Lock()
	_, local := fs.fills[key]
	fs.mu.Unlock()
	if local {
		return nil, nil
	}
	lease, holder := fs.peers.acquire(key)
	if holder != nil && holder.URL == fs.peers.self {
		holder = nil // our own fill, just started or just ended: join or start one here
	}
	return lease, holder
}

// Filling says whether a fill of blob d, in any repository, is under way
// in this process: the storage collector leaves such a blob alone.
func (fs *Fills) Filling(d digest.Digest) bool {
	suffix := "@" + d.String()
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for key := range fs.fills {
		if strings.HasSuffix(key, suffix) {
			return true
		}
	}
	return false
}

// Close stops the fills: from its call on, Serve returns ErrClosing for a
// blob that would start or join one; every running fill is cancelled (its
// upload cancelled, nothing partial committed, its spool file removed) and
// Close waits for them to end, or for ctx, whose error it then returns.
func (fs *Fills) Close(ctx context.Context) error {
	fs.mu.Lock()
	fs.closing = true
	n := len(fs.fills)
	fs.mu.Unlock()
	fs.stop(ErrClosing)
	done := make(chan struct{})
	go func() {
		fs.running.Wait()
		close(done)
	}()
	select {
	case <-done:
		if n > 0 {
			fs.log.Info("blob fills cancelled", "fills", n)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("blob fills still running after cancellation: %w", context.Cause(ctx))
	}
}

// WriteHeaders writes the headers of blob dgst of size bytes (-1: unknown).
func WriteHeaders(w http.ResponseWriter, dgst digest.Digest, size int64) {
	h := w.Header()
	h.Set("Docker-Content-Digest", dgst.String())
	h.Set("ETag", `"`+dgst.String()+`"`)
	h.Set("Content-Type", "application/octet-stream")
	if size >= 0 {
		h.Set("Content-Length", strconv.FormatInt(size, 10))
	}
}

// removeStaleSpool deletes spool files left by a process that stopped
// mid-fill. A live fill writes at least once per blob_idle_timeout, so a
// file untouched for longer than age belongs to none (another process may
// share the data directory, so younger files stay).
func removeStaleSpool(dir string, age time.Duration, log *slog.Logger) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		log.Warn("cannot list the spool directory", "dir", dir, "err", err)
		return
	}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || time.Since(info.ModTime()) < age {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
			log.Warn("cannot remove a stale spool file", "file", e.Name(), "err", err)
		}
	}
}
