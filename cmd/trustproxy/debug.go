package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"time"

	"github.com/trustproxy/trustproxy/config"
)

// startDebug serves net/http/pprof on cfg.Listen, apart from the registry
// API, and sets the block and mutex profile rates. It returns the server to
// close at stop, or nil when no debug listener is configured.
func startDebug(cfg config.Debug, log *slog.Logger) (*http.Server, error) {
	if cfg.Listen == "" {
		return nil, nil
	}
	runtime.SetBlockProfileRate(cfg.BlockProfileRate)
	runtime.SetMutexProfileFraction(cfg.MutexProfileFraction)
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	l, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("debug listener: %w (set debug.listen to a free address, or remove it)", err)
	}
	if host, _, _ := net.SplitHostPort(cfg.Listen); !isLoopback(host) {
		log.Warn("debug.listen is not on loopback: profiles show request paths to anyone who can reach it", "addr", l.Addr())
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	log.Info("pprof serving", "addr", l.Addr(), "block_profile_rate", cfg.BlockProfileRate)
	return srv, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
