package cache

import (
	"errors"
	"maps"
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
// wrote while Redis did not answer: that floor is on its disk alone, and
// a replica with no floor of its own for them would take whatever older
// metadata a trust server replays, down to what Redis holds (nothing,
// when Redis came back empty). They are pushed up as soon as Redis
// answers again (push, on RedisHealth's word), not at their next read
// here, which may never come.
type pendingFloors struct {
	mu      sync.Mutex
	floors  map[string]pendingFloor // by GUN
	gen     uint64
	full    bool // the bound was reached and said so in the log
	pushing atomic.Bool
	soon    atomic.Bool // a push is scheduled (pushSoon)
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

// unshared records that s wrote roles to its disk alone, Redis not
// answering (down, or a node demoted in a failover that refused it
// READONLY). A push follows when RedisHealth says Redis is back; when it
// never said Redis was down (READONLY), in redisRetry.
func (f *sharedFloor) unshared(s *GUNStore, roles []string) {
	f.pending.add(s, roles)
	if f.Health != nil && !f.Health.Degraded() {
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
// time. A floor Redis already holds newer (another replica's) is done
// with too: the shared floor is above it.
func (f *sharedFloor) push() {
	p := f.pending
	if !p.pushing.CompareAndSwap(false, true) {
		return
	}
	defer p.pushing.Store(false)
	for {
		p.mu.Lock()
		todo, gen := maps.Clone(p.floors), p.gen
		p.mu.Unlock()
		if !f.pushAll(todo) {
			return
		}
		p.mu.Lock()
		added := p.gen != gen // while this push ran: push those too
		p.mu.Unlock()
		if !added {
			return
		}
	}
}

// pushAll pushes todo; false when Redis stopped answering.
func (f *sharedFloor) pushAll(todo map[string]pendingFloor) bool {
	for gun, pf := range todo {
		err := pf.store.pushFloor(pf.roles)
		var rollback *RollbackError
		switch {
		case errors.Is(err, errUnanswered):
			if f.Health != nil && !f.Health.Degraded() {
				f.pushSoon() // READONLY: the client turns to the new master
			}
			return false
		case err == nil:
			f.floorsPushed.Inc()
			f.log.Info("a trust floor written while redis did not answer is shared now", "gun", gun)
		case errors.As(err, &rollback):
		default:
			f.log.Warn("cannot share a trust floor written while redis did not answer; it reaches redis at the repository's next read here", "gun", gun, "err", err)
		}
		f.pending.done(gun, pf.gen)
	}
	return true
}

// pushFloor writes the disk's metadata of roles up to the shared floor.
// errUnanswered when Redis does not answer; a *RollbackError when it holds
// newer already. A role no longer on disk (dropped by a key rotation
// since) is left out.
func (s *GUNStore) pushFloor(roles map[string]bool) error {
	unlock, err := s.lock()
	if err != nil {
		return err
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
			return err
		}
		v, _ := Version(b) // read checked it
		entries[name] = root.entry(name, b, v)
	}
	if len(entries) == 0 {
		return nil
	}
	return s.shared.set(s.gun, entries)
}
