// Command trustproxy is a pull-through registry proxy that serves an image
// only when its Docker Content Trust signatures verify.
//
//	trustproxy serve [--config FILE]   run the proxy (embedded default without --config)
//	trustproxy demo [--listen ADDR]    self-contained demo: a signed pull served, an unsigned one refused
//	trustproxy check [--config FILE] [--scan] [--json] IMAGE   say whether IMAGE would be served, and why
//	trustproxy signers [--config FILE]   the trusted signers, their key IDs and rules
//	trustproxy signers add NAME FILE     the config entry for a signer's public key or certificate
//	trustproxy version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/sirupsen/logrus"

	"github.com/trustproxy/trustproxy/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	// SIGTERM or SIGINT ends ctx: serve stops gracefully (limits.shutdown_timeout).
	// A second one during that stop kills the process at once.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, stop)
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "trustproxy:", err)
		var exit exitError
		if errors.As(err, &exit) {
			os.Exit(int(exit))
		}
		os.Exit(1)
	}
}

// exitError is an exit status with its message already printed.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

const usage = `usage:
  trustproxy serve [--config FILE]          run the proxy (the embedded default without --config)
  trustproxy demo [--listen ADDR] [--dir DIR] [--exit]
                                            self-contained demo: a signed pull served, an unsigned one refused
  trustproxy check [--config FILE] [--scan] [--json] IMAGE
                                           say whether IMAGE (e.g. docker.io/library/alpine:3) would be served;
                                           --scan scans it now; exit 0 served, 1 refused, 2 no decision
  trustproxy signers [--config FILE]       each signer with its key IDs (both forms) and the rules that trust it
  trustproxy signers add NAME FILE         the trust.signers entry for a public key (docker trust key generate)
                                           or a certificate, and the ID that pins a root certificate
  trustproxy version                       the version and the module versions of this build`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return exitError(2)
	}
	// distribution and notary log through logrus; keep only their errors, as JSON.
	logrus.SetOutput(stderr)
	logrus.SetFormatter(&logrus.JSONFormatter{})
	logrus.SetLevel(logrus.ErrorLevel)

	cmd, args := args[0], args[1:]
	switch cmd {
	case "serve":
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		file := fs.String("config", "", "YAML configuration `file` (default: the embedded default)")
		if err := fs.Parse(args); err != nil {
			return exitError(2)
		}
		cfg, err := loadConfig(*file)
		if err != nil {
			return err
		}
		level := logLevel(cfg.Log.Level)
		return serve(ctx, cfg, *file, level, slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level})))
	case "demo":
		fs := flag.NewFlagSet("demo", flag.ContinueOnError)
		listen := fs.String("listen", "127.0.0.1:5000", "`address` trustproxy listens on")
		dir := fs.String("dir", "", "`folder` for the demo's config, keys, storage and log (default: a new temporary folder)")
		exit := fs.Bool("exit", false, "exit after the two pulls instead of serving on")
		if err := fs.Parse(args); err != nil {
			return exitError(2)
		}
		return runDemo(ctx, *listen, *dir, *exit, stdout)
	case "check":
		fs := flag.NewFlagSet("check", flag.ContinueOnError)
		file := fs.String("config", "", "YAML configuration `file` (default: the embedded default)")
		rescan := fs.Bool("scan", false, "scan the image now (its rule's scanners) and decide on that report")
		asJSON := fs.Bool("json", false, "print the decision as JSON")
		if err := fs.Parse(args); err != nil {
			return exitError(2)
		}
		if fs.NArg() != 1 {
			fmt.Fprintln(stderr, usage)
			return exitError(2)
		}
		cfg, err := loadConfig(*file)
		if err != nil {
			fmt.Fprintln(stderr, "trustproxy check:", err)
			return exitError(2)
		}
		return check(ctx, cfg, fs.Arg(0), *rescan, *asJSON, stdout, stderr, newLogger(stderr, cfg.Log.Level))
	case "signers":
		if len(args) > 0 && args[0] == "add" {
			if len(args) != 3 {
				fmt.Fprintln(stderr, usage)
				return exitError(2)
			}
			return addSigner(args[1], args[2], stdout)
		}
		fs := flag.NewFlagSet("signers", flag.ContinueOnError)
		file := fs.String("config", "", "YAML configuration `file` (default: the embedded default)")
		if err := fs.Parse(args); err != nil {
			return exitError(2)
		}
		if fs.NArg() != 0 {
			fmt.Fprintln(stderr, usage)
			return exitError(2)
		}
		cfg, err := loadConfig(*file)
		if err != nil {
			return err
		}
		return listSigners(cfg, stdout)
	case "version", "--version":
		writeVersion(stdout)
		return nil
	case "help", "-h", "--help":
		fmt.Fprintln(stdout, usage)
		return nil
	}
	fmt.Fprintf(stderr, "unknown command %q\n%s\n", cmd, usage)
	return exitError(2)
}

func loadConfig(file string) (*config.Config, error) {
	if file == "" {
		return config.Load(strings.NewReader(""), os.Environ()) // the embedded default
	}
	return config.LoadFile(file, os.Environ())
}

func newLogger(w io.Writer, level string) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: logLevel(level)}))
}

// logLevel is the slog level of log.level, as a variable a reload sets.
func logLevel(level string) *slog.LevelVar {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	v := &slog.LevelVar{}
	v.Set(l)
	return v
}

// writeVersion prints trustproxy's version, then the Go version and the
// version of each module the build holds, as `go version -m` would.
func writeVersion(w io.Writer) {
	fmt.Fprintln(w, "trustproxy", buildVersion())
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return
	}
	for _, m := range bi.Deps {
		if m.Replace != nil {
			m = m.Replace
		}
		fmt.Fprintf(w, "  %s %s\n", m.Path, m.Version)
	}
}

func buildVersion() string {
	v := version
	if bi, ok := debug.ReadBuildInfo(); ok {
		v += " " + bi.GoVersion
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " " + s.Value[:12]
			}
		}
	}
	return v
}
