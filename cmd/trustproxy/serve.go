package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/reload"
	"github.com/trustproxy/trustproxy/internal/wiring"
)

// serve runs trustproxy until ctx ends (SIGTERM or SIGINT, see main) or its
// listener fails, whose error it returns. On ctx's end it stops as
// server.stop says.
//
// With a configuration file, the configuration is reloaded on SIGHUP and
// when the file or a file it names changes (internal/reload); level is the
// log level, which a reload sets.
func serve(ctx context.Context, cfg *config.Config, file string, level *slog.LevelVar, log *slog.Logger) error {
	wiring.LogRedisTo(log)
	s, err := start(ctx, cfg, file, level, log)
	if err != nil {
		return err
	}
	if s.reload != nil {
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		watchCtx, stopWatch := context.WithCancel(ctx)
		defer stopWatch()
		go s.reload.Watch(watchCtx, reloadInterval, hup)
	}
	log.Info("trustproxy serving", "addr", s.addr, "upstreams", len(cfg.Upstreams), "version", buildVersion())
	select {
	case err := <-s.failed:
		_ = s.http.Close()
		s.closeSide()
		closeCtx, cancel := context.WithTimeout(context.Background(), fillStopTimeout)
		defer cancel()
		return errors.Join(err, s.proxy.Close(closeCtx))
	case <-ctx.Done():
	}
	log.Info("trustproxy stopping", "shutdown_timeout", cfg.Limits.ShutdownTimeout)
	return s.stop(cfg.Limits.ShutdownTimeout, log)
}

// reloadInterval is how often the configuration file and the files it
// names are checked for changes.
var reloadInterval = 2 * time.Second

// fillStopTimeout bounds the wait for cancelled blob fills to end (their
// uploads cancelled, spool files removed) once the requests are done.
const fillStopTimeout = 10 * time.Second

// server is a running trustproxy: its HTTP server, the proxy behind it, the
// address it listens on, and the listener's failure, if it fails.
type server struct {
	http    *http.Server
	peer    *http.Server     // nil without redis.peer_listen
	debug   *http.Server     // nil without debug.listen
	metrics *http.Server     // nil without metrics.listen
	reload  *reload.Reloader // nil without a configuration file
	proxy   *wiring.Proxy    // its Close stops the storage collector, then the fills
	addr    string
	failed  <-chan error // receives the error Serve returned, other than ErrServerClosed
}

// start wires trustproxy from cfg and starts serving. With file, the
// configuration cfg was loaded from, it also prepares its reloads, which
// set level.
func start(ctx context.Context, cfg *config.Config, file string, level *slog.LevelVar, log *slog.Logger) (*server, error) {
	warnings(cfg, log)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	p, err := wiring.Open(ctx, cfg, log, reg)
	if err != nil {
		return nil, err
	}
	var rl *reload.Reloader
	if file != "" {
		apply := func(next *config.Config) error {
			if err := p.Reconfigure(next); err != nil {
				return err
			}
			level.Set(logLevel(next.Log.Level).Level())
			warnings(next, log)
			return nil
		}
		if rl, err = reload.New(file, os.Environ(), cfg, apply, log, reg); err != nil {
			_ = p.Close(ctx)
			return nil, err
		}
	}
	// The registry port listens before the metrics listener's /healthz
	// answers: a probe that finds it alive finds the registry port taking
	// connections.
	l, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		_ = p.Close(ctx)
		return nil, fmt.Errorf("listen: %w (set listen: in the config, or TRUSTPROXY_LISTEN)", err)
	}
	peer, err := startPeer(cfg.Redis.PeerListen, p.Server, log)
	if err != nil {
		_ = l.Close()
		_ = p.Close(ctx)
		return nil, err
	}
	debug, err := startDebug(cfg.Debug, log)
	if err != nil {
		_ = l.Close()
		if peer != nil {
			_ = peer.Close()
		}
		_ = p.Close(ctx)
		return nil, err
	}
	health := healthMux(p.Server, rl)
	metrics, err := startMetrics(cfg.Metrics, health, reg, log)
	if err != nil {
		_ = l.Close()
		_ = p.Close(ctx)
		for _, side := range []*http.Server{peer, debug} {
			if side != nil {
				_ = side.Close()
			}
		}
		return nil, err
	}
	srv := &http.Server{
		Handler:           p.Handler(health),
		ReadHeaderTimeout: 10 * time.Second,
		// Reset at each request; /v2/ responses extend it per write
		// (proxy's timedWriter), so only a client that stops reading hits it.
		WriteTimeout:   cfg.Limits.ClientWriteTimeout,
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	failed := make(chan error, 1)
	go func() {
		var err error
		if cfg.TLS.CertFile != "" {
			err = srv.ServeTLS(l, cfg.TLS.CertFile, cfg.TLS.KeyFile)
		} else {
			err = srv.Serve(l)
		}
		if errors.Is(err, http.ErrServerClosed) {
			return
		}
		_ = l.Close() // ServeTLS returns without closing it when the certificate does not load
		if cfg.TLS.CertFile != "" {
			err = fmt.Errorf("serve https on %s: %w (check tls.cert_file %s and tls.key_file %s)",
				l.Addr(), err, cfg.TLS.CertFile, cfg.TLS.KeyFile)
		} else {
			err = fmt.Errorf("serve on %s: %w", l.Addr(), err)
		}
		failed <- err
	}()
	if p.Retention != nil {
		p.Retention.Start()
	}
	return &server{http: srv, peer: peer, debug: debug, metrics: metrics, reload: rl, proxy: p, addr: l.Addr().String(), failed: failed}, nil
}

// stop stops s gracefully: the listener closes at once, requests in flight
// get up to timeout to finish (and blob fills go on meanwhile, so that the
// requests streaming them can), then connections still open are closed and
// the fills still running are cancelled. Nothing partial is stored. A
// request cut off is logged, not an error: the stop was asked for.
func (s *server) stop(timeout time.Duration, log *slog.Logger) error {
	shutdown, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for _, srv := range []*http.Server{s.http, s.peer} {
		if srv == nil {
			continue
		}
		if err := srv.Shutdown(shutdown); err != nil {
			log.Warn("requests still running at limits.shutdown_timeout: their connections are closed", "shutdown_timeout", timeout, "err", err)
			_ = srv.Close()
		}
	}
	s.closeSide()
	closeCtx, cancelClose := context.WithTimeout(context.Background(), fillStopTimeout)
	defer cancelClose()
	return s.proxy.Close(closeCtx)
}

// closeSide closes the peer, debug and metrics listeners.
func (s *server) closeSide() {
	for _, side := range []*http.Server{s.peer, s.debug, s.metrics} {
		if side != nil {
			_ = side.Close()
		}
	}
}

// healthMux serves /healthz (alive) and /readyz (proxy.Server.Readiness:
// 503 when the replica cannot serve; and the running configuration's
// fingerprint when rl is not nil), on both listeners.
func healthMux(p *proxy.Server, rl *reload.Reloader) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ready := p.Readiness(r.Context())
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !ready.OK {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_, _ = w.Write([]byte(ready.String()))
		if rl != nil {
			_, _ = w.Write([]byte("config: " + rl.Fingerprint() + "\n"))
		}
	})
	return mux
}

// startPeer serves the other replicas' fill requests on addr, over mutual
// TLS under the cluster CA (proxy.Server.PeerServer). It returns the server
// to stop with the registry's, or nil when no peer listener is configured.
func startPeer(addr string, p *proxy.Server, log *slog.Logger) (*http.Server, error) {
	h, tc := p.PeerServer()
	if addr == "" || h == nil {
		return nil, nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("peer listener: %w (set redis.peer_listen to a free address)", err)
	}
	srv := &http.Server{Handler: h, TLSConfig: tc, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		MaxHeaderBytes: 16 << 10, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	go func() {
		if err := srv.Serve(tls.NewListener(l, tc)); !errors.Is(err, http.ErrServerClosed) {
			log.Error("peer listener failed: other replicas fetch cold blobs themselves", "addr", l.Addr(), "err", err)
		}
	}()
	log.Info("peer listener serving over mutual TLS", "addr", l.Addr())
	return srv, nil
}

// startMetrics serves /metrics from reg, and health's routes, on
// cfg.Listen, apart from the registry API. It returns the server to close
// at stop, or nil when no metrics listener is configured.
func startMetrics(cfg config.Metrics, health *http.ServeMux, reg *prometheus.Registry, log *slog.Logger) (*http.Server, error) {
	if cfg.Listen == "" {
		log.Info("no metrics listener: set metrics.listen (or TRUSTPROXY_METRICS_LISTEN) to serve /metrics")
		return nil, nil
	}
	l, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w (set metrics.listen to a free address, or remove it)", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/", health)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	log.Info("metrics serving", "addr", l.Addr())
	return srv, nil
}

// warnings logs what an operator should know about cfg at start.
func warnings(cfg *config.Config, log *slog.Logger) {
	if u, err := url.Parse(cfg.Scan.RegistryURL); err == nil && u.Scheme == "http" {
		if ip := net.ParseIP(u.Hostname()); ip == nil || !ip.IsLoopback() {
			log.Warn("scan.registry_url is http://: the scanners' pull credentials cross the network in the clear; use https",
				"registry_url", cfg.Scan.RegistryURL)
		}
	}
	for i, u := range cfg.Upstreams {
		if u.Notary.URL == "" {
			log.Warn("upstream has no notary server: its pulls are refused in enforce mode; set upstreams[i].notary.url",
				"upstream", u.Name, "index", i)
		}
	}
	for i, r := range cfg.Trust.Rules {
		if r.TOFU {
			log.Warn("rule trusts roots on first use: the first fetch decides the root; pin roots in trust.pinning",
				"rule", i, "repositories", r.Repositories)
		}
		if r.Mode == config.Audit {
			log.Warn("rule is in audit mode: what fails verification is served and logged", "rule", i, "repositories", r.Repositories)
		}
	}
}
