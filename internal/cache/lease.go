package cache

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
)

// A LeaseEntry is the sealed content of a lease on Redis: who holds it
// (Owner, and URL, where the other replicas reach the holder), until when,
// and Note, what the holder is doing that a successor may have to undo (a
// fill's upload); Done, that the holder finished and keeps the lease until
// Until so that the others skip what it did (ReleaseFor). A lease names its
// holder only until Until: a holder that dies stops refreshing it, and a
// replayed old entry names no one.
type LeaseEntry struct {
	URL   string    `json:"url,omitempty"`
	Owner string    `json:"owner"`
	Until time.Time `json:"until"`
	Note  string    `json:"note,omitempty"`
	Done  bool      `json:"done,omitempty"`

	raw string // the sealed value it was read as: TakeOver swaps it
}

// maxLease is the most a lease entry may be, sealed payload.
const maxLease = 4096

// leaseRead is the most Read takes as a lease entry (maxLease, sealed):
// a string over it is no entry, and is replaced.
const leaseRead = maxLease + 1 + sha256.Size

// swapLease replaces KEYS[1] with ARGV[2] for ARGV[3] ms when it still
// holds ARGV[1], or, when ARGV[1] is "", when it holds nothing a replica
// would read as a lease: no key, another type, or a string empty or over
// ARGV[4] bytes (what Read takes for none: leaseRead). ARGV[2] "" deletes
// it. It returns 1 when it swapped.
var swapLease = redis.NewScript(`
local t = redis.call('TYPE', KEYS[1])['ok']
local same
if ARGV[1] == '' then
  local n = t == 'string' and redis.call('STRLEN', KEYS[1]) or 0
  same = t ~= 'string' or n == 0 or n > tonumber(ARGV[4])
else
  same = t == 'string' and redis.call('GET', KEYS[1]) == ARGV[1]
end
if not same then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[2] ~= '' then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1`)

// A Lease is a lock on Redis that this replica holds: one replica at a
// time does what it guards (fetch a blob, run a scan, collect storage). It
// is refreshed every ttl/3 until Release; a holder that dies stops
// refreshing it, and its entry names it for ttl at most.
type Lease struct {
	s    *Shared
	kind Kind
	key  string
	ttl  time.Duration

	mu      sync.Mutex
	entry   LeaseEntry
	cur     string        // the sealed value last written
	lost    chan struct{} // closed when another replica took it over
	done    bool          // released: nothing is written any more
	stop    chan struct{}
	stopped chan struct{}
}

// Acquire tries to take the lease of kind at key for ttl, naming url (""
// when the others need not reach this replica). It returns the Lease when
// this replica took it, or else the entry of the replica that holds it, or
// neither when Redis does not answer (the caller goes on alone). An entry
// that is not sealed for key and kind (planted, altered, oversized, of
// another type) or that is over (its holder died, or it is replayed) is
// replaced with a compare-and-set: a Redis writer can hold a lease off at
// most by replaying a genuine entry until its end.
func (s *Shared) Acquire(kind Kind, key, url string, ttl time.Duration) (*Lease, *LeaseEntry) {
	if s.Health.Skip() {
		return nil, nil
	}
	l := newLease(s, kind, key, url, ttl)
	next := l.seal()
	ctx, cancel := s.Bound(context.Background())
	defer cancel()
	for range 3 {
		ok, err := s.Redis.SetNX(ctx, key, next, ttl).Result()
		if s.Health.Failed(err) {
			return nil, nil
		}
		if ok {
			return l.held(next), nil
		}
		holder, swapped, err := l.replaceStale(ctx, next, ttl)
		if s.Health.Failed(err) {
			return nil, nil
		}
		if holder != nil {
			return nil, holder
		}
		if swapped {
			return l.held(next), nil
		}
	}
	return nil, nil // it keeps changing under us: go on alone
}

// TakeOver takes the lease at key from the holder whose entry was read as
// was (a holder that does not answer), if Redis still holds exactly that
// entry: of several replicas that find a holder dead, one takes its
// lease and the others then find the new holder. nil when the entry
// changed meanwhile (the holder refreshed it, or another replica took it)
// or Redis does not answer.
func (s *Shared) TakeOver(kind Kind, key string, was *LeaseEntry, url string, ttl time.Duration) *Lease {
	if was == nil || was.raw == "" || s.Health.Skip() {
		return nil
	}
	l := newLease(s, kind, key, url, ttl)
	next := l.seal()
	ctx, cancel := s.Bound(context.Background())
	defer cancel()
	n, err := swapLease.Run(ctx, s.Redis, []string{key}, was.raw, next, ttl.Milliseconds(), leaseRead).Int()
	if s.Health.Failed(err) || n != 1 {
		return nil
	}
	return l.held(next)
}

// ReadLease returns the genuine entry of kind at key, live or over, or nil.
func (s *Shared) ReadLease(ctx context.Context, kind Kind, key string) *LeaseEntry {
	if s.Health.Skip() {
		return nil
	}
	ctx, cancel := s.Bound(ctx)
	defer cancel()
	b, err := s.Read(ctx, s.Redis, kind, key, maxLease)
	if s.Health.Failed(err) {
		return nil
	}
	return s.openLease(kind, key, b)
}

// openLease opens a lease entry read as b; nil when there is none or it
// is not genuine.
func (s *Shared) openLease(kind Kind, key string, b []byte) *LeaseEntry {
	p, ok := s.Open(kind, key, b)
	if !ok {
		return nil
	}
	var e LeaseEntry
	if json.Unmarshal(p, &e) != nil || e.Owner == "" {
		s.Reject(kind, key, "a sealed lease that does not read")
		return nil
	}
	e.raw = string(b)
	return &e
}

func newLease(s *Shared, kind Kind, key, url string, ttl time.Duration) *Lease {
	return &Lease{s: s, kind: kind, key: key, ttl: ttl, entry: LeaseEntry{URL: url, Owner: uuid.NewString()}, lost: make(chan struct{})}
}

// seal is l's entry, good for its ttl from now, sealed. l.mu is held or
// l is not shared yet.
func (l *Lease) seal() string {
	return l.sealFor(l.ttl)
}

// sealFor is l's entry, good for d from now, sealed.
func (l *Lease) sealFor(d time.Duration) string {
	e := l.entry
	e.Until = time.Now().Add(d)
	b, _ := json.Marshal(e)
	return string(l.s.Seal(l.kind, l.key, b))
}

// held starts refreshing l, written as cur.
func (l *Lease) held(cur string) *Lease {
	l.cur, l.stop, l.stopped = cur, make(chan struct{}), make(chan struct{})
	go func() {
		defer close(l.stopped)
		t := time.NewTicker(l.ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-l.stop:
				return
			case <-t.C:
				l.mu.Lock()
				l.swap(l.seal(), l.ttl)
				l.mu.Unlock()
			}
		}
	}()
	return l
}

// swap writes next, to live for ttl, in place of l's last value; l.mu is
// held. A lease another replica took over (this holder did not answer it,
// or its entry expired while Redis did not answer) stays theirs.
func (l *Lease) swap(next string, ttl time.Duration) {
	if l.done || l.isLost() {
		return
	}
	ctx, cancel := l.s.Bound(context.Background())
	defer cancel()
	n, err := swapLease.Run(ctx, l.s.Redis, []string{l.key}, l.cur, next, max(ttl, time.Millisecond).Milliseconds(), leaseRead).Int()
	switch {
	case l.s.Health.Failed(err):
	case n == 1:
		l.cur = next
	case next == "": // released: what is there now is not this holder's to delete
	case l.retake(ctx, next, ttl):
	default:
		close(l.lost)
		l.s.log.Info("a lease this replica held was taken over by another replica", "kind", l.kind, "key", l.key)
	}
}

// replaceStale writes next, for ttl, at l's key in place of what is
// there, unless that is a live genuine entry of another holder (returned).
// Whatever else is there is replaced: nothing, an entry not sealed for the
// key and kind (planted, altered, oversized, of another type), one that
// is over (its holder died, or it is replayed), or l's own older one. It
// swaps only what it read: swapped is false, with no holder, when the key
// changed meanwhile.
func (l *Lease) replaceStale(ctx context.Context, next string, ttl time.Duration) (holder *LeaseEntry, swapped bool, err error) {
	b, err := l.s.Read(ctx, l.s.Redis, l.kind, l.key, maxLease)
	if err != nil {
		return nil, false, err
	}
	if e := l.s.openLease(l.kind, l.key, b); e != nil && e.Owner != l.entry.Owner && time.Now().Before(e.Until) {
		return e, false, nil
	}
	n, err := swapLease.Run(ctx, l.s.Redis, []string{l.key}, string(b), next, max(ttl, time.Millisecond).Milliseconds(), leaseRead).Int()
	return nil, n == 1, err
}

// retake writes next in place of whatever holds l's key that is not a
// live genuine entry of another holder (replaceStale): what a Redis writer
// puts there, or an expiry while Redis did not answer, does not end the
// holder's work; only another replica's takeover does. It says whether l
// is still this replica's (Redis failing counts: the next refresh asks
// again).
func (l *Lease) retake(ctx context.Context, next string, ttl time.Duration) bool {
	_, swapped, err := l.replaceStale(ctx, next, ttl)
	if l.s.Health.Failed(err) {
		return true
	}
	if swapped {
		l.cur = next
		l.s.log.Warn("a lease this replica holds was gone or altered on redis (expired while redis did not answer, or written by another party): taken back", "kind", l.kind, "key", l.key)
	}
	return swapped
}

func (l *Lease) isLost() bool {
	select {
	case <-l.lost:
		return true
	default:
		return false
	}
}

// Lost is closed when a refresh finds that l is no longer this replica's
// (another replica took it over): what it guards must stop.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// SetNote records note in l's entry at once (a fill's upload, once it
// has one).
func (l *Lease) SetNote(note string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.entry.Note = note
	l.swap(l.seal(), l.ttl)
}

// Release stops refreshing l and deletes it, unless another replica took
// it over.
func (l *Lease) Release() { l.ReleaseFor(0) }

// ReleaseFor stops refreshing l and, when hold is positive, leaves its
// entry marked Done for hold: a replica that asks for the lease meanwhile
// finds it held, and skips what this holder just did (one storage
// collection per interval, not one per replica). A hold of 0 deletes it.
// A lease another replica took over is left to it.
func (l *Lease) ReleaseFor(hold time.Duration) {
	close(l.stop)
	<-l.stopped
	l.mu.Lock()
	defer l.mu.Unlock()
	next := ""
	if hold > 0 {
		l.entry.Done = true
		next = l.sealFor(hold)
	}
	l.swap(next, hold)
	l.done = true // a SetNote after this would write the lease anew
}
