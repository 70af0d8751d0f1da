package cache

import (
	"errors"
	"io/fs"
	"maps"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/theupdateframework/notary/storage"
)

// maxPendingFloors bounds the repositories whose floor writes wait here
// for Redis to answer. Past it a repository's floor reaches Redis at its
// next read on this replica (newerShared), as it would without the list.
const maxPendingFloors = 10_000

// pendingFloors lists the repositories whose trust floor this replica
// stored on its disk alone: Redis did not answer the write, or answered
// and did not take it (errNotShared). A replica with no floor of its own
// for them would take whatever older metadata a trust server replays,
// down to what Redis holds (nothing, when Redis came back empty). They are
// pushed up as soon as Redis answers again (push, on RedisHealth's word),
// or in redisRetry when Redis never went down (pushSoon), not at their
// next read here, which may never come.
type pendingFloors struct {
	mu     sync.Mutex
	floors map[string]pendingFloor // by GUN
	gen    uint64
	full   bool // the bound was reached and said so in the log

	pushing atomic.Bool // a push runs
	again   atomic.Bool // a push was asked for: the running one goes on
	soon    atomic.Bool // a push is scheduled (pushSoon)

	runMu   sync.Mutex
	closed  bool // close ran: no push starts
	running sync.WaitGroup
}

// pendingFloor is one repository's: its store and the roles it wrote.
// roles is never changed once in the list (add replaces it).
type pendingFloor struct {
	store *GUNStore
	roles map[string]bool
	gen   uint64 // when it was last added to
}

// add records that s wrote roles to disk alone.
func (p *pendingFloors) add(s *GUNStore, roles []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.floors == nil {
		p.floors = map[string]pendingFloor{}
	}
	cur, ok := p.floors[s.gun]
	if !ok && len(p.floors) >= maxPendingFloors {
		if !p.full {
			p.full = true
			s.log.Warn("too many repositories' trust floors wait for redis; the rest reach it at their next read here", "limit", maxPendingFloors)
		}
		return
	}
	merged := maps.Clone(cur.roles)
	if merged == nil {
		merged = map[string]bool{}
	}
	for _, r := range roles {
		merged[r] = true
	}
	p.gen++
	p.floors[s.gun] = pendingFloor{store: s, roles: merged, gen: p.gen}
}

// done takes gun off the list, unless it was added to since gen.
func (p *pendingFloors) done(gun string, gen uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if cur, ok := p.floors[gun]; ok && cur.gen == gen {
		delete(p.floors, gun)
	}
	if len(p.floors) == 0 {
		p.full = false
	}
}

// begin says whether a push may start (not closed), and counts it.
func (p *pendingFloors) begin() bool {
	p.runMu.Lock()
	defer p.runMu.Unlock()
	if p.closed {
		return false
	}
	p.running.Add(1)
	return true
}

// close stops pushes: none starts after it, and it waits for the one that
// runs (it writes to the disk and to Redis).
func (p *pendingFloors) close() {
	p.runMu.Lock()
	p.closed = true
	p.runMu.Unlock()
	p.running.Wait()
}

// unshared records that s wrote roles to its disk alone. A push follows
// when RedisHealth says Redis is back; when Redis is not down (it refused
// the write, or answered READONLY: a node demoted in a failover), in
// redisRetry.
func (f *sharedFloor) unshared(s *GUNStore, roles []string) {
	f.pending.add(s, roles)
	if !f.Health.Degraded() {
		f.pushSoon()
	}
}

// pushSoon pushes in redisRetry, unless a push is scheduled already.
func (f *sharedFloor) pushSoon() {
	if f.pending.soon.CompareAndSwap(false, true) {
		time.AfterFunc(redisRetry, func() {
			f.pending.soon.Store(false)
			f.push()
		})
	}
}

// push writes every listed floor up to Redis, until Redis stops answering
// again (the rest wait for the next time it answers). One push runs at a
// time; one asked for while it runs makes it go through the list again. A
// floor Redis already holds newer (another replica's) is done with too:
// the shared floor is above it.
func (f *sharedFloor) push() {
	p := f.pending
	p.again.Store(true)
	for p.again.Load() && p.pushing.CompareAndSwap(false, true) {
		if !p.begin() {
			p.pushing.Store(false)
			return
		}
		for p.again.Swap(false) {
			p.mu.Lock()
			todo := maps.Clone(p.floors)
			p.mu.Unlock()
			if !f.pushAll(todo) {
				break
			}
		}
		p.running.Done()
		p.pushing.Store(false)
	}
}

// pushAll pushes todo; false when Redis stopped answering or taking the
// writes (a push comes again when it is back, or in redisRetry).
func (f *sharedFloor) pushAll(todo map[string]pendingFloor) bool {
	for gun, pf := range todo {
		pushed, err := pf.store.pushFloor(pf.roles)
		var rollback *RollbackError
		switch {
		case errors.Is(err, errUnanswered), errors.Is(err, errNotShared):
			if !f.Health.Degraded() {
				f.pushSoon()
			}
			return false
		case err == nil && pushed:
			f.floorsPushed.Inc()
			f.log.Info("a trust floor stored while redis did not take it is shared now", "gun", gun)
		case err == nil, errors.As(err, &rollback):
		default:
			f.log.Warn("cannot share a trust floor stored while redis did not take it; it reaches redis at the repository's next read here", "gun", gun, "err", err)
		}
		f.pending.done(gun, pf.gen)
	}
	return true
}

// pushFloor writes the disk's metadata of roles up to the shared floor,
// and says whether it wrote any. errUnanswered when Redis does not answer,
// errNotShared when it does not take the write; a *RollbackError when it
// holds newer already. A role no longer on disk (dropped by a key
// rotation since, or the GUN's directory removed) is left out.
func (s *GUNStore) pushFloor(roles map[string]bool) (bool, error) {
	if _, err := os.Stat(s.dir); errors.Is(err, fs.ErrNotExist) {
		return false, nil // removed since: lock would make it again
	}
	unlock, err := s.lock()
	if err != nil {
		return false, err
	}
	defer unlock()
	root, _ := s.diskRoot() // as SetMulti stored them
	entries := map[string]*floorEntry{}
	for name := range roles {
		b, err := s.read(name, storage.NoSizeLimit)
		if errors.As(err, new(storage.ErrMetaNotFound)) {
			continue
		}
		if err != nil {
			return false, err
		}
		v, _ := Version(b) // read checked it
		entries[name] = root.entry(name, b, v)
	}
	if len(entries) == 0 {
		return false, nil
	}
	return true, s.shared.set(s.gun, entries)
}
