package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/reference"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/cache"
	"github.com/trustproxy/trustproxy/internal/scan"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// Verifier gives the verified view of a repository's trust data. Its errors
// are *trust.RefusalError.
type Verifier interface {
	Snapshot(ctx context.Context, gun string, r *config.Rule) (*trust.Snapshot, error)
}

var _ Verifier = (*trust.Verifier)(nil)

// Server is the registry read API. It is an http.Handler for /v2/.
type Server struct {
	cfg       *config.Config
	store     distribution.Namespace
	driver    storagedriver.StorageDriver // store's: stored blobs are read from it directly
	verify    Verifier
	gate      *scan.Gate    // nil: no scan gate configured
	shared    *cache.Shared // nil: no shared state
	peers     *peers        // nil: fills are not shared between replicas
	upstreams *upstreams
	log       *slog.Logger
	decisions *slog.Logger
	metrics   *metrics
	spoolDir  string

	manifests singleflight.Group           // one upstream manifest fetch per repository and digest
	index     refIndex                     // what verified manifests refer to
	recorded  *lru.Cache[string, recorded] // the last recording pass of each repository, by GUN
	fillMu    sync.Mutex
	fills     map[string]*fill // blob downloads under way, by GUN@digest
	memFills  int64            // bytes of the fills held in memory (smallBlob)
	closing   bool             // Close was called: no fill starts or is joined
	fillCtx   context.Context  // the parent of every fill's context (fills outlive requests); Close cancels it
	stopFills context.CancelCauseFunc
	running   sync.WaitGroup // the fill goroutines
}

// New returns the registry read API for cfg's upstreams over store. Every
// route to content asks v first. Metrics are registered on reg.
func New(cfg *config.Config, store distribution.Namespace, driver storagedriver.StorageDriver, v Verifier, gate *scan.Gate, log *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	ups, err := newUpstreams(cfg)
	if err != nil {
		return nil, err
	}
	spool := filepath.Join(cfg.DataDir, "spool")
	if err := os.MkdirAll(spool, 0o700); err != nil {
		return nil, fmt.Errorf("spool directory: %w", err)
	}
	removeStaleSpool(spool, max(time.Hour, 2*cfg.Limits.BlobIdleTimeout), log)
	rec, err := lru.New[string, recorded](maxRecorded)
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	log = log.With("component", "proxy")
	fillCtx, stopFills := context.WithCancelCause(context.Background())
	return &Server{
		cfg: cfg, store: store, driver: driver, verify: v, gate: gate, upstreams: ups,
		log: log, decisions: log.With("log", "decision"), metrics: m,
		spoolDir: spool, index: newMemIndex(), recorded: rec, fills: map[string]*fill{},
		fillCtx: fillCtx, stopFills: stopFills,
	}, nil
}

// setDegraded records whether the shared state on Redis is unreachable.
func (s *Server) setDegraded(down bool) {
	v := 0.0
	if down {
		v = 1
	}
	s.metrics.degraded.Set(v)
}

// Ready says whether the Server serves with everything it was configured
// with: "ok", or what it is doing without (it still serves).
func (s *Server) Ready() string {
	if s.shared != nil && s.shared.Health.Degraded() {
		return "degraded: redis unreachable; serving with this replica's own trust floor"
	}
	return "ok"
}

// closingDetail is what a request that needs a blob fill is told once Close
// has begun, and the cause of the fills it cancels.
const closingDetail = "trustproxy is shutting down"

// Close stops the blob fills: from its call on, a request that would start
// or join one gets 503 UNAVAILABLE; every running fill is cancelled (its
// upload cancelled, nothing partial committed, its spool file removed) and
// Close waits for them to end, or for ctx, whose error it then returns.
// Requests that need no fill are still served: stop the http.Server first
// (Shutdown), so that no request is cut off by Close while it could finish.
func (s *Server) Close(ctx context.Context) error {
	s.fillMu.Lock()
	s.closing = true
	n := len(s.fills)
	s.fillMu.Unlock()
	s.stopFills(errors.New(closingDetail))
	done := make(chan struct{})
	go func() {
		s.running.Wait()
		close(done)
	}()
	if s.shared != nil {
		defer s.shared.Redis.Close()
	}
	select {
	case <-done:
		if n > 0 {
			s.log.Info("blob fills cancelled", "fills", n)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("blob fills still running after cancellation: %w", context.Cause(ctx))
	}
}

// ServeHTTP routes /v2/ requests. Only GET and HEAD are served; the catalog
// is not. Each write to the client is bounded by limits.client_write_timeout.
func (s *Server) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	w := newTimedWriter(rw, s.cfg.Limits.ClientWriteTimeout)
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		s.refuseWrite(w, r)
		return
	}
	if r.URL.Path == "/v2/" || r.URL.Path == "/v2" {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("{}"))
		return
	}
	if r.URL.Path == "/v2/_catalog" {
		writeError(w, &requestError{codeUnsupported, "the catalog is not served: trustproxy lists no repositories"})
		return
	}
	req, err := s.parse(r)
	if err == nil {
		err = s.checkGrant(r, req)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	switch req.kind {
	case kindManifest:
		err = s.serveManifest(w, r, req)
	case kindBlob:
		err = s.serveBlob(w, r, req)
	case kindTags:
		err = s.serveTags(w, r, req)
	}
	if u, ok := errors.AsType[*upstreamError](err); ok {
		s.log.Warn("upstream request failed", "repo", req.gun, "ref", req.ref, "err", u)
	}
	if err != nil {
		writeError(w, err)
	}
}

// repository opens the storage repository of gun.
func (s *Server) repository(ctx context.Context, gun string) (distribution.Repository, error) {
	named, err := reference.WithName(gun)
	if err != nil {
		return nil, &requestError{codeNameInvalid, err.Error()}
	}
	return s.store.Repository(ctx, named)
}

// refuseWrite refuses a push or delete. The refusal names the repository
// the path is about, when it names one.
func (s *Server) refuseWrite(w http.ResponseWriter, r *http.Request) {
	refusal := &trust.RefusalError{GUN: s.writeTarget(r), Reason: ReasonReadOnly,
		Detail: "trustproxy is a read-only mirror; push to the upstream registry"}
	d := refusalDecision("write", refusal)
	d.Ref = r.Method
	s.logDecision(r.Context(), d)
	writeError(w, refusal)
}

// writeTarget is the GUN a write request's path names, or "" when it
// names none: the path up to its manifests, blobs or tags segment.
func (s *Server) writeTarget(r *http.Request) string {
	rest, ok := strings.CutPrefix(r.URL.Path, "/v2/")
	if !ok {
		return ""
	}
	segs := strings.Split(rest, "/")
	i := slices.IndexFunc(segs, func(seg string) bool { return seg == "manifests" || seg == "blobs" || seg == "tags" })
	if i <= 0 {
		return ""
	}
	up, repo, err := s.upstreams.pick(r.URL.Query(), strings.Join(segs[:i], "/"))
	if err != nil {
		return ""
	}
	gun := up.cfg.Name + "/" + repo
	if _, err := reference.WithName(gun); err != nil {
		return ""
	}
	return gun
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
