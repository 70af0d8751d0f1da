package trust

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/theupdateframework/notary"
	"github.com/theupdateframework/notary/client"
	"github.com/theupdateframework/notary/storage"
	"github.com/theupdateframework/notary/trustpinning"
	"github.com/theupdateframework/notary/tuf"
	"github.com/theupdateframework/notary/tuf/data"
	"github.com/theupdateframework/notary/tuf/signed"
	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/cache"
	"github.com/trustproxy/trustproxy/internal/egress"
	"github.com/trustproxy/trustproxy/internal/gun"
	"golang.org/x/sync/singleflight"
)

// Verifier gives the verified trust view of a GUN, judged by the rule its
// caller found for it in the same configuration. It is safe for concurrent use.
type Verifier struct {
	settings atomic.Pointer[settings] // swapped whole by Reconfigure
	previous atomic.Pointer[settings] // the settings before the last Reconfigure, for requests under way
	meta     *cache.MetadataStore
	limits   config.Limits
	log      *slog.Logger

	group      singleflight.Group
	views      *lru.Cache[string, cached]
	refusals   *lru.Cache[string, refused] // recent repository refusals, by GUN
	shared     *sharedState                // nil: refusals stay in this process
	tofuWarned *lru.Cache[string, struct{}]
	olderRoots *lru.Cache[string, []byte] // intermediate roots served, by GUN, version and current root

	refreshes *prometheus.CounterVec
	seconds   prometheus.Histogram
}

// maxSnapshots bounds the verified snapshots kept in memory; an evicted one
// is verified again (its metadata is cached on disk) when next asked for.
const maxSnapshots = 10000

// maxOlderRoots bounds the intermediate roots kept for notary clients
// (olderRoot); an evicted one is fetched again when asked for.
const maxOlderRoots = 1000

type upstream struct {
	index  int
	cfg    config.Upstream
	client *egress.Client // nil when no Notary server is configured
}

// settings are what a configuration reload may change: the pins, the
// upstreams' Notary clients and how long trust data is reused.
type settings struct {
	rules      []config.Rule   // the rules of the configuration these came with (for settingsFor)
	pinning    *config.Pinning // compiled by config.Load
	upstreams  map[string]*upstream
	ttl        time.Duration
	refusalTTL time.Duration
}

// A view or a refusal is kept for the rule it was judged by: a rule of
// another configuration (a reload) never reuses it, whatever its GUN.
type cached struct {
	view     *View
	until    time.Time
	rule     *config.Rule
	upstream string // the name of the repository's upstream
}

// refused is a repository refusal remembered until until, so that a flood
// of requests for made-up or unsigned repositories asks the Notary server
// once per name per trust.refusal_ttl, not once per request.
type refused struct {
	err   *RefusalError
	until time.Time
	rule  *config.Rule
}

// New prepares a Notary client per upstream of cfg. cfg is as config.Load
// returns it: validated and compiled, with defaults filled.
// Trust metadata is cached under <cfg.DataDir>/trust. Its metrics are
// registered on reg (none when reg is nil); log may be nil.
func New(cfg *config.Config, log *slog.Logger, reg prometheus.Registerer) (*Verifier, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "trust")
	if cfg.DataDir == "" {
		return nil, errors.New("data_dir is required: verified trust metadata and its rollback floor are kept there")
	}
	set, err := newSettings(cfg)
	if err != nil {
		return nil, err
	}
	meta, err := cache.NewMetadataStore(filepath.Join(cfg.DataDir, "trust"), log)
	if err != nil {
		return nil, err
	}
	views, err := lru.New[string, cached](maxSnapshots)
	if err != nil {
		return nil, err
	}
	refusals, err := lru.New[string, refused](maxSnapshots)
	if err != nil {
		return nil, err
	}
	tofuWarned, err := lru.New[string, struct{}](maxSnapshots)
	if err != nil {
		return nil, err
	}
	olderRoots, err := lru.New[string, []byte](maxOlderRoots)
	if err != nil {
		return nil, err
	}
	v := &Verifier{
		olderRoots: olderRoots,
		meta:       meta,
		limits:     cfg.Limits,
		log:        log,
		views:      views,
		refusals:   refusals,
		tofuWarned: tofuWarned,
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustproxy_trust_refresh_total",
			Help: "Trust metadata refreshes from the Notary server, by result (ok or the refusal reason).",
		}, []string{"result"}),
		seconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "trustproxy_trust_refresh_seconds",
			Help:    "Time to refresh and verify the trust metadata of one repository.",
			Buckets: prometheus.DefBuckets,
		}),
	}
	v.settings.Store(set)
	if reg != nil {
		for _, c := range []prometheus.Collector{v.refreshes, v.seconds} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register trust metrics: %w", err)
			}
		}
	}
	return v, nil
}

// newSettings are cfg's pins, Notary clients and reuse times. cfg is as
// config.Load returns it.
func newSettings(cfg *config.Config) (*settings, error) {
	if !cfg.Trust.Pinning.Compiled() {
		return nil, errors.New("trust.pinning was not compiled: load the configuration with config.Load")
	}
	set := &settings{
		rules:     cfg.Trust.Rules,
		pinning:   &cfg.Trust.Pinning,
		upstreams: map[string]*upstream{},
		ttl:       cfg.Trust.RefreshTTL,
		// Never longer than verified data would be reused.
		refusalTTL: min(cfg.Trust.RefusalTTL, cfg.Trust.RefreshTTL),
	}
	for i, u := range cfg.Upstreams {
		up := &upstream{index: i, cfg: u}
		if u.Notary.URL != "" {
			var err error
			up.client, err = egress.New(egress.Configured(fmt.Sprintf("upstreams[%d].notary", i), u.Notary, nil, cfg.Limits.UpstreamTimeout))
			if err != nil {
				return nil, err
			}
		}
		set.upstreams[u.Name] = up
	}
	return set, nil
}

// Reconfigure swaps in the pins, upstreams, Notary servers and reuse times
// of cfg (as config.Load returns it) for the views asked for from now on;
// its limits are not taken (they size what New built). Views and refusals
// judged by rules of the configuration before are not reused: callers pass
// the rules of cfg from now on. A View asked for with a rule of the
// configuration before (a request routed just before the reload) is judged
// under that configuration's settings (settingsFor).
func (v *Verifier) Reconfigure(cfg *config.Config) error {
	set, err := newSettings(cfg)
	if err != nil {
		return err
	}
	old := v.settings.Swap(set)
	if before := v.previous.Swap(old); before != nil {
		for _, up := range before.upstreams {
			if up.client != nil {
				up.client.CloseIdleConnections()
			}
		}
	}
	return nil
}

// settingsFor are the settings of the configuration rule r belongs to: a
// request judged by a rule of the configuration before the last reload
// ends under that configuration's pins, Notary servers and reuse times, as
// it ends under its rules. Any other rule (the current configuration's,
// or nil) gets the current settings.
func (v *Verifier) settingsFor(r *config.Rule) *settings {
	cur := v.settings.Load()
	if r == nil || owns(cur.rules, r) {
		return cur
	}
	if prev := v.previous.Load(); prev != nil && owns(prev.rules, r) {
		return prev
	}
	return cur
}

// owns says whether r is one of rules (the same element, not an equal one).
func owns(rules []config.Rule, r *config.Rule) bool {
	for i := range rules {
		if &rules[i] == r {
			return true
		}
	}
	return false
}

// Share keeps the trust metadata floor (cache.MetadataStore.Share), "no
// trust data" refusals and verified trust views on sh as well, shared by
// every replica. Call it before the first View.
func (v *Verifier) Share(sh *cache.Shared) {
	l := v.limits
	v.meta.Share(sh, max(l.RootBytes, l.TimestampBytes, l.SnapshotBytes, l.TargetsBytes))
	v.shared = &sharedState{Shared: sh, log: v.log.Warn}
}

// View returns the verified view of the repository name (GUN e.g.
// docker.io/library/app), fetched from the Notary server of name's upstream
// and judged by r, the rule cfg.Trust.RuleFor(gun) gives for the
// configuration New was given; a nil r (no rule matches) is refused with
// NoRule. A View is reused until the refresh TTL or its metadata's
// expiry, whichever comes first, and concurrent refreshes of one GUN share
// one fetch. Views and refusals are kept by GUN for the rule r they were
// judged by: a View with another rule (the same pattern from a reloaded
// configuration) verifies again. Every error is a *RefusalError about
// the whole repository (Ref "").
func (v *Verifier) View(ctx context.Context, name gun.Name, r *config.Rule) (*View, error) {
	gun := name.String()
	up, rerr := v.lookup(name, r)
	if rerr != nil {
		return nil, rerr
	}
	c, ok := v.views.Get(gun)
	if ok && c.rule == r && time.Now().Before(c.until) {
		v.log.Debug("trust cache hit", "gun", gun, "checked", c.view.Checked, "expires", c.view.Expires)
		return c.view, nil
	}
	if f, ok := v.refusals.Get(gun); ok && f.rule == r && time.Now().Before(f.until) {
		return nil, f.err
	}
	// The refresh outlives a caller that gives up: others may be waiting on it,
	// and each of its requests is bounded by limits.upstream_timeout. What
	// other replicas shared is asked once, inside it, however many wait.
	ch := v.group.DoChan(fmt.Sprintf("%s\x00%p", gun, r), func() (any, error) {
		if rerr := v.shared.get(gun); rerr != nil {
			return nil, rerr
		}
		a := v.anchorOf(gun, r)
		store := v.meta.For(gun, a.stamp)
		if view, until := v.shared.verdict(gun, policyStamp(r, a), store); view != nil {
			until = earliest(until, view.Checked.Add(v.settingsFor(r).ttl)) // never longer than this replica's own refresh_ttl
			v.views.Add(gun, cached{view: view, until: until, rule: r, upstream: up.cfg.Name})
			return view, nil
		}
		view, rerr := v.refresh(context.WithoutCancel(ctx), gun, r, up, a)
		if rerr != nil {
			return nil, rerr
		}
		return view, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*View), nil
	case <-ctx.Done():
		return nil, &RefusalError{GUN: gun, Reason: TrustUnavailable, Err: ctx.Err(),
			Detail: "the request ended before the trust server answered; retry, or raise limits.upstream_timeout if the server is slow"}
	}
}

// OnTrustData returns ctx carrying found, which a refresh of a GUN that
// View runs for ctx calls, in the background, once the GUN's root has
// loaded (the repository has trust data and its root is trusted), while the
// rest of its trust data is still being fetched: the moment to prepare what
// a verified request needs next. A GUN without trust data, or whose root is
// refused, never calls it.
func OnTrustData(ctx context.Context, found func()) context.Context {
	return context.WithValue(ctx, trustDataKey{}, found)
}

type trustDataKey struct{}

// lookup returns the upstream whose Notary server holds name's trust data,
// or why name is refused before any is asked.
func (v *Verifier) lookup(name gun.Name, r *config.Rule) (*upstream, *RefusalError) {
	gun, host := name.String(), name.Upstream()
	if r == nil {
		return nil, &RefusalError{GUN: gun, Reason: NoRule,
			Detail: "no trust.rules entry matches this repository; add a rule whose repositories pattern matches it"}
	}
	up, ok := v.settingsFor(r).upstreams[host]
	if !ok {
		return nil, &RefusalError{GUN: gun, Reason: NoTrustServer,
			Detail: fmt.Sprintf("no upstream is named %q; add it to upstreams with its notary.url", host)}
	}
	if up.client == nil {
		return nil, &RefusalError{GUN: gun, Reason: NoTrustServer,
			Detail: fmt.Sprintf("upstream %s has no Notary server; set upstreams[%d].notary.url, or use mode: audit in the rule for this repository", host, up.index)}
	}
	return up, nil
}

// refresh fetches and verifies gun's trust data, records metrics and caches
// the result.
func (v *Verifier) refresh(ctx context.Context, gun string, r *config.Rule, up *upstream, a anchor) (*View, *RefusalError) {
	start := time.Now()
	view, rerr := v.update(ctx, gun, r, up, a)
	result := "ok"
	if rerr != nil {
		result = string(rerr.Reason)
	}
	if rerr == nil && view.Unreachable != "" {
		result = "unreachable" // served from cache: the trust server gave no fresh timestamp
	}
	v.refreshes.WithLabelValues(result).Inc()
	v.seconds.Observe(time.Since(start).Seconds())
	if rerr != nil && errors.As(rerr, new(*cache.FloorUnreadableError)) {
		return nil, rerr // this replica's, until Redis answers: not kept for refusal_ttl
	}
	if rerr != nil {
		ttl := v.settingsFor(r).refusalTTL
		v.refusals.Add(gun, refused{err: rerr, until: time.Now().Add(ttl), rule: r})
		v.shared.put(gun, rerr, ttl)
		return nil, rerr
	}
	if _, had := v.refusals.Peek(gun); had {
		v.shared.put(gun, nil, 0)
	}
	v.refusals.Remove(gun)
	until := earliest(view.Checked.Add(v.settingsFor(r).ttl), view.Expires)
	if view.Unreachable != "" {
		until = earliest(until, view.Refreshed.Add(r.MaxStaleness))
	}
	v.views.Add(gun, cached{view: view, until: until, rule: r, upstream: up.cfg.Name})
	v.shared.putVerdict(view, policyStamp(r, a), until)
	return view, nil
}

// update runs notary's TUF update for gun against the bounded remote and the
// monotonic cache, its root checked against a's pins, then judges the
// result by r.
func (v *Verifier) update(ctx context.Context, gun string, r *config.Rule, up *upstream, a anchor) (*View, *RefusalError) {
	refuse := func(reason Reason, detail string, err error) *RefusalError {
		return &RefusalError{GUN: gun, Reason: reason, Detail: detail, Err: err}
	}
	store := v.meta.For(gun, a.stamp)
	if ferr := store.FloorKnown(); ferr != nil {
		return nil, refuse(TrustUnavailable, floorDetail, ferr)
	}
	// The delegations the last trusted snapshot listed may not vanish.
	var prev []data.RoleName
	switch b, err := store.GetSized(data.CanonicalSnapshotRole.String(), storage.NoSizeLimit); {
	case err == nil:
		if prev, err = snapshotRoles(b); err != nil {
			return nil, refuse(InvalidMetadata, "the cached snapshot cannot be read; inspect it, delete it if it is damaged, and retry", err)
		}
	case errors.As(err, new(*cache.FloorUnreadableError)):
		return nil, refuse(TrustUnavailable, floorDetail, err)
	case !errors.As(err, new(storage.ErrMetaNotFound)):
		return nil, refuse(InvalidMetadata, cacheDetail, err)
	}
	transport := &deadlineTransport{base: up.client.RoundTripper("repository:" + gun + ":pull"), timeout: v.limits.UpstreamTimeout}
	server := func(rt http.RoundTripper) (storage.RemoteStore, error) {
		return storage.NewNotaryServerStore(strings.TrimSuffix(up.cfg.Notary.URL, "/"), data.GUN(gun), rt)
	}
	if r.TOFU && !a.pins.Pinned() {
		if warned, _ := v.tofuWarned.ContainsOrAdd(gun, struct{}{}); !warned {
			v.log.Warn("trusting root on first use", "gun", gun,
				"hint", "pin it in trust.pinning.certs or trust.pinning.ca")
		}
	}
	var (
		guard         *guardedCache
		remote        *boundedRemote
		repo, invalid *tuf.Repo
		err           error
	)
	load := func() error {
		guard = &guardedCache{MetadataStore: store}
		hs, serr := server(transport)
		if serr != nil {
			return serr
		}
		ahead := newPrefetchRemote(hs, server, transport, v.limits)
		ahead.found, _ = ctx.Value(trustDataKey{}).(func())
		defer ahead.stop()
		remote = newBoundedRemote(ahead, v.limits)
		repo, invalid, err = client.LoadTUFRepo(client.TUFLoadOptions{
			GUN:          data.GUN(gun),
			TrustPinning: trustPinning(gun, a.pins, r.TOFU),
			Cache:        guard,
			RemoteStore:  remote,
		})
		return nil
	}
	if lerr := load(); lerr != nil {
		return nil, refuse(NoTrustServer, fmt.Sprintf("upstreams[%d].notary.url is not usable", up.index), lerr)
	}
	if err != nil && store.DroppedRotated() {
		// notary keeps the versions it loaded before the new root in this
		// update: the update that stored a root replacing the timestamp or
		// snapshot key can only fail. Once more, from the cache without them.
		v.log.Info("a new root replaced timestamp, snapshot or targets keys; updating again without their old versions", "gun", gun, "err", err)
		_ = load()
	}
	limitErr, stale := remote.state()
	switch cerr := guard.failure(); {
	case errors.As(cerr, new(*cache.RollbackError)):
		return nil, refuse(Rollback, "the trust server offered metadata older than the version this proxy has already stored; investigate the server", cerr)
	case errors.As(cerr, new(*cache.FloorUnreadableError)):
		return nil, refuse(TrustUnavailable, floorDetail, cerr)
	case cerr != nil:
		return nil, refuse(InvalidMetadata, cacheDetail, cerr)
	case limitErr != nil:
		return nil, refuse(InvalidMetadata, "the trust server sent more metadata than allowed; raise the named limit only if the repository really needs it", limitErr)
	case err != nil:
		reason, detail := classify(err, up.index)
		if reason == TrustUnavailable && cachedTimestampExpired(store) {
			reason, detail = Expired, fmt.Sprintf("the cached trust data has expired and the trust server cannot be reached to renew it; check upstreams[%d].notary and the network", up.index)
		}
		return nil, refuse(reason, detail, cause(err))
	}
	now := time.Now()
	refreshed := now
	if stale != nil {
		// notary used its cached timestamp: the server gave no fresh one.
		if refreshed, err = store.Refreshed(); err != nil {
			return nil, refuse(InvalidMetadata, cacheDetail, err)
		}
		if age := now.Sub(refreshed); refreshed.IsZero() || age > r.MaxStaleness {
			return nil, refuse(TrustUnavailable, fmt.Sprintf("the trust server has given no fresh timestamp since %s (max_staleness %s), though the cached one has not expired; check upstreams[%d].notary and the network",
				formatTime(refreshed), r.MaxStaleness, up.index), cause(stale))
		}
		v.log.Warn("notary unreachable, using cached metadata", "gun", gun, "refreshed", refreshed,
			"refused_after", refreshed.Add(r.MaxStaleness), "expires", repo.Timestamp.Signed.Expires, "err", cause(stale))
	} else if err := store.MarkRefreshed(now); err != nil {
		return nil, refuse(InvalidMetadata, cacheDetail, err)
	}
	if rerr := checkRoles(gun, prev, repo, invalid, r.Roles, now); rerr != nil {
		return nil, rerr
	}
	view := judge(repo, gun, r, now)
	view.Refreshed = refreshed
	if stale != nil {
		view.Unreachable = cause(stale).Error()
	}
	return view, nil
}

// floorDetail is the refusal detail of a repository this replica has no
// trust data of its own for while Redis, which holds the versions other
// replicas have seen, does not answer.
const floorDetail = "redis is unreachable and this replica has not verified this repository before (nor taken another replica's verification of it), so the trust versions other replicas have seen cannot be checked (a replayed older version would pass); served once redis answers, or by a replica that has verified it before; check redis (this replica's /readyz)"

// cacheDetail is the refusal detail of a trust metadata cache that cannot be
// read or written: the pull fails closed, since notary would carry on
// without its version floors.
const cacheDetail = "the trust metadata cache under data_dir cannot be read or written; fix the file named below (delete it if it is damaged) and retry"

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}

// classify maps a notary update error to a reason and what to do about it.
func classify(err error, upstreamIndex int) (Reason, string) {
	switch {
	case errors.As(err, new(signed.ErrLowVersion)):
		return Rollback, "the trust server offered metadata older than the version this proxy has already verified (a rollback or freeze attack, or a restored server); investigate the server"
	case errors.As(err, new(signed.ErrExpired)):
		return Expired, "the trust data has expired; the repository's signers or its Notary server must re-sign it"
	case isPinError(err):
		return NotPinned, "the repository's root key is not trusted: pin its root certificate ID in trust.pinning.certs or a CA in trust.pinning.ca, or set tofu: true on its rule"
	case errors.As(err, new(client.ErrRepositoryNotExist)), errors.As(err, new(client.ErrRepoNotInitialized)),
		errors.As(err, new(storage.ErrMetaNotFound)):
		return NoTrustData, "the trust server has no trust data for this repository; sign it (docker trust sign, notary publish), or use mode: audit in its rule"
	case errors.As(cause(err), new(*egress.RealmError)):
		return TrustUnavailable, "the trust server's auth challenge names a token realm that is not allowed, so nothing was sent there, and no valid cached trust data exists"
	case errors.As(cause(err), new(*egress.RateLimitError)):
		return TrustUnavailable, "the trust server is rate limiting this proxy and no valid cached trust data exists; retry later"
	case isNetworkError(err), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled), errors.As(err, new(net.Error)):
		return TrustUnavailable, fmt.Sprintf("the trust server could not be reached and no valid cached trust data exists; check upstreams[%d].notary (url, ca_file, credentials) and the network", upstreamIndex)
	default:
		return InvalidMetadata, "the trust data does not verify (signatures, thresholds, checksums or sizes); the repository may be tampered with or badly published"
	}
}

func isPinError(err error) bool {
	if errors.As(err, new(*trustpinning.ErrValidationFail)) || errors.As(err, new(trustpinning.ErrValidationFail)) ||
		errors.As(err, new(*trustpinning.ErrRootRotationFail)) || errors.As(err, new(trustpinning.ErrRootRotationFail)) {
		return true
	}
	// trustpinning.NewTrustPinChecker returns unexported fmt errors.
	msg := err.Error()
	return strings.Contains(msg, "invalid trust pinning specified") ||
		strings.Contains(msg, "could not load root cert from CA path") || strings.Contains(msg, "invalid CA certs provided")
}

// cachedTimestampExpired says whether store holds a timestamp that has
// expired: what makes an unreachable trust server fatal.
func cachedTimestampExpired(store storage.MetadataStore) bool {
	b, err := store.GetSized(data.CanonicalTimestampRole.String(), notary.MaxTimestampSize)
	if err != nil {
		return false
	}
	var ts struct {
		Signed struct {
			Expires time.Time `json:"expires"`
		} `json:"signed"`
	}
	return json.Unmarshal(b, &ts) == nil && !ts.Signed.Expires.IsZero() && time.Now().After(ts.Signed.Expires)
}

// anchor is what decides which root of a GUN is trusted: the pins that
// apply to it, as config.Load compiled them, and its stamp.
type anchor struct {
	pins config.Pins
	// stamp describes the pins, the content of their CA files and whether
	// trust on first use is allowed. The metadata cache is opened with it:
	// a root accepted under another stamp is checked again.
	stamp string
}

// anchorOf returns what decides gun's root under rule r. The pins were
// compiled by config.Load; the CA files are read now, as notary reads them
// in the update, so that a CA file replaced in place changes the stamp.
func (v *Verifier) anchorOf(gun string, r *config.Rule) anchor {
	pins := v.settingsFor(r).pinning.For(gun)
	lines := make([]string, 0, 1+len(pins.CAs))
	if len(pins.CertIDs) > 0 {
		lines = append(lines, "certs "+gun+" "+strings.Join(pins.CertIDs, ","))
	}
	for _, ca := range pins.CAs {
		lines = append(lines, "ca "+ca.Prefix+" "+ca.File+" "+fileDigest(ca.File))
	}
	// Sorted, as the stamps metadata caches were opened with before: they
	// stay valid.
	slices.Sort(lines)
	return anchor{pins: pins, stamp: fmt.Sprintf("tofu %t\n%s\n", r.TOFU, strings.Join(lines, "\n"))}
}

// trustPinning is pins in notary's form: the certificate IDs of gun and the
// CA files of its prefixes. Notary picks from them what it would pick from
// the whole of trust.pinning, which holds no other entries for gun (Load
// refuses notary's trailing-* wildcards).
func trustPinning(gun string, pins config.Pins, tofu bool) trustpinning.TrustPinConfig {
	tp := trustpinning.TrustPinConfig{DisableTOFU: !tofu}
	if len(pins.CertIDs) > 0 {
		tp.Certs = map[string][]string{gun: pins.CertIDs}
	}
	if len(pins.CAs) > 0 {
		tp.CA = make(map[string]string, len(pins.CAs))
		for _, ca := range pins.CAs {
			tp.CA[ca.Prefix] = ca.File
		}
	}
	return tp
}

// fileDigest is the sha256 of the file at path, so that a root accepted
// under a CA file is checked again when the file's content changes (a CA
// replaced in place), or why it cannot be read.
func fileDigest(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unreadable: " + err.Error()
	}
	return digest.FromBytes(b).String()
}

// policyStamp names everything a verdict depends on besides the trust
// data: the rule's pattern, roles and signers (their keys), trust on first
// use, max_staleness and the stamp of the GUN's anchor. A verdict is shared
// only between replicas whose stamps agree (a rollout changing the policy
// shares none).
func policyStamp(r *config.Rule, a anchor) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%q\n%t\n%s\n%s\n", r.Repositories, r.Roles, r.TOFU, r.MaxStaleness, a.stamp)
	for _, s := range r.TrustedSigners {
		fmt.Fprintf(h, "signer %q %q\n", s.Name, s.KeyIDs)
		for _, k := range s.Keys {
			fmt.Fprintf(h, "key %x\n", k)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// guardedCache records the errors of the cache that notary's client logs
// and ignores, so that the update fails closed on them: every failed write
// (a refused rollback among them), and every failed read but a missing
// entry or one larger than notary asked for (both mean "fetch it").
type guardedCache struct {
	storage.MetadataStore
	mu  sync.Mutex
	err error
}

func (g *guardedCache) record(err error) error {
	if err != nil {
		g.mu.Lock()
		if g.err == nil {
			g.err = err
		}
		g.mu.Unlock()
	}
	return err
}

func (g *guardedCache) GetSized(name string, size int64) ([]byte, error) {
	b, err := g.MetadataStore.GetSized(name, size)
	if errors.As(err, new(storage.ErrMetaNotFound)) || errors.As(err, new(storage.ErrMaliciousServer)) {
		return b, err
	}
	return b, g.record(err)
}

func (g *guardedCache) Remove(name string) error {
	return g.record(g.MetadataStore.Remove(name))
}

func (g *guardedCache) RemoveAll() error {
	return g.record(g.MetadataStore.RemoveAll())
}

func (g *guardedCache) Set(name string, blob []byte) error {
	return g.record(g.MetadataStore.Set(name, blob))
}

func (g *guardedCache) SetMulti(m map[string][]byte) error {
	return g.record(g.MetadataStore.SetMulti(m))
}

func (g *guardedCache) failure() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}
