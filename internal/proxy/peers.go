package proxy

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/opencontainers/go-digest"
	"github.com/redis/go-redis/v9"

	"github.com/trustproxy/trustproxy/internal/cache"
)

// peers makes one upstream fetch per blob across replicas. A replica about
// to fill a cold blob takes its lock on Redis; one that finds the lock
// taken streams the fill in progress from the holder (its replica_url),
// through /internal/fills/, authenticated by an HMAC under a key the
// replicas share on Redis. The holder serves it as it serves its own
// clients: the last bytes held back until the digest verifies, the
// connection aborted if it does not. A holder that dies stops refreshing
// its lock, which expires after fillLockTTL; the next request takes it.
type peers struct {
	rdb    redis.UniversalClient
	prefix string
	self   string // this replica's URL, as the others reach it
	key    []byte
	health *cache.RedisHealth
	client *http.Client
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
var (
	errNoPeerFill      = errors.New("the replica holding the fill lock has no such fill")
	errPeerUnreachable = fmt.Errorf("%w: it does not answer", errNoPeerFill)
)

// peerWait bounds how long a replica waits for a live holder's fill to
// begin, asking again every peerRetry, before it fetches the blob itself.
const (
	peerWait  = 2 * time.Second
	peerRetry = 50 * time.Millisecond
)

func (p *peers) lockKey(gun string, d digest.Digest) string {
	return p.prefix + "fill:" + gun + "@" + d.String()
}

// releaseIfOwner deletes a lock that still holds this owner's value.
var releaseIfOwner = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`)

// refreshIfOwner extends a lock that still holds this owner's value.
var refreshIfOwner = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0`)

// acquire tries to become the one replica that fills gun@d. It returns a
// release func when this replica holds the lock (call it when the fill
// ends), or the URL of the replica that holds it. With Redis unreachable it
// returns neither: the replica fills on its own.
func (p *peers) acquire(gun string, d digest.Digest) (release func(), holder string) {
	if p.health.Skip() {
		return nil, ""
	}
	key := p.lockKey(gun, d)
	owner := p.self + " " + uuid.NewString()
	ctx, cancel := context.WithTimeout(context.Background(), cache.RedisTimeout)
	defer cancel()
	ok, err := p.rdb.SetNX(ctx, key, owner, fillLockTTL).Result()
	if p.health.Failed(err) {
		return nil, ""
	}
	if !ok {
		v, err := p.rdb.Get(ctx, key).Result()
		if p.health.Failed(err) || err != nil {
			return nil, ""
		}
		holder, _, _ = strings.Cut(v, " ")
		return nil, holder
	}
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(fillLockTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				ctx, cancel := context.WithTimeout(context.Background(), cache.RedisTimeout)
				p.health.Failed(refreshIfOwner.Run(ctx, p.rdb, []string{key}, owner, fillLockTTL.Milliseconds()).Err())
				cancel()
			}
		}
	}()
	return func() {
		close(stop)
		ctx, cancel := context.WithTimeout(context.Background(), cache.RedisTimeout)
		defer cancel()
		p.health.Failed(releaseIfOwner.Run(ctx, p.rdb, []string{key}, owner).Err())
	}, ""
}

// token authenticates a request for the fill of gun@d until exp.
func (p *peers) token(gun string, d digest.Digest, exp int64) string {
	m := hmac.New(sha256.New, p.key)
	fmt.Fprintf(m, "fill\n%s\n%s\n%d", gun, d, exp)
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// stream serves the blob gun@d that the replica at holder is filling, to
// w. Nothing is written to w before the holder answers 200; errNoPeerFill
// when it has no such fill. The bytes are checked here as the holder checks
// its upstream's: the length must be size (the verified manifest's, when
// known), and the last byte is held back until they hash to d. A stream
// that ends short or wrong is an *abortedError: the caller aborts the
// connection, so the client never holds a complete wrong blob.
func (p *peers) stream(ctx context.Context, w http.ResponseWriter, r *http.Request, holder, gun string, d digest.Digest, size int64) error {
	exp := time.Now().Add(peerTokenTTL).Unix()
	u := holder + "/internal/fills?" + url.Values{"gun": {gun}, "digest": {d.String()}, "exp": {strconv.FormatInt(exp, 10)}}.Encode()
	req, err := http.NewRequestWithContext(ctx, r.Method, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+p.token(gun, d, exp))
	resp, err := p.client.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %v", errPeerUnreachable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: %s answered %s", errNoPeerFill, holder, resp.Status)
	}
	announced, err := strconv.ParseInt(resp.Header.Get("Content-Length"), 10, 64)
	if err != nil || (size >= 0 && announced != size) || announced <= 0 {
		return fmt.Errorf("%w: %s announced %q bytes, the verified manifest says %d", errNoPeerFill, holder, resp.Header.Get("Content-Length"), size)
	}
	writeBlobHeaders(w, d, announced)
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return nil
	}
	h := d.Algorithm().Digester()
	hold := &holdBack{w: flushWriter{w}}
	n, err := io.Copy(io.MultiWriter(h.Hash(), hold), io.LimitReader(resp.Body, announced+1))
	if err != nil || n != announced || h.Digest() != d {
		return &abortedError{fmt.Errorf("the fill on %s ended after %d of %d bytes, hashing to %s: %v", holder, n, announced, h.Digest(), err)}
	}
	return hold.release()
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

// servePeerFill answers another replica's request for a fill in progress
// here: GET /internal/fills?gun=&digest=&exp= with the peers' token.
func (s *Server) servePeerFill(w http.ResponseWriter, r *http.Request) {
	p := s.peers
	q := r.URL.Query()
	gun, exp := q.Get("gun"), q.Get("exp")
	d, derr := digest.Parse(q.Get("digest"))
	e, eerr := strconv.ParseInt(exp, 10, 64)
	got, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if p == nil || derr != nil || eerr != nil || time.Now().Unix() > e ||
		!hmac.Equal([]byte(got), []byte(p.token(gun, d, e))) {
		http.Error(w, "not a peer replica's request", http.StatusForbidden)
		return
	}
	s.fillMu.Lock()
	f, ok := s.fills[gun+"@"+d.String()]
	var spool *os.File
	var err error
	if ok && f.path != "" {
		spool, err = os.Open(f.path)
	}
	s.fillMu.Unlock()
	if !ok || err != nil {
		http.NotFound(w, r)
		return
	}
	if spool != nil {
		defer spool.Close()
	}
	err = f.serve(w, r, spool)
	if _, ok := errors.AsType[*abortedError](err); ok {
		panic(http.ErrAbortHandler)
	}
	if err != nil && !errors.Is(err, errClientGone) {
		// The fill failed before it started: no headers went out yet.
		http.Error(w, "the fill failed: "+err.Error(), http.StatusBadGateway)
	}
}
