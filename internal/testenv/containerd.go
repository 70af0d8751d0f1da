package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Containerd is a standalone containerd (Debian package containerd) with its own root, state and
// socket, for clients that talk to containerd without a Docker daemon: `ctr`, and the CRI plugin's
// registry settings a Kubernetes node uses. It listens on a unix socket only (its CRI streaming server,
// if the plugin loads, on 127.0.0.1). It is stopped by t.Cleanup.
type Containerd struct {
	Config string // the config.toml it runs with
	addr   string
	dir    string
	cmd    *exec.Cmd
	done   chan struct{}
	log    string
}

// StartContainerd writes config.toml from body (TOML that may set version and any tables but
// root, state, [grpc], [ttrpc], [debug], [metrics] and the opt plugin, which it adds) and starts
// containerd with it, waiting until `ctr version` answers. It fails naming the Debian package when
// containerd or ctr is missing, and with the end of containerd's log when it does not start.
func StartContainerd(t testing.TB, body string) *Containerd {
	t.Helper()
	for _, bin := range []string{"containerd", "ctr"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found: apt-get install containerd", bin)
		}
	}
	if os.Geteuid() != 0 {
		t.Fatalf("containerd: a standalone containerd needs root (euid is %d)", os.Geteuid())
	}
	// Socket paths must stay under 108 bytes: state and socket go in a short folder under /tmp.
	dir, err := os.MkdirTemp("/tmp", "ct")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	root := t.TempDir()
	c := &Containerd{
		Config: filepath.Join(root, "config.toml"),
		addr:   filepath.Join(dir, "containerd.sock"),
		dir:    dir,
		done:   make(chan struct{}),
		log:    filepath.Join(root, "containerd.log"),
	}
	cfg := fmt.Sprintf("root = %q\nstate = %q\n%s\n[grpc]\n  address = %q\n[ttrpc]\n  address = %q\n[debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = %q\n",
		filepath.Join(root, "root"), filepath.Join(dir, "state"), body, c.addr, filepath.Join(dir, "ttrpc.sock"), filepath.Join(root, "opt"))
	writeFile(t, c.Config, []byte(cfg))
	logFile, err := os.Create(c.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	c.cmd = exec.Command("containerd", "--config", c.Config)
	c.cmd.Stdout, c.cmd.Stderr = logFile, logFile
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("containerd: %v", err)
	}
	go func() { c.cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
			<-c.done
		}
		syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		dockerdUnmountUnder(root)
		dockerdUnmountUnder(dir)
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		_, err := c.Ctr(ctx, nil, "version")
		cancel()
		if err == nil {
			return c
		}
		select {
		case <-c.done:
			t.Fatalf("containerd exited during start-up (%v):\n%s\nconfig:\n%s", c.cmd.ProcessState, c.Log(), cfg)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd not ready after 30s: %v\n%s", err, c.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Address is containerd's socket, for `ctr -a` or CONTAINERD_ADDRESS.
func (c *Containerd) Address() string { return c.addr }

// Log is containerd's log so far.
func (c *Containerd) Log() string {
	b, _ := os.ReadFile(c.log)
	return string(b)
}

// Ctr runs `ctr ARGS...` against this containerd, with CONTAINERD_ADDRESS set and extra environment
// env, and returns its combined output; a non-zero exit is an error quoting it.
func (c *Containerd) Ctr(ctx context.Context, env []string, args ...string) (string, error) {
	return c.Run(ctx, env, "ctr", args...)
}

// Run runs the command name ARGS with CONTAINERD_ADDRESS set to this containerd (and
// CONTAINERD_NAMESPACE to trustproxy-test) and extra environment env.
func (c *Containerd) Run(ctx context.Context, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "CONTAINERD_ADDRESS="+c.addr, "CONTAINERD_NAMESPACE=trustproxy-test")
	cmd.Env = append(cmd.Env, env...)
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}
