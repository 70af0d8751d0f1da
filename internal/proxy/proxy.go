package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/api/errcode"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/reference"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/cache"
	"github.com/trustproxy/trustproxy/internal/cosign"
	"github.com/trustproxy/trustproxy/internal/fill"
	"github.com/trustproxy/trustproxy/internal/gun"
	"github.com/trustproxy/trustproxy/internal/notation"
	"github.com/trustproxy/trustproxy/internal/refgraph"
	"github.com/trustproxy/trustproxy/internal/scan"
	"github.com/trustproxy/trustproxy/internal/trust"
	"github.com/trustproxy/trustproxy/internal/upstream"
)

// Verifier gives the verified trust view of a repository. Its errors are
// *trust.RefusalError.
type Verifier interface {
	View(ctx context.Context, name gun.Name, r *config.Rule) (*trust.View, error)
	// Metadata returns the signed bytes of a file of notary's read API
	// that the verified view rests on.
	Metadata(ctx context.Context, name gun.Name, r *config.Rule, view *trust.View, file string) ([]byte, error)
	// Servers checks each Notary server, for /readyz.
	Servers(ctx context.Context) []trust.ServerState
	// Reconfigure takes the trust settings of a reloaded configuration.
	Reconfigure(cfg *config.Config) error
}

// policy is the part of the configuration a reload changes, swapped whole:
// the rules, signers and pins (cfg.Trust, with the trust verifier's own
// copy), the upstreams and their clients, the scan policies in the rules
// and the report token.
type policy struct {
	cfg       *config.Config
	upstreams *upstream.Set
	// cosign is the compiled cosign verifier of each rule of cfg listing
	// cosign: a reload compiles new ones with the new rules, so a removed
	// key stops counting with the configuration that removed it.
	cosign map[*config.Rule]*cosign.Verifier
	// notation is the compiled Notation verifier of each rule listing notation.
	notation map[*config.Rule]*notation.Verifier
}

// compileCosign compiles the cosign verifier of each rule of cfg whose
// sources list cosign, from its signers' cosign keys and trust.cosign
// (config.Load checked them).
func compileCosign(cfg *config.Config) (map[*config.Rule]*cosign.Verifier, error) {
	out := map[*config.Rule]*cosign.Verifier{}
	for i := range cfg.Trust.Rules {
		r := &cfg.Trust.Rules[i]
		if !r.Has(config.SourceCosign) {
			continue
		}
		opts := cosign.Options{AllowNoTlog: r.AllowNoTlog}
		if cfg.Trust.Cosign.Root != nil {
			opts.TrustedRoot = cfg.Trust.Cosign.Root
		}
		for _, sg := range r.TrustedSigners {
			k := cosign.Signer{Name: sg.Name}
			if sg.CosignPEM != nil {
				var err error
				if k, err = cosign.ParseSigner(sg.Name, sg.CosignPEM); err != nil {
					return nil, fmt.Errorf("trust.rules[%d]: %w", i, err)
				}
			}
			if id := sg.CosignIdentity; id != nil {
				k.Identity = &cosign.Identity{Issuer: id.Issuer, IssuerRegexp: id.IssuerRegexp, Subject: id.Subject, SubjectRegexp: id.SubjectRegexp}
			}
			if k.Key != nil || k.Identity != nil {
				opts.Signers = append(opts.Signers, k)
			}
		}
		v, err := cosign.New(opts)
		if err != nil {
			return nil, fmt.Errorf("trust.rules[%d]: %w", i, err)
		}
		out[r] = v
	}
	return out, nil
}

// Reconfigure makes cfg (as config.Load returns it) the configuration of
// the requests that arrive from now on: their upstreams, rules, signers,
// pins and scan policies. Requests under way end under the configuration
// they began with. What New built from cfg's other settings (storage,
// Redis, limits, the scan gate's scanners) stays: internal/reload says
// which settings need a restart. On error nothing changed.
func (s *Server) Reconfigure(cfg *config.Config) error {
	ups, err := upstream.NewSet(cfg, s.upstreamM)
	if err != nil {
		return err
	}
	cv, err := compileCosign(cfg)
	if err != nil {
		return err
	}
	nv, err := compileNotation(cfg)
	if err != nil {
		return err
	}
	if err := s.verify.Reconfigure(cfg); err != nil {
		return err
	}
	s.policy.Store(&policy{cfg: cfg, upstreams: ups, cosign: cv, notation: nv})
	return nil
}

var _ Verifier = (*trust.Verifier)(nil)

// Parts are what a Server serves with, opened from the configuration
// (internal/wiring does it for `trustproxy serve`).
type Parts struct {
	Store  distribution.Namespace
	Driver storagedriver.StorageDriver // Store's: stored blobs are read from it directly; nil: through Store
	Verify Verifier
	Gate   *scan.Gate     // nil: no scan gate configured
	Graph  refgraph.Graph // what verified manifests list; nil: this process's own, in memory
	Shared *cache.Shared  // nil: no shared state; else blob fills are shared with the replicas at redis.replica_url
	Pulls  Pulls          // nil: pulls are not recorded (no retention configured)
}

// Pulls records that a repository's manifest was pulled, for the storage
// collector (internal/retention), which keeps what is pulled. Record is
// called before the manifest is sent; it logs its own failures.
type Pulls interface {
	Record(ctx context.Context, name gun.Name, d digest.Digest)
}

// Server is the registry read API. It is an http.Handler for /v2/.
type Server struct {
	// policy is what a configuration reload changes (Reconfigure); limits
	// and the rest are the configuration New was given.
	policy      atomic.Pointer[policy]
	limits      config.Limits
	store       distribution.Namespace
	driver      storagedriver.StorageDriver
	verifyBlobs bool // storage_verify_blobs: stored blobs hashed as they are served
	verify      Verifier
	gate        *scan.Gate
	shared      *cache.Shared
	graph       refgraph.Graph
	pulls       Pulls
	fills       *fill.Fills
	upstreamM   *upstream.Metrics
	log         *slog.Logger
	decisions   *slog.Logger
	metrics     *metrics

	ready     readiness
	manifests singleflight.Group           // one upstream manifest fetch per gun.Name.At
	recorded  *lru.Cache[string, recorded] // the last recording pass of each repository, by GUN
	// recordPasses counts the recording passes ended (recorded.pass).
	recordPasses atomic.Uint64
	// afterMiss, when set (by tests), runs when find's first lookup in the
	// graph misses.
	afterMiss func()
	cosign    *digestSource // cosign verdicts and the verified set, for rules listing cosign
	notation  *digestSource // Notation's, for rules listing notation
	referrers *referrerSet  // the subjects of the referrers served (referrers.go)
	peerTLS   *tls.Config   // the peer listener's, with redis.peer_tls; nil: peers ask on the registry port
}

// New returns the registry read API for cfg's upstreams over p. Every route
// to content asks p.Verify first. Metrics are registered on reg.
func New(cfg *config.Config, p Parts, log *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	um, err := upstream.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	ups, err := upstream.NewSet(cfg, um)
	if err != nil {
		return nil, err
	}
	rec, err := lru.New[string, recorded](maxRecorded)
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	log = log.With("component", "proxy")
	fills, err := fill.New(cfg.DataDir, cfg.Limits, m.upstream, log)
	if err != nil {
		return nil, err
	}
	if reg != nil {
		for _, c := range fills.Collectors() {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	if p.Graph == nil {
		p.Graph = refgraph.NewMemory()
	}
	cs, err := newCosignSource(p.Shared)
	if err != nil {
		return nil, err
	}
	cv, err := compileCosign(cfg)
	if err != nil {
		return nil, err
	}
	ns, err := newNotationSource(p.Shared)
	if err != nil {
		return nil, err
	}
	nv, err := compileNotation(cfg)
	if err != nil {
		return nil, err
	}
	s := &Server{
		limits: cfg.Limits, store: p.Store, driver: p.Driver, verifyBlobs: cfg.VerifyStoredBlobs(), verify: p.Verify, gate: p.Gate, shared: p.Shared,
		graph: p.Graph, pulls: p.Pulls, fills: fills, upstreamM: um,
		log: log, decisions: log.With("log", "decision"), metrics: m, recorded: rec, cosign: cs, notation: ns,
		referrers: newReferrerSet(),
	}
	s.policy.Store(&policy{cfg: cfg, upstreams: ups, cosign: cv, notation: nv})
	if sh := p.Shared; sh != nil {
		sh.Health.Watch(s.setDegraded)
		if u := strings.TrimSuffix(cfg.Redis.ReplicaURL, "/"); u != "" {
			var client *tls.Config
			if cfg.Redis.PeerTLS.Enabled() {
				if s.peerTLS, client, err = fill.PeerTLS(cfg.Redis.PeerTLS); err != nil {
					return nil, err
				}
			}
			fills.Share(sh, u, cfg.Redis.Peers, client)
		}
	}
	return s, nil
}

// setDegraded records whether the shared state on Redis is unreachable.
func (s *Server) setDegraded(down bool) {
	v := 0.0
	if down {
		v = 1
	}
	s.metrics.degraded.Set(v)
}

// Filling says whether this process is filling blob d (in any
// repository): the storage collector leaves it alone.
func (s *Server) Filling(d digest.Digest) bool { return s.fills.Filling(d) }

// RuleFor is the rule of the running configuration (the last one
// Reconfigure applied) that judges gun, or nil: the storage collector
// keeps what it would serve.
func (s *Server) RuleFor(gun string) *config.Rule { return s.policy.Load().cfg.Trust.RuleFor(gun) }

// Close stops the blob fills (fill.Fills.Close): from its call on, a
// request that would start or join one gets 503 UNAVAILABLE, and every
// running fill is cancelled, nothing partial committed. Requests that need
// no fill are still served: stop the http.Server first (Shutdown), so that
// no request is cut off by Close while it could finish.
func (s *Server) Close(ctx context.Context) error {
	if s.shared != nil {
		defer s.shared.Close()
	}
	return s.fills.Close(ctx)
}

// Handler serves the registry API (/v2/), the admin API (/admin/) and
// other replicas' requests for fills (/internal/fills), and sends every
// other path to other (metrics, health). Registry paths reach the Server as
// they came: an http.ServeMux would clean them and redirect, where the
// Server refuses what is not canonical.
func (s *Server) Handler(other http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch p := r.URL.Path; {
		case p == "/v2" || strings.HasPrefix(p, "/v2/"):
			s.ServeHTTP(w, withRequestID(w, r))
		case strings.HasPrefix(p, "/admin/"):
			s.adminHandler(w, withRequestID(w, r))
		case p == "/internal/fills" && s.peerTLS == nil:
			s.fills.ServePeer(w, r)
		default:
			other.ServeHTTP(w, r)
		}
	})
}

// PeerServer returns what the peer listener (redis.peer_listen) serves:
// the other replicas' requests for fills, and its TLS configuration (mutual
// TLS under the cluster CA). nil when peer TLS is not configured: then the
// registry port serves those requests (Handler).
func (s *Server) PeerServer() (http.Handler, *tls.Config) {
	if s.peerTLS == nil {
		return nil, nil
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /internal/fills", s.fills.ServePeer)
	return mux, s.peerTLS
}

// ServeHTTP routes /v2/ requests. Only GET and HEAD are served; the catalog
// is not; a write is refused by decide. Each write to the client is
// bounded by limits.client_write_timeout.
func (s *Server) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	w := newTimedWriter(rw, s.limits.ClientWriteTimeout)
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		_, err := s.decide(r.Context(), s.writeRequest(r), decideOptions{})
		writeError(w, err)
		return
	}
	if r.URL.Path == "/v2/" || r.URL.Path == "/v2" {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("{}"))
		return
	}
	if r.URL.Path == "/v2/_catalog" {
		writeError(w, &requestError{errcode.ErrorCodeUnsupported, "the catalog is not served: trustproxy lists no repositories"})
		return
	}
	req, err := s.parse(r)
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
	case kindTrustData:
		err = s.serveTrustData(w, r, req)
	case kindReferrers:
		err = s.serveReferrers(w, r, req)
	}
	if u, ok := errors.AsType[*upstream.Error](err); ok {
		s.log.Warn("upstream request failed", "repo", req.name.String(), "ref", req.ref, "err", u)
	}
	if _, ok := errors.AsType[*storageError](err); ok {
		s.log.Error("storage failed", "repo", req.name.String(), "ref", req.ref, "err", err)
	}
	if err != nil {
		writeError(w, err)
	}
}

// repository opens the storage repository of req, under its storage name.
func (s *Server) repository(ctx context.Context, req *request) (distribution.Repository, error) {
	named, err := reference.WithName(req.name.StorageName())
	if err != nil {
		return nil, &requestError{errcode.ErrorCodeNameInvalid, err.Error()}
	}
	return s.store.Repository(ctx, named)
}
