package scan

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Scan slots and the queue for them: which scans run, which wait and which
// yield (Gate's doc comment says why).
const (
	maxScans  = 8  // scans running at once
	maxQueued = 64 // images waiting for a slot
	// yieldAfter is how long a scan keeps its slot before it may yield it.
	// The adapter API has no cancel: a yielded scan may still run at the
	// scanner. Without it, requests that leave at once would have the
	// scanner start scan after scan, one per request; with it, each slot
	// yields at most once per yieldAfter.
	yieldAfter = 5 * time.Second
)

// A slotError is why a request has no scan of its image under way: the
// slots are taken. Such a request is told scan_pending.
type slotError struct{ msg string }

func (e *slotError) Error() string { return e.msg }

var (
	// errBusy: a request that does not wait found no free slot.
	errBusy = &slotError{fmt.Sprintf("the %d scan slots are taken or waited for; retry shortly", maxScans)}
	// errQueueFull: the queue is full and the request's repository has its share of it.
	errQueueFull = &slotError{fmt.Sprintf("the scan queue is full (%d images wait for one of %d scan slots) and this repository has its share of it; retry shortly", maxQueued, maxScans)}
	// errDisplaced: the queue was full and this image's place went to a
	// repository with fewer images queued.
	errDisplaced = &slotError{fmt.Sprintf("this image's place in the full scan queue (%d images) went to a repository with fewer images queued; retry shortly", maxQueued)}
)

// kick starts a scan of s that nobody waits for (the request goes on
// without it), unless one is under way or queued. It starts one only in a
// free slot while nobody queues; it returns why it started none: no
// scanner, the last scan of s failed less than failedScanTTL ago, or
// errBusy.
func (g *Gate) kick(s Subject) error {
	if len(g.adapters) == 0 {
		return errNoScanner
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.scans[s.Digest]; ok {
		return nil
	}
	if f, ok := g.failed.Get(s.Digest); ok && g.now().Before(f.until) {
		return f.err
	}
	if g.slots >= maxScans || g.queued > 0 {
		g.slotEvents.WithLabelValues("busy").Inc()
		return errBusy
	}
	r := &run{s: s, done: make(chan struct{})}
	g.scans[s.Digest] = r
	g.runLocked(r)
	g.gaugesLocked()
	return nil
}

// await returns the scan of s for a request that waits for it, counting
// the request among its waiters: the scan under way or queued, or a new
// one, which takes a free slot or the slot of a scan nobody waits for, or
// else queues. The caller waits for r.done, or calls leave(r) when it stops
// waiting first. r is nil when there is no scan to wait for, and err says
// why: no scanner, the last scan of s failed less than failedScanTTL ago,
// or the queue is full (a *slotError).
func (g *Gate) await(s Subject) (*run, error) {
	if len(g.adapters) == 0 {
		return nil, errNoScanner
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if r, ok := g.scans[s.Digest]; ok {
		r.waiters++
		return r, nil
	}
	if f, ok := g.failed.Get(s.Digest); ok && g.now().Before(f.until) {
		return nil, f.err
	}
	r := &run{s: s, waiters: 1, done: make(chan struct{})}
	if err := g.enqueueLocked(r); err != nil {
		return nil, err
	}
	g.scans[s.Digest] = r
	g.dispatchLocked()
	if r.queued {
		g.slotEvents.WithLabelValues("queued").Inc()
	}
	g.gaugesLocked()
	return r, nil
}

// leave takes one waiting request off r, which it waited for in vain (its
// wait ended, or its client left), and says whether r was still queued. A
// queued scan nobody waits for leaves the queue; a running one goes on
// until a waiting request wants its slot.
func (g *Gate) leave(r *run) (queued bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if r.ended {
		return false
	}
	queued = r.queued
	if r.waiters--; r.waiters > 0 {
		return queued
	}
	if r.queued {
		g.dropLocked(r, errors.New("nobody waits for this scan any more"))
	}
	g.dispatchLocked()
	g.gaugesLocked()
	return queued
}

// enqueueLocked puts r in the queue. When the queue is full, r takes the
// place of the newest entry of the repository with the most entries if
// that has at least two more than r's repository; else r is refused.
func (g *Gate) enqueueLocked(r *run) error {
	repo := r.s.Repository
	if g.queued >= maxQueued {
		longest := ""
		for _, o := range g.turns {
			if len(g.queue[o]) > len(g.queue[longest]) {
				longest = o
			}
		}
		if len(g.queue[longest]) < len(g.queue[repo])+2 {
			g.slotEvents.WithLabelValues("queue_full").Inc()
			return errQueueFull
		}
		q := g.queue[longest]
		victim := q[len(q)-1]
		g.log.Info("scan queue full: an image of the repository with the most queued gives its place", "repo", victim.s.Repository,
			"digest", victim.s.Digest, "queued", len(q), "for_repo", repo, "for_digest", r.s.Digest)
		g.slotEvents.WithLabelValues("displaced").Inc()
		g.dropLocked(victim, errDisplaced)
	}
	r.queued = true
	if len(g.queue[repo]) == 0 {
		g.turns = append(g.turns, repo)
	}
	g.queue[repo] = append(g.queue[repo], r)
	g.queued++
	return nil
}

// dropLocked takes r, queued, out of the queue and ends it with err.
func (g *Gate) dropLocked(r *run, err error) {
	repo := r.s.Repository
	g.queue[repo] = slices.DeleteFunc(g.queue[repo], func(o *run) bool { return o == r })
	if len(g.queue[repo]) == 0 {
		delete(g.queue, repo)
		g.turns = slices.DeleteFunc(g.turns, func(o string) bool { return o == repo })
	}
	g.queued--
	delete(g.scans, r.s.Digest)
	r.queued, r.ended, r.err = false, true, err
	close(r.done)
}

// dispatchLocked gives slots to queued scans while any queue: free slots,
// then the slots of running scans nobody waits for that have had theirs
// for yieldAfter, which yield. The slot goes to the queued repository with
// the fewest scans running, round robin among equals.
func (g *Gate) dispatchLocked() {
	for g.queued > 0 {
		if g.slots >= maxScans {
			idle, next := g.idleLocked()
			if idle == nil {
				if !next.IsZero() {
					g.wakeLocked(next)
				}
				return
			}
			g.yieldLocked(idle)
		}
		turn := 0
		for i, repo := range g.turns {
			if g.running[repo] < g.running[g.turns[turn]] {
				turn = i
			}
		}
		repo := g.turns[turn]
		q := g.queue[repo]
		r := q[0]
		g.turns = slices.Delete(g.turns, turn, turn+1)
		if len(q) == 1 {
			delete(g.queue, repo)
		} else {
			g.queue[repo] = q[1:]
			g.turns = append(g.turns, repo)
		}
		g.queued--
		g.runLocked(r)
	}
}

// idleLocked returns, of the running scans nobody waits for that have had
// their slot for yieldAfter, the one that took it last (the least work
// lost if it yields); or nil, and when the next one will have had it (zero
// if none will).
func (g *Gate) idleLocked() (*run, time.Time) {
	now := g.now()
	var idle *run
	var next time.Time
	for _, r := range g.scans {
		if r.queued || r.waiters > 0 {
			continue
		}
		if at := r.started.Add(yieldAfter); at.After(now) {
			if next.IsZero() || at.Before(next) {
				next = at
			}
			continue
		}
		if idle == nil || r.started.After(idle.started) {
			idle = r
		}
	}
	return idle, next
}

// wakeLocked has the queue dispatched again at at, when a scan nobody
// waits for will have had its slot for yieldAfter: one timer at a time.
func (g *Gate) wakeLocked(at time.Time) {
	if g.wake != nil {
		if !g.wakeAt.After(at) {
			return
		}
		g.wake.Stop()
	}
	var t *time.Timer
	t = time.AfterFunc(at.Sub(g.now()), func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.wake == t {
			g.wake = nil
		}
		g.dispatchLocked()
		g.gaugesLocked()
	})
	g.wake, g.wakeAt = t, at
}

// yieldLocked cancels r, running and waited for by nobody, to free its slot.
// The adapter API has no cancel: the scanner may finish it, unpolled.
// Nothing is remembered of it: the next request for its digest starts
// another.
func (g *Gate) yieldLocked(r *run) {
	g.log.Info("scan yields its slot to a waiting request: nobody waits for it", "repo", r.s.Repository, "digest", r.s.Digest,
		"ran", g.now().Sub(r.started).Round(time.Millisecond))
	g.slotEvents.WithLabelValues("yielded").Inc()
	g.releaseLocked(r)
	r.yielded = true
	r.cancel()
}

// releaseLocked frees r's slot and forgets r.
func (g *Gate) releaseLocked(r *run) {
	g.slots--
	if g.running[r.s.Repository]--; g.running[r.s.Repository] == 0 {
		delete(g.running, r.s.Repository)
	}
	delete(g.scans, r.s.Digest)
	r.ended = true
}

// runLocked gives r a slot and starts it. When it ends, its slot goes to
// the queue, and a failure is remembered for failedScanTTL.
func (g *Gate) runLocked(r *run) {
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.Timeout)
	r.queued, r.started, r.cancel = false, g.now(), cancel
	g.slots++
	g.running[r.s.Repository]++
	go func() {
		defer cancel()
		report, err := g.scanOnce(ctx, r.s)
		g.mu.Lock()
		defer g.mu.Unlock()
		r.report, r.err = report, err
		switch {
		case r.yielded:
			g.log.Debug("yielded scan ended", "repo", r.s.Repository, "digest", r.s.Digest, "err", err)
		case err != nil:
			g.log.Warn("scan failed", "repo", r.s.Repository, "digest", r.s.Digest, "err", err, "retry_after", failedScanTTL)
			g.failed.Add(r.s.Digest, failure{err: err, until: g.now().Add(failedScanTTL)})
			g.releaseLocked(r)
		default:
			g.releaseLocked(r)
		}
		close(r.done)
		g.dispatchLocked()
		g.gaugesLocked()
	}()
}

// gaugesLocked sets the slot gauges.
func (g *Gate) gaugesLocked() {
	g.queueLength.Set(float64(g.queued))
	g.runningNow.Set(float64(g.slots))
}
