package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/sirupsen/logrus"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/demo"
	"github.com/trustproxy/trustproxy/internal/sample"
)

// runDemo starts the demo's upstream and Notary server, runs trustproxy in
// front of them, pulls a signed and an unsigned image through it and prints
// what happened; then it serves on until ctx ends, unless exit is set.
func runDemo(ctx context.Context, listen, dir string, exit bool, stdout io.Writer) error {
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "trustproxy-demo-"); err != nil {
			return err
		}
	}
	logrus.SetOutput(io.Discard) // the demo's in-process upstream logs every 404 it answers
	d, err := demo.Start(ctx, dir, listen)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer d.Close()
	cfg, err := config.LoadFile(d.ConfigFile, nil)
	if err != nil {
		return err
	}
	logFile := filepath.Join(dir, "trustproxy.log")
	lf, err := os.Create(logFile)
	if err != nil {
		return err
	}
	defer lf.Close()
	log := newLogger(lf, "info")
	srv, err := start(ctx, cfg, "", nil, log)
	if err != nil {
		return err
	}
	defer func() { _ = srv.stop(cfg.Limits.ShutdownTimeout, log) }()
	addr := srv.addr

	fmt.Fprintf(stdout, "trustproxy demo: upstream registry %s, notary server %s\n", d.Upstream, d.Notary)
	fmt.Fprintf(stdout, "trustproxy listening on %s, config %s, log %s\n\n", addr, d.ConfigFile, logFile)
	ok := true
	pull := func(ref string, wantServed bool) {
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		dgst, err := sample.Pull(pctx, addr+"/"+ref)
		switch {
		case err == nil:
			fmt.Fprintf(stdout, "pull %-16s SERVED   %s (signed by the trusted signer, verified, cached)\n", ref, dgst)
		default:
			fmt.Fprintf(stdout, "pull %-16s REFUSED  %s\n", ref, refusalMessage(err))
		}
		ok = ok && (err == nil) == wantServed
	}
	pull(demo.Signed, true)
	pull(demo.Unsigned, false)
	pull(demo.NoTrust, false)
	if !ok {
		return errors.New("demo: the pulls did not come out as expected; see " + logFile)
	}
	if exit {
		return nil
	}
	fmt.Fprintf(stdout, `
Try it yourself while this runs (Ctrl-C stops it):
  curl -s http://%[1]s/v2/library/hello/tags/list
  curl -s http://%[1]s/v2/library/hello/manifests/2      # refused, with the reason
  crane manifest --insecure %[1]s/library/hello:1
  crane pull --insecure %[1]s/library/hello:1 hello.tar
  docker pull %[1]s/library/hello:1                       # docker allows plain HTTP on 127.0.0.0/8
  docker pull %[1]s/library/hello:2                       # refused: "not signed"
As a registry mirror, put {"registry-mirrors": ["http://%[1]s"]} in /etc/docker/daemon.json
and "docker pull hello:1" goes through trustproxy. Decisions are logged to %[2]s.
`, addr, logFile)
	<-ctx.Done()
	return nil
}

// refusalMessage is the registry's error message inside err, if it has one.
func refusalMessage(err error) string {
	var te *transport.Error
	if errors.As(err, &te) && len(te.Errors) > 0 {
		return te.Errors[0].Message
	}
	return err.Error()
}
