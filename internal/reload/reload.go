package reload

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trustproxy/trustproxy/config"
)

// Apply takes a validated configuration into use; on error nothing
// changed.
type Apply func(*config.Config) error

// Reloader reloads the configuration file at one path.
type Reloader struct {
	path  string
	env   []string
	apply Apply
	log   *slog.Logger

	mu          sync.Mutex // one reload at a time; guards the fields below
	running     *config.Config
	fingerprint string

	reloads *prometheus.CounterVec // trustproxy_config_reload_total{result}
	info    *prometheus.GaugeVec   // trustproxy_config_info{fingerprint}
}

// New returns the Reloader of the configuration file path, whose running
// configuration, loaded with env, is running; apply takes each new one.
// Its metrics are registered on reg.
func New(path string, env []string, running *config.Config, apply Apply, log *slog.Logger, reg prometheus.Registerer) (*Reloader, error) {
	r := &Reloader{path: path, env: env, apply: apply, log: log.With("component", "reload"), running: running,
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustproxy_config_reload_total",
			Help: "Configuration reloads, by result: ok (applied), unchanged (nothing to apply) or error (refused; the running configuration stays).",
		}, []string{"result"}),
		info: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "trustproxy_config_info",
			Help: "1 for the fingerprint of the running configuration (a hash of its file and every file it names); the same on every replica that runs the same one.",
		}, []string{"fingerprint"}),
	}
	for _, c := range []prometheus.Collector{r.reloads, r.info} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	fp, err := Fingerprint(path, running)
	if err != nil {
		return nil, err
	}
	r.setFingerprint(fp)
	return r, nil
}

// Fingerprint is the hash of the configuration file at path and of every
// file c names, each with its path: what changes when any of them does.
func Fingerprint(path string, c *config.Config) (string, error) {
	h := sha256.New()
	for _, f := range append([]string{path}, c.Files()...) {
		fmt.Fprintf(h, "%s\n", f)
		file, err := os.Open(f)
		if err != nil {
			// A file that went missing changes the fingerprint too; the
			// reload that follows says what is wrong with it.
			fmt.Fprintf(h, "unreadable: %v\n", err)
			continue
		}
		_, err = io.Copy(h, io.LimitReader(file, maxFileBytes))
		file.Close()
		if err != nil {
			fmt.Fprintf(h, "unreadable: %v\n", err)
		}
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// maxFileBytes bounds what Fingerprint reads of one file.
const maxFileBytes = 64 << 20

// Fingerprint is the running configuration's fingerprint.
func (r *Reloader) Fingerprint() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fingerprint
}

// Running is the running configuration.
func (r *Reloader) Running() *config.Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.running
}

func (r *Reloader) setFingerprint(fp string) {
	r.info.Reset()
	r.info.WithLabelValues(fp).Set(1)
	r.fingerprint = fp
}

// ErrUnchanged is Reload's answer when the file and the files it names are
// as they were.
var ErrUnchanged = errors.New("the configuration and the files it names are unchanged")

// Reload loads the file, validates it and applies it, keeping the running
// values of the settings that need a restart (logged by name). An invalid
// file is refused: the error names the field, it is logged, and the running
// configuration stays. With force false, a file whose fingerprint is the
// running one's is not loaded again (ErrUnchanged).
func (r *Reloader) Reload(force bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	next, err := config.LoadFile(r.path, r.env)
	if err != nil {
		r.reloads.WithLabelValues("error").Inc()
		r.log.Error("configuration refused: the running configuration stays; fix the file and reload", "file", r.path, "err", err)
		return err
	}
	fp, err := Fingerprint(r.path, next)
	if err != nil {
		return err
	}
	if !force && fp == r.fingerprint {
		r.reloads.WithLabelValues("unchanged").Inc()
		return ErrUnchanged
	}
	if restart := r.running.RestartNeeded(next); len(restart) > 0 {
		r.log.Warn("settings that change only at a restart keep their running values until trustproxy restarts; the others apply now",
			"file", r.path, "restart_needed", restart)
	}
	applied := r.running.KeepRestartSettings(next)
	if err := r.apply(applied); err != nil {
		r.reloads.WithLabelValues("error").Inc()
		r.log.Error("configuration refused: the running configuration stays", "file", r.path, "err", err)
		return err
	}
	r.running = applied
	r.setFingerprint(fp)
	r.reloads.WithLabelValues("ok").Inc()
	r.log.Info("configuration reloaded", "file", r.path, "fingerprint", fp)
	return nil
}

// Watch reloads whenever the fingerprint changes, checking every interval,
// and whenever hup receives, until ctx ends. A change is taken once the
// files have stayed the same for one interval, so that a half-written
// file is not read.
func (r *Reloader) Watch(ctx context.Context, interval time.Duration, hup <-chan os.Signal) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var seen string    // a fingerprint seen changed at the last tick
	var refused string // the fingerprint of the files last refused
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			r.log.Info("SIGHUP: reloading the configuration", "file", r.path)
			_ = r.Reload(true)
			seen, refused = "", ""
		case <-tick.C:
			fp, err := Fingerprint(r.path, r.Running())
			if err != nil || fp == r.Fingerprint() || fp == refused {
				seen = ""
				continue
			}
			if fp != seen {
				seen = fp // changed: wait one interval for it to settle
				continue
			}
			seen = ""
			if err := r.Reload(false); err != nil && !errors.Is(err, ErrUnchanged) {
				refused = fp // logged; not tried again until something changes
			}
		}
	}
}
