package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/proxy"
)

// serve runs trustproxy until ctx ends.
func serve(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	srv, addr, err := start(ctx, cfg, log)
	if err != nil {
		return err
	}
	log.Info("trustproxy serving", "addr", addr, "upstreams", len(cfg.Upstreams), "version", buildVersion())
	<-ctx.Done()
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(shutdown)
}

// start wires trustproxy from cfg and starts serving. It returns the
// server, to shut down, and the address it listens on.
func start(ctx context.Context, cfg *config.Config, log *slog.Logger) (*http.Server, string, error) {
	warnings(cfg, log)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	p, err := proxy.Open(ctx, cfg, log, reg)
	if err != nil {
		return nil, "", err
	}
	mux := http.NewServeMux()
	mux.Handle("/v2/", p)
	mux.Handle("/v2", p)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		// Reset at each request; /v2/ responses extend it per write
		// (proxy's timedWriter), so only a client that stops reading hits it.
		WriteTimeout:   cfg.Limits.ClientWriteTimeout,
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	l, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, "", fmt.Errorf("listen: %w (set listen: in the config, or TRUSTPROXY_LISTEN)", err)
	}
	go func() {
		var err error
		if cfg.TLS.CertFile != "" {
			err = srv.ServeTLS(l, cfg.TLS.CertFile, cfg.TLS.KeyFile)
		} else {
			err = srv.Serve(l)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("server stopped", "err", err)
		}
	}()
	return srv, l.Addr().String(), nil
}

// warnings logs what an operator should know about cfg at start.
func warnings(cfg *config.Config, log *slog.Logger) {
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
