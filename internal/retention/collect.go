package retention

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/cache"
	"github.com/trustproxy/trustproxy/internal/fill"
	"github.com/trustproxy/trustproxy/internal/gun"
	"github.com/trustproxy/trustproxy/internal/manifest"
)

// fresh is how recently written a blob may be and never be removed:
// whatever a fill committed during the collection (or just before it, on
// a replica whose clock is a little ahead) stays.
const fresh = time.Minute

// recheckEvery bounds the time between two reads of the pull records
// (and of the fill locks) during a sweep.
const recheckEvery = 2 * time.Second

// A Report is what one collection did.
type Report struct {
	// Skipped says why no collection ran ("" when one did): another
	// replica holds the lock or collected recently, or Redis is
	// unreachable.
	Skipped string
	DryRun  bool
	// Stored is the bytes of the blobs in storage when the collection
	// began, and Live those of them that live repositories' signed
	// targets reference (never removed).
	Stored, Live int64
	// Removed counts what was removed (in a dry run, what would have
	// been), by kind: manifest or blob; Freed is their bytes.
	Removed map[string]int
	Freed   int64
	// Kept counts what was chosen for removal and then kept at the last
	// check: pulled during the collection, being filled, or rewritten.
	Kept int
	// Failed counts removals that storage refused (logged each).
	Failed int
	// OverBudget says the live content alone exceeds max_bytes.
	OverBudget bool
}

// errLostLock stops a collection whose lock another replica took.
var errLostLock = errors.New("another replica took the collector's lock on redis (this replica's refreshes did not reach redis in time): stopping")

// lockTTL is how long the collector's lock outlives its holder's last
// refresh; the holder refreshes it every lockTTL/3.
const lockTTL = time.Minute

// Collect runs one collection, unless another replica holds the lock (or
// collected within the interval), and returns what it did. An error says
// the collection stopped (storage or Redis failing, ctx ended); what it
// removed until then is in the Report.
func (c *Collector) Collect(ctx context.Context) (*Report, error) {
	start := c.now()
	rep := &Report{DryRun: c.cfg.DryRun, Removed: map[string]int{}}
	if c.shared == nil {
		err := c.collect(ctx, start, rep)
		c.report(start, rep, err)
		return rep, err
	}
	// The lock is a cache.Lease: sealed, so that what a Redis writer
	// plants (not sealed for the key, altered, of another type) or
	// replays after its end is replaced, not obeyed.
	lock, holder := c.shared.Acquire(cache.KindRetention, c.lockKey, "", lockTTL)
	switch {
	case holder != nil && holder.Done:
		return c.skipped(rep, "another replica collected recently")
	case holder != nil:
		return c.skipped(rep, "another replica is collecting")
	case lock == nil:
		return c.skipped(rep, "redis is unreachable (or the lock keeps changing): replicas cannot take turns")
	}
	held, cancel := context.WithCancelCause(ctx)
	go func() {
		select {
		case <-lock.Lost():
			cancel(errLostLock)
		case <-held.Done():
		}
	}()
	err := c.collect(held, start, rep)
	cancel(nil)
	hold := time.Duration(0)
	if err == nil {
		hold = c.cfg.Interval * 3 / 4
	}
	lock.ReleaseFor(hold)
	c.report(start, rep, err)
	return rep, err
}

func (c *Collector) skipped(rep *Report, why string) (*Report, error) {
	rep.Skipped = why
	c.metrics.runs.WithLabelValues("skipped").Inc()
	c.log.Info("retention collection skipped", "reason", why)
	return rep, nil
}

// collect marks what stays and sweeps the rest, filling rep.
func (c *Collector) collect(ctx context.Context, start time.Time, rep *Report) error {
	var cutoff time.Time // zero: no max_age, every repository with a pull record is live
	if c.cfg.MaxAge > 0 {
		cutoff = start.Add(-c.cfg.MaxAge - c.pulls.throttle)
	}
	m := &mark{c: c, cutoff: cutoff, protected: map[digest.Digest]bool{}, lastUse: map[digest.Digest]time.Time{},
		closures: map[digest.Digest][]digest.Digest{}, live: map[string]bool{}}
	var err error
	if m.inv, err = scan(ctx, c.driver); err != nil {
		return fmt.Errorf("list storage: %w", err)
	}
	recs, err := c.pulls.list(ctx, time.Time{})
	if err != nil {
		return fmt.Errorf("read pull records: %w", err)
	}
	for _, r := range recs {
		m.note(ctx, r)
	}
	remove := m.choose(start, rep)
	if c.AfterMark != nil {
		c.AfterMark(ctx)
	}
	return c.sweep(ctx, m, start, remove, rep, recs)
}

// mark is what one collection keeps: the content live repositories'
// current signed targets reference (protected), and when each digest was
// last pulled, by any repository (lastUse).
type mark struct {
	c         *Collector
	inv       *inventory
	cutoff    time.Time
	protected map[digest.Digest]bool
	lastUse   map[digest.Digest]time.Time
	closures  map[digest.Digest][]digest.Digest // a manifest and all it references, transitively; nil: unreadable
	live      map[string]bool                   // GUNs pulled within max_age, whose targets are protected
}

// note takes in one pull record: the manifest and what it references were
// in use at its time; a repository pulled within max_age is live.
func (m *mark) note(ctx context.Context, r record) {
	for _, d := range m.closure(ctx, r.Digest) {
		if r.Pulled.After(m.lastUse[d]) {
			m.lastUse[d] = r.Pulled
		}
	}
	name, err := r.name()
	if err != nil || r.Pulled.Before(m.cutoff) {
		return
	}
	rule := m.c.server.RuleFor(name.String())
	if rule != nil && (rule.Has(config.SourceCosign) || rule.Has(config.SourceNotation)) {
		// cosign and Notation list no signed digests to protect: what such a rule's
		// repository served within max_age (a pull is recorded only once
		// its digest verified, or under audit) is what is live.
		m.protect(ctx, r.Digest)
		if !rule.Has(config.SourceNotary) {
			return
		}
	}
	if m.live[name.String()] {
		return
	}
	m.live[name.String()] = true
	m.protectRepo(ctx, name)
}

// protectRepo protects what name's current signed targets reference. When
// its trust data cannot be verified now (Notary down, a refusal), or a
// target's stored manifest cannot be read, everything stored for it is
// kept: a collection never guesses.
func (m *mark) protectRepo(ctx context.Context, name gun.Name) {
	view, err := m.c.verify.View(ctx, name, m.c.server.RuleFor(name.String()))
	if err == nil {
		readable := true
		for _, t := range view.Targets {
			readable = m.protect(ctx, t.Digest) && readable
		}
		if readable {
			return
		}
		err = errors.New("a signed target's stored manifest cannot be read")
	}
	m.c.log.Warn("keeping everything stored for a repository pulled within retention.max_age: its signed targets cannot be had now",
		"repo", name.String(), "err", err)
	// Storage holds the repository under its storage name, not its GUN.
	if l := m.inv.repos[name.StorageName()]; l != nil {
		for d := range l.manifests {
			m.protect(ctx, d)
		}
		for d := range l.layers {
			m.protected[d] = true
		}
	}
}

// protect protects manifest d and everything it references; false when d
// is stored but cannot be read.
func (m *mark) protect(ctx context.Context, d digest.Digest) bool {
	cl := m.closure(ctx, d)
	for _, x := range cl {
		m.protected[x] = true
	}
	return cl != nil
}

// closure is manifest d and everything it references, transitively (an
// index's platform manifests and their configs and layers), as far as
// they are stored: only d when d is not stored; nil when d is stored but
// cannot be read (storage failing). Stored bytes that are not d, or not a
// manifest trustproxy serves, reference nothing: the proxy would not serve
// them either, and fetches d again.
func (m *mark) closure(ctx context.Context, d digest.Digest) []digest.Digest {
	if cl, ok := m.closures[d]; ok {
		return cl
	}
	m.closures[d] = []digest.Digest{d} // a cycle (not a valid manifest) ends here
	cl := []digest.Digest{d}
	size := int64(-1)
	if b, ok := m.inv.blobs[d]; ok {
		size = b.size
	} else if fi, err := m.c.driver.Stat(ctx, blobData(d)); err == nil {
		size = fi.Size() // stored since the storage was listed
	}
	if size < 0 || size > m.c.manifestBytes {
		return cl
	}
	body, err := m.c.driver.GetContent(ctx, blobData(d))
	if errors.As(err, &storagedriver.PathNotFoundError{}) {
		return cl
	}
	if err != nil {
		m.closures[d] = nil
		return nil
	}
	mf, err := manifest.Verify(body, v1.Descriptor{Digest: d, Size: -1})
	if err != nil {
		return cl
	}
	for _, ref := range mf.Refs {
		if manifest.IsType(ref.MediaType) {
			sub := m.closure(ctx, ref.Digest)
			if sub == nil {
				m.closures[d] = nil
				return nil
			}
			cl = append(cl, sub...)
		} else {
			cl = append(cl, ref.Digest)
		}
	}
	m.closures[d] = cl
	return cl
}

// An item is a blob chosen for removal.
type item struct {
	d        digest.Digest
	size     int64
	last     time.Time // when it was last pulled, or written if later
	manifest bool
}

// choose returns what to remove, manifests first: every blob neither
// protected nor used since the cutoff, then, while the stored bytes are
// over max_bytes, the least recently used of the others that are not
// protected.
func (m *mark) choose(start time.Time, rep *Report) []item {
	manifests := map[digest.Digest]bool{}
	for _, l := range m.inv.repos {
		for d := range l.manifests {
			manifests[d] = true
		}
	}
	var expired, others []item
	var expiredBytes int64
	for d, b := range m.inv.blobs {
		rep.Stored += b.size
		if m.protected[d] {
			rep.Live += b.size
			continue
		}
		it := item{d: d, size: b.size, last: b.modified, manifest: manifests[d]}
		if u := m.lastUse[d]; u.After(it.last) {
			it.last = u
		}
		if it.last.After(start.Add(-fresh)) {
			continue
		}
		if !m.cutoff.IsZero() && it.last.Before(m.cutoff) {
			expired = append(expired, it)
			expiredBytes += it.size
		} else {
			others = append(others, it)
		}
	}
	remove := expired
	if budget := int64(m.c.cfg.MaxBytes); budget > 0 {
		left := rep.Stored - expiredBytes
		slices.SortFunc(others, func(a, b item) int { return a.last.Compare(b.last) })
		for _, it := range others {
			if left <= budget {
				break
			}
			remove = append(remove, it)
			left -= it.size
		}
		rep.OverBudget = left > budget
	}
	slices.SortStableFunc(remove, func(a, b item) int {
		if a.manifest != b.manifest {
			if a.manifest {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.d, b.d)
	})
	return remove
}

// sweep removes what choose chose, each item checked again just before:
// the pull records are read again (every recheckEvery), and a manifest
// pulled since the collection began protects what it references, its
// repository becoming live; a blob being filled here or on a replica
// (its fill lock), or written since, is kept. Removing a blob removes its
// links in every repository, then its data. Expired pull records go last.
func (c *Collector) sweep(ctx context.Context, m *mark, start time.Time, remove []item, rep *Report, recs []record) error {
	linkedIn := map[digest.Digest][]string{}
	for repo, l := range m.inv.repos {
		for d := range l.layers {
			linkedIn[d] = append(linkedIn[d], repo)
		}
		for d := range l.manifests {
			if !l.layers[d] {
				linkedIn[d] = append(linkedIn[d], repo)
			}
		}
	}
	var locked map[digest.Digest]bool
	var checked time.Time
	recheck := func() error {
		// Record objects written since shortly before the collection
		// began (a replica's clock may be a little behind the storage's).
		recs, err := c.pulls.list(ctx, start.Add(-fresh))
		if err != nil {
			return fmt.Errorf("read pull records: %w", err)
		}
		clear(m.closures) // manifests may have been stored again meanwhile
		for _, r := range recs {
			m.note(ctx, r)
			m.protect(ctx, r.Digest)
		}
		if c.shared != nil {
			if locked, err = fill.LockedDigests(ctx, c.shared); err != nil {
				c.shared.Health.Failed(err)
				return fmt.Errorf("read fill locks: %w", err)
			}
		}
		checked = time.Now()
		return nil
	}
	for _, it := range remove {
		if err := context.Cause(ctx); ctx.Err() != nil {
			return err
		}
		if time.Since(checked) >= recheckEvery {
			if err := recheck(); err != nil {
				return err
			}
		}
		if m.protected[it.d] || c.server.Filling(it.d) || locked[it.d] {
			rep.Kept++
			continue
		}
		fi, err := c.driver.Stat(ctx, blobData(it.d))
		if errors.As(err, &storagedriver.PathNotFoundError{}) {
			continue
		}
		if err != nil {
			return fmt.Errorf("stat blob %s: %w", it.d, err)
		}
		if fi.ModTime().After(start.Add(-fresh)) {
			rep.Kept++
			continue
		}
		kind := "blob"
		if it.manifest {
			kind = "manifest"
		}
		if !c.cfg.DryRun {
			if err := c.removeBlob(ctx, it.d, linkedIn[it.d], m.inv); err != nil {
				// A fill may have written the blob again as it was being
				// removed (a filesystem directory not empty): it stays.
				if fi, serr := c.driver.Stat(ctx, blobData(it.d)); serr == nil && fi.ModTime().After(start.Add(-fresh)) {
					rep.Kept++
					continue
				}
				rep.Failed++
				c.log.Warn("cannot remove a blob; the next collection tries again", "digest", it.d, "err", err)
				continue
			}
			c.metrics.removed.WithLabelValues(kind).Inc()
			c.metrics.freed.Add(float64(it.size))
		}
		rep.Removed[kind]++
		rep.Freed += it.size
		c.log.Debug("retention removed", "kind", kind, "digest", it.d, "size", it.size, "last_used", it.last, "dry_run", c.cfg.DryRun)
	}
	if c.cfg.DryRun || m.cutoff.IsZero() {
		return nil
	}
	for _, r := range recs {
		if !r.Pulled.Before(m.cutoff) {
			continue
		}
		// A record rewritten since it was read is a pull: it stays.
		fi, err := c.driver.Stat(ctx, recordPath(gunOf(r), r.Digest))
		if err != nil || !fi.ModTime().Before(m.cutoff) {
			continue
		}
		if err := c.pulls.remove(ctx, gunOf(r), r.Digest); err != nil {
			return fmt.Errorf("remove an expired pull record: %w", err)
		}
	}
	return nil
}

func gunOf(r record) string {
	n, _ := r.name()
	return n.String()
}

// removeBlob removes d's links in repos, then its data. Links go first: a
// repository that still links d (a new pull's fill, meanwhile) finds its
// data gone and fetches it again, as it does a blob never stored.
func (c *Collector) removeBlob(ctx context.Context, d digest.Digest, repos []string, inv *inventory) error {
	var paths []string
	for _, repo := range repos {
		paths = append(paths, linkPaths(repo, inv.repos[repo], d)...)
	}
	paths = append(paths, blobDir(d))
	for _, p := range paths {
		if err := c.driver.Delete(ctx, p); err != nil && !errors.As(err, &storagedriver.PathNotFoundError{}) {
			return fmt.Errorf("remove %s: %w", p, err)
		}
	}
	return nil
}

// report logs and counts a collection.
func (c *Collector) report(start time.Time, rep *Report, err error) {
	result := "collected"
	switch {
	case err != nil:
		result = "failed"
	case rep.DryRun:
		result = "dry_run"
	}
	c.metrics.runs.WithLabelValues(result).Inc()
	c.metrics.last.Set(float64(start.Unix()))
	if rep.DryRun {
		c.metrics.wouldFree.Set(float64(rep.Freed))
	}
	if err == nil {
		c.metrics.stored.Set(float64(rep.Stored - rep.Freed*boolInt(!rep.DryRun)))
	}
	attrs := []any{"dry_run", rep.DryRun, "removed_manifests", rep.Removed["manifest"], "removed_blobs", rep.Removed["blob"],
		"freed_bytes", rep.Freed, "kept_at_last_check", rep.Kept, "failed", rep.Failed, "stored_bytes", rep.Stored, "live_bytes", rep.Live,
		"max_age", c.cfg.MaxAge, "max_bytes", int64(c.cfg.MaxBytes), "took", time.Since(start)}
	msg := "retention collected"
	if rep.DryRun {
		msg = "retention dry run: nothing removed; removed_* and freed_bytes are what a collection would remove"
	}
	switch {
	case err != nil:
		c.log.Error("retention collection stopped", append(attrs, "err", err)...)
	default:
		c.log.Info(msg, attrs...)
	}
	if rep.OverBudget {
		c.log.Warn("live content alone exceeds retention.max_bytes: it is kept; raise max_bytes or lower max_age",
			"live_bytes", rep.Live, "max_bytes", int64(c.cfg.MaxBytes))
	}
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}
