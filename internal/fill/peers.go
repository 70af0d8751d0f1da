package fill

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/redis/go-redis/v9"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/cache"
)

// peers makes one upstream fetch per blob across replicas. A replica about
// to fill a cold blob takes its lock on Redis; one that finds the lock
// taken streams the fill in progress from the holder (its replica_url),
// through /internal/fills/, authenticated by an HMAC under the peers' key
// (derived from the state key, never stored on Redis). The holder serves it
// as it serves its own clients: the last bytes held back until the digest
// verifies, the connection aborted if it does not. A holder that dies stops
// refreshing its lock, which expires after fillLockTTL; the next request
// takes it.
//
// The lock names a URL this replica will connect to, so it is sealed with
// the state key, carries its own end (a replayed old lock names no one),
// and the URL is dialled only inside redis.peer_networks when that is set.
// A lock that is not genuine is ignored: the replica fills the blob itself.
// A peer's stream is bounded as an upstream's is (response headers within
// limits.upstream_timeout, each read within limits.blob_idle_timeout, the
// whole within the size's deadline), and used only when the blob's length
// is known from its verified manifest.
//
// With peer TLS (redis.peer_tls) the holder is dialled only over https,
// its certificate checked against the cluster CA, this replica presenting
// its own: a fill in progress is then neither readable nor forgeable on the
// network, and a holder URL that is not https:// is not followed.
type peers struct {
	*cache.Shared
	self   string // this replica's URL, as the others reach it
	key    []byte
	limits config.Limits
	client *http.Client
	tls    bool // peers are dialled only over https, under the cluster CA
}

const (
	// fillLockTTL is how long a fill lock outlives its holder's last refresh.
	fillLockTTL = 15 * time.Second
	// peerTokenTTL bounds a peer request's token.
	peerTokenTTL = time.Minute
)

// errNoPeerFill says the holder has no fill of that blob (not yet, or not
// any more); errPeerUnreachable, which wraps it, that the holder did not
// answer at all (it may have died).
// errPeerDown, which wraps errPeerUnreachable, that nothing took the
// connection at its address (its process is gone, or its pod).
var (
	errNoPeerFill      = errors.New("the replica holding the fill lock has no such fill")
	errPeerUnreachable = fmt.Errorf("%w: it does not answer", errNoPeerFill)
	errPeerDown        = fmt.Errorf("%w: nothing takes connections at its address", errPeerUnreachable)
	// errOutsidePeers is a holder's address outside redis.peer_networks.
	errOutsidePeers = errors.New("the peer address is outside redis.peer_networks")
)

// newPeers returns the peers of the replica at self, which reaches the
// others only inside networks (all addresses when none).
func newPeers(sh *cache.Shared, self string, networks []netip.Prefix, clientTLS *tls.Config, lim config.Limits) *peers {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil // on the cluster network, never through a proxy
	tr.ResponseHeaderTimeout = lim.UpstreamTimeout
	tr.TLSClientConfig = clientTLS
	if len(networks) > 0 {
		d := &net.Dialer{Timeout: 5 * time.Second, Control: func(_, address string, _ syscall.RawConn) error {
			host, _, _ := net.SplitHostPort(address)
			ip, err := netip.ParseAddr(host)
			if err != nil || !slices.ContainsFunc(networks, func(n netip.Prefix) bool { return n.Contains(ip.Unmap()) }) {
				return fmt.Errorf("%w: %s", errOutsidePeers, address)
			}
			return nil
		}}
		tr.DialContext = d.DialContext
	}
	return &peers{Shared: sh, self: self, key: sh.Derive("trustproxy peer key"), limits: lim, tls: clientTLS != nil,
		client: &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// lockKey is the Redis key of the lock of the fill of blob (gun.Name.At).
func (p *peers) lockKey(blob string) string { return p.Key("fill:" + blob) }

// fillLock is a lock's sealed value (a cache.LeaseEntry): who holds it,
// until when, and the upload of its fill (Note).
type fillLock struct {
	URL   string    `json:"url"`
	Owner string    `json:"owner"`
	Until time.Time `json:"until"`
}

// acquire tries to become the one replica that fills blob (gun.Name.At):
// the lease when this replica holds the lock (release it when the fill
// ends), or the entry of the replica that holds it. Neither when Redis is
// unreachable: the replica fills on its own. A lock that is not genuine,
// or is over, is replaced (cache.Shared.Acquire).
func (p *peers) acquire(blob string) (*cache.Lease, *cache.LeaseEntry) {
	l, holder := p.Acquire(cache.KindLock, p.lockKey(blob), p.self, fillLockTTL)
	if holder != nil && holder.URL == "" {
		return nil, nil // a genuine lock that names no one to ask: fill alone
	}
	return l, holder
}

// takeOver takes the lock of blob from the holder whose entry was read as
// was, if it still holds exactly that (compare-and-set): of the replicas
// that find a holder dead, one takes its lock and fetches the blob; the
// others then find it as the holder, and stream its fill.
func (p *peers) takeOver(blob string, was *cache.LeaseEntry) *cache.Lease {
	return p.TakeOver(cache.KindLock, p.lockKey(blob), was, p.self, fillLockTTL)
}

// maxLocksScanned bounds the fill locks LockedDigests reads: keys planted
// beyond it cost a collection nothing more than the scan.
const maxLocksScanned = 100_000

// LockedDigests returns the digests of the blobs that some replica sharing
// sh holds a live fill lock for, in any repository: the storage collector
// leaves them alone. A lock that is not sealed for its key, or is over, is
// ignored: a Redis writer can neither hide a genuine lock's digest (short
// of deleting it, when the collector's other checks still hold) nor add
// one beyond replaying a genuine lock within its end. An error says Redis
// did not answer: the caller must not assume no fill is under way.
func LockedDigests(ctx context.Context, sh *cache.Shared) (map[digest.Digest]bool, error) {
	out := map[digest.Digest]bool{}
	prefix := sh.Key("fill:")
	n := 0
	scan := func(ctx context.Context, c redis.Cmdable) error {
		iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for ; iter.Next(ctx) && n < maxLocksScanned; n++ {
			key := iter.Val()
			at := strings.LastIndexByte(key, '@')
			if at < 0 {
				continue
			}
			d, err := digest.Parse(key[at+1:])
			if err != nil {
				continue
			}
			// Read, not Get: a lock Redis did not answer for is an error,
			// not a lock that is not there
			sealed, err := sh.Read(ctx, c, cache.KindLock, key, 4096)
			if err != nil {
				return fmt.Errorf("read fill lock %s: %w", key, err)
			}
			b, _ := sh.Open(cache.KindLock, key, sealed)
			var l fillLock
			if b == nil || json.Unmarshal(b, &l) != nil || !time.Now().Before(l.Until) {
				continue
			}
			out[d] = true
		}
		return iter.Err()
	}
	// SCAN reads one node: in a Cluster, each master holds its own slots'
	// locks, and one scanned alone would miss the others'.
	if cc, ok := sh.Redis.(*redis.ClusterClient); ok {
		var mu sync.Mutex
		err := cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			mu.Lock()
			defer mu.Unlock()
			return scan(ctx, m)
		})
		return out, err
	}
	return out, scan(ctx, sh.Redis)
}

// token authenticates a request for the fill of blob until exp.
func (p *peers) token(blob string, exp int64) string {
	m := hmac.New(sha256.New, p.key)
	fmt.Fprintf(m, "fill\n%s\n%d", blob, exp)
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// stream serves blob (gun.Name.At), of digest d and size bytes (its verified manifest's)
// that the replica at holder is filling, to w. Nothing is written to w
// before the holder answers 200 with that length; errNoPeerFill when it
// has no such fill, or announces another length. The bytes are checked here
// as the holder checks its upstream's: the last byte is held back until
// they hash to d, and the stream is bounded as an upstream fetch is (an
// idle timeout between reads, a deadline for the whole). A stream that
// ends short, wrong or late is an *AbortedError: the caller aborts the
// connection, so the client never holds a complete wrong blob.
func (p *peers) stream(ctx context.Context, w http.ResponseWriter, r *http.Request, holder, blob string, d digest.Digest, size int64) error {
	if size < 0 {
		return fmt.Errorf("%w: the blob's length is not known", errNoPeerFill)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	lim := p.limits
	deadline := time.AfterFunc(Budget(size, lim), func() {
		cancel(errors.New("the peer's stream took longer than its deadline (limits.upstream_timeout + size / limits.min_transfer_rate)"))
	})
	defer deadline.Stop()
	if p.tls && !strings.HasPrefix(holder, "https://") {
		return fmt.Errorf("%w: %s is not an https:// URL, and peers are reached only over TLS (redis.peer_tls)", errPeerUnreachable, holder)
	}
	exp := time.Now().Add(peerTokenTTL).Unix()
	u := holder + "/internal/fills?" + url.Values{"blob": {blob}, "exp": {strconv.FormatInt(exp, 10)}}.Encode()
	req, err := http.NewRequestWithContext(ctx, r.Method, u, nil)
	if err != nil {
		return fmt.Errorf("%w: %v", errPeerUnreachable, err)
	}
	req.Header.Set("Authorization", "Bearer "+p.token(blob, exp))
	resp, err := p.client.Do(req)
	if err != nil {
		if down(err) {
			return fmt.Errorf("%w: %v", errPeerDown, err)
		}
		return fmt.Errorf("%w: %v", errPeerUnreachable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusForbidden {
		// The holder does not take this replica's requests (another peer
		// key, or a version that speaks otherwise): not waited for.
		return fmt.Errorf("%w: %s refused the request (%s)", errPeerUnreachable, holder, resp.Status)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: %s answered %s", errNoPeerFill, holder, resp.Status)
	}
	if resp.ContentLength != size || size <= 0 {
		return fmt.Errorf("%w: %s announced %d bytes, the verified manifest says %d", errNoPeerFill, holder, resp.ContentLength, size)
	}
	WriteHeaders(w, d, size)
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return nil
	}
	if fl, ok := w.(http.Flusher); ok {
		fl.Flush() // the headers now, as for an upstream's fill
	}
	hold := &holdBack{w: flushWriter{w}}
	idle := time.AfterFunc(lim.BlobIdleTimeout, func() {
		cancel(errors.New("the peer made no progress within limits.blob_idle_timeout"))
	})
	defer idle.Stop()
	h := d.Algorithm().Digester()
	body := &idleReader{r: io.LimitReader(resp.Body, size+1), idle: idle, timeout: lim.BlobIdleTimeout}
	n, err := io.Copy(io.MultiWriter(h.Hash(), hold), body)
	if c := context.Cause(ctx); err != nil && c != nil {
		err = c
	}
	if err != nil || n != size || h.Digest() != d {
		return &AbortedError{fmt.Errorf("the fill on %s ended after %d of %d bytes, hashing to %s: %v", holder, n, size, h.Digest(), err)}
	}
	return hold.release()
}

// down says whether err is a dial that the holder's host refused: its
// address is up and nothing listens at the port, so its process is gone.
// A dial that timed out or found no route says less (a partition, a
// NetworkPolicy, a flood at the peer port): holderGone then asks the lock.
func down(err error) bool {
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "dial" || errors.Is(err, errOutsidePeers) {
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// holderGone decides whether the holder of a fill lock, asked for its fill
// with the outcome err, is gone: then its lock is taken over and the
// upload it left is removed. It is when nothing takes connections at its
// address (errPeerDown), or when it does not answer and its lock has
// missed a refresh (a live holder rewrites it every fillLockTTL/3; a
// second is left for clocks that differ). A holder that does not answer
// here but keeps its lock fresh is alive, only not reachable from this
// replica: its fill goes on, and this replica fetches the blob itself.
func holderGone(err error, holder *cache.LeaseEntry, now time.Time) bool {
	if errors.Is(err, errPeerDown) {
		return true
	}
	return errors.Is(err, errPeerUnreachable) && holder.Until.Sub(now) < fillLockTTL-fillLockTTL/3-time.Second
}

// idleReader resets an idle timer at every read that gives bytes.
type idleReader struct {
	r       io.Reader
	idle    *time.Timer
	timeout time.Duration
}

func (i *idleReader) Read(b []byte) (int, error) {
	n, err := i.r.Read(b)
	if n > 0 {
		i.idle.Reset(i.timeout)
	}
	return n, err
}

// holdBack writes everything but the last byte written to it, until
// release: a client never has a whole blob before it is checked.
type holdBack struct {
	w       io.Writer
	last    byte
	pending bool
}

func (h *holdBack) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if h.pending {
		if _, err := h.w.Write([]byte{h.last}); err != nil {
			return 0, err
		}
	}
	if _, err := h.w.Write(b[:len(b)-1]); err != nil {
		return 0, err
	}
	h.last, h.pending = b[len(b)-1], true
	return len(b), nil
}

func (h *holdBack) release() error {
	if !h.pending {
		return nil
	}
	_, err := h.w.Write([]byte{h.last})
	return err
}

// flushWriter flushes after every write, so that a peer's bytes reach the
// client as they arrive.
type flushWriter struct{ w http.ResponseWriter }

func (f flushWriter) Write(b []byte) (int, error) {
	n, err := f.w.Write(b)
	if fl, ok := f.w.(http.Flusher); ok {
		fl.Flush()
	}
	return n, err
}

// ServePeer answers another replica's request for a fill in progress
// here: GET /internal/fills?blob=&exp= with the peers' token.
func (fs *Fills) ServePeer(w http.ResponseWriter, r *http.Request) {
	p := fs.peers
	q := r.URL.Query()
	blob, exp := q.Get("blob"), q.Get("exp")
	e, eerr := strconv.ParseInt(exp, 10, 64)
	got, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if p == nil || eerr != nil || time.Now().Unix() > e || !hmac.Equal([]byte(got), []byte(p.token(blob, e))) {
		http.Error(w, "not a peer replica's request", http.StatusForbidden)
		return
	}
	fs.mu.Lock()
	f, ok := fs.fills[blob]
	var spool *os.File
	var err error
	if ok && f.path != "" {
		spool, err = os.Open(f.path)
	}
	fs.mu.Unlock()
	if !ok || err != nil {
		http.NotFound(w, r)
		return
	}
	if spool != nil {
		defer spool.Close()
	}
	err = f.serve(w, r, spool)
	if _, ok := errors.AsType[*AbortedError](err); ok {
		panic(http.ErrAbortHandler)
	}
	if err != nil && !errors.Is(err, ErrClientGone) {
		// The fill failed before it started: no headers went out yet.
		http.Error(w, "the fill failed: "+err.Error(), http.StatusBadGateway)
	}
}
