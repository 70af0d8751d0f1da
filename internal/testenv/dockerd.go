package testenv

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Paths and bounds of the private Docker daemon. Debian's docker.io package installs both binaries.
const (
	dockerdBinary = "/usr/sbin/dockerd"
	dockerdCLI    = "/usr/bin/docker"

	dockerdReadyTimeout = 60 * time.Second
	// dockerdStopTimeout is how long SIGTERM gets before SIGKILL. dockerd 20.10 stops in about 2.5 s
	// without containers, and gives running containers 15 s (--shutdown-timeout) before it kills them.
	dockerdStopTimeout = 30 * time.Second
	dockerdLogTail     = 40 // lines of the daemon log in a start-up failure
)

// Dockerd is a private, real Docker daemon for end-to-end tests: its own data root, exec root, API socket,
// managed containerd and client config, and no network of its own (--bridge=none, no iptables, no
// ip_forward), so it talks to registries on loopback and changes nothing on the host. It is stopped,
// with every process it started, by t.Cleanup.
type Dockerd struct {
	// CLI is the docker client the methods run: Debian's /usr/bin/docker (20.10, as the daemon) when it
	// is installed, else the first docker on PATH. A test may point it at another client, such as a
	// v28 CLI for content trust (v29 and later ignore DOCKER_CONTENT_TRUST).
	CLI string

	sock      string // the daemon's API socket: unix://sock
	execRoot  string // short directory under /tmp: unix socket paths must stay under 108 bytes
	dataRoot  string
	configDir string // DOCKER_CONFIG of every client command
	logPath   string

	cmd  *exec.Cmd
	done chan struct{} // closed when the daemon has exited
}

// StartDockerd starts a private dockerd and waits until it answers `docker version`. A non-empty mirror
// (such as "http://127.0.0.1:PORT") becomes its only --registry-mirror, which dockerd uses for Docker
// Hub names only (library/x:1, docker.io/library/x:1). 127.0.0.0/8 registries may be plain HTTP: dockerd
// treats them as insecure by default. The test fails, naming the Debian package, when dockerd is not
// installed or the test does not run as root, and fails with the tail of the daemon log when it does
// not start within 60 s.
func StartDockerd(t testing.TB, mirror string) *Dockerd {
	t.Helper()
	return startDockerd(t, mirror, "{}\n")
}

// StartDockerdConfig is StartDockerd with daemonJSON as the daemon's --config-file (in place of the
// host's /etc/docker/daemon.json), such as {"registry-mirrors": ["https://[::1]:PORT"]}. dockerd refuses
// to start when the file sets what a flag of StartDockerd sets too (storage-driver, bridge, iptables,
// data-root, exec-root, hosts).
func StartDockerdConfig(t testing.TB, daemonJSON string) *Dockerd {
	t.Helper()
	return startDockerd(t, "", daemonJSON)
}

func startDockerd(t testing.TB, mirror, daemonJSON string) *Dockerd {
	t.Helper()
	if _, err := os.Stat(dockerdBinary); err != nil {
		t.Fatalf("dockerd: %v (apt-get install docker.io)", err)
	}
	if os.Geteuid() != 0 {
		t.Fatalf("dockerd: a private Docker daemon needs root; run the test as root (euid is %d)", os.Geteuid())
	}
	cli := dockerdCLI
	if _, err := os.Stat(cli); err != nil {
		if cli, err = exec.LookPath("docker"); err != nil {
			t.Fatalf("dockerd: no docker client in %s or on PATH (apt-get install docker.io)", dockerdCLI)
		}
	}

	d := &Dockerd{
		CLI:       cli,
		dataRoot:  t.TempDir(),
		configDir: t.TempDir(),
		done:      make(chan struct{}),
	}
	etc := t.TempDir()
	d.logPath = filepath.Join(etc, "dockerd.log")
	// t.TempDir names grow with the test name; the exec root holds the daemon's and containerd's sockets.
	execRoot, err := os.MkdirTemp("/tmp", "dk")
	if err != nil {
		t.Fatalf("dockerd: exec root: %v", err)
	}
	d.execRoot = execRoot
	d.sock = filepath.Join(execRoot, "docker.sock")
	// Registered before the stop below, so it runs after it (cleanups run last first).
	t.Cleanup(func() { os.RemoveAll(execRoot) })

	// An explicit config file keeps the host's /etc/docker/daemon.json out.
	config := filepath.Join(etc, "daemon.json")
	if err := os.WriteFile(config, []byte(daemonJSON), 0o644); err != nil {
		t.Fatalf("dockerd: %v", err)
	}
	args := []string{
		"--config-file", config,
		"--data-root", d.dataRoot,
		"--exec-root", execRoot,
		"--pidfile", filepath.Join(execRoot, "dockerd.pid"),
		"--host", "unix://" + d.sock,
		// vfs copies layers instead of mounting them: slower on big images, but it works in any sandbox
		// and leaves no mounts behind.
		"--storage-driver", "vfs",
		"--bridge", "none",
		"--iptables=false",
		"--ip6tables=false",
		"--ip-forward=false",
		"--ip-masq=false",
	}
	if mirror != "" {
		args = append(args, "--registry-mirror", mirror)
	}
	logFile, err := os.Create(d.logPath)
	if err != nil {
		t.Fatalf("dockerd: %v", err)
	}
	defer logFile.Close() // the child holds its own descriptor
	d.cmd = exec.Command(dockerdBinary, args...)
	d.cmd.Env = dockerdEnv(os.Environ())
	d.cmd.Stdout = logFile
	d.cmd.Stderr = logFile
	d.cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid: true, // our own process group, killed as one if SIGTERM is not enough
		// A test binary that dies (a panic, -timeout) still stops its daemon.
		Pdeathsig: syscall.SIGTERM,
	}
	start := time.Now()
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("dockerd: start %s: %v", dockerdBinary, err)
	}
	go func() {
		d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		if err := d.stop(); err != nil {
			t.Errorf("dockerd: %v", err)
		}
	})

	if err := d.waitReady(t.Context(), dockerdReadyTimeout); err != nil {
		t.Fatalf("dockerd: %v\n--- last %d lines of %s ---\n%s", err, dockerdLogTail, d.logPath, d.logTail(dockerdLogTail))
	}
	t.Logf("dockerd ready in %s: host unix://%s, mirror %q, log %s", time.Since(start).Round(time.Millisecond), d.sock, mirror, d.logPath)
	return d
}

// waitReady polls `docker version` until the daemon answers, exits, or timeout passes.
func (d *Dockerd) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		attempt, cancelAttempt := context.WithTimeout(ctx, 5*time.Second)
		_, err := d.Docker(attempt, "version", "--format", "{{.Server.Version}}")
		cancelAttempt()
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-d.done:
			return fmt.Errorf("exited during start-up (%v)", d.cmd.ProcessState)
		case <-ctx.Done():
			return fmt.Errorf("not ready after %s: %w", timeout, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Host is the daemon's address for other clients: "unix:///tmp/dk.../docker.sock".
func (d *Dockerd) Host() string { return "unix://" + d.sock }

// ContainerdAddress is the socket of the containerd that dockerd manages, for `ctr -a ADDR`. dockerd keeps
// its images in containerd namespace "moby" and plugins in "plugins.moby"; `ctr images pull` may use any.
func (d *Dockerd) ContainerdAddress() string {
	return filepath.Join(d.execRoot, "containerd", "containerd.sock")
}

// ConfigDir is the DOCKER_CONFIG of every client command. Content trust reads the CA of a notary server
// at HOST:PORT from ConfigDir()/tls/HOST:PORT/*.crt.
func (d *Dockerd) ConfigDir() string { return d.configDir }

// Log returns the daemon's log so far ("" if it cannot be read), for assertions and failure messages.
func (d *Dockerd) Log() string {
	b, _ := os.ReadFile(d.logPath)
	return string(b)
}

// Docker runs the docker client against this daemon (`docker -H unix://SOCK ARGS...`) and returns its
// combined output. A non-zero exit is an error that quotes the output.
func (d *Dockerd) Docker(ctx context.Context, args ...string) (string, error) {
	return d.DockerEnv(ctx, nil, args...)
}

// DockerEnv is Docker with extra environment, such as DOCKER_CONTENT_TRUST=1 and
// DOCKER_CONTENT_TRUST_SERVER=https://127.0.0.1:PORT. Docker variables of the test's own environment
// are dropped, and DOCKER_CONFIG is ConfigDir unless env sets it.
func (d *Dockerd) DockerEnv(ctx context.Context, env []string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, d.CLI, append([]string{"-H", d.Host()}, args...)...)
	cmd.Env = append(dockerdEnv(os.Environ()), "DOCKER_CONFIG="+d.configDir)
	cmd.Env = append(cmd.Env, env...)
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// Pull runs `docker pull ref` and returns its combined output. A Docker Hub name (library/x:1) goes to
// the mirror, and after a mirror error to registry-1.docker.io, whose failure is what docker prints.
func (d *Dockerd) Pull(ctx context.Context, ref string) (string, error) {
	return d.Docker(ctx, "pull", ref)
}

// ImageID returns the local image ID of ref ("sha256:<config digest>").
func (d *Dockerd) ImageID(ctx context.Context, ref string) (string, error) {
	out, err := d.Docker(ctx, "image", "inspect", "--format", "{{.Id}}", ref)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

// RepoDigests returns the NAME@sha256:<manifest digest> references docker recorded for ref's image.
// A pull through a mirror records the Docker Hub name (docker.io/library/x → "library/x@sha256:...").
func (d *Dockerd) RepoDigests(ctx context.Context, ref string) ([]string, error) {
	out, err := d.Docker(ctx, "image", "inspect", "--format", "{{json .RepoDigests}}", ref)
	if err != nil {
		return nil, err
	}
	var digests []string
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &digests); err != nil {
		return nil, fmt.Errorf("parse RepoDigests of %s: %w (%q)", ref, err, out)
	}
	return digests, nil
}

// stop sends SIGTERM, and SIGKILL to the daemon's process group after dockerdStopTimeout; then it kills
// whatever still runs from the exec root (containerd, and containerd-shim, which leaves the group) with
// its descendants (the containers), and unmounts what is left under the roots, so that t.TempDir can
// remove them.
func (d *Dockerd) stop() error {
	var errs []error
	pgid := d.cmd.Process.Pid
	select {
	case <-d.done:
	default:
		d.cmd.Process.Signal(syscall.SIGTERM) // dockerd stops its containers, then its containerd
		select {
		case <-d.done:
		case <-time.After(dockerdStopTimeout):
			errs = append(errs, fmt.Errorf("no exit %s after SIGTERM; killed", dockerdStopTimeout))
			syscall.Kill(-pgid, syscall.SIGKILL)
			<-d.done
		}
	}
	syscall.Kill(-pgid, syscall.SIGKILL) // containerd, if dockerd left it
	if left := dockerdProcesses(d.execRoot); len(left) > 0 {
		for _, pid := range left {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		deadline := time.Now().Add(5 * time.Second)
		for len(dockerdProcesses(d.execRoot)) > 0 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if still := dockerdProcesses(d.execRoot); len(still) > 0 {
			errs = append(errs, fmt.Errorf("processes of %s still running after SIGKILL: %v", d.execRoot, still))
		}
	}
	for _, root := range []string{d.execRoot, d.dataRoot} {
		if err := dockerdUnmountUnder(root); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// logTail returns the last n lines of the daemon log.
func (d *Dockerd) logTail(n int) string {
	lines := strings.Split(strings.TrimRight(d.Log(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// dockerdEnv drops the variables that would point a docker client or daemon elsewhere.
func dockerdEnv(environ []string) []string {
	return slices.DeleteFunc(slices.Clone(environ), func(kv string) bool {
		return strings.HasPrefix(kv, "DOCKER_")
	})
}

// dockerdProcesses lists the live processes, other than this one, whose command line names dir, and all
// their descendants: container processes run under a containerd-shim whose only mention of dir is
// its -address.
func dockerdProcesses(dir string) []int {
	entries, _ := os.ReadDir("/proc")
	children := map[int][]int{}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		state, ppid, ok := dockerdStat(stat)
		if !ok || state == 'Z' { // a zombie is gone but for its parent's wait
			continue
		}
		children[ppid] = append(children[ppid], pid)
		if cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil && bytes.Contains(cmdline, []byte(dir)) {
			pids = append(pids, pid)
		}
	}
	for i := 0; i < len(pids); i++ {
		for _, c := range children[pids[i]] {
			if !slices.Contains(pids, c) {
				pids = append(pids, c)
			}
		}
	}
	return pids
}

// dockerdStat returns the state and parent of a /proc/PID/stat line: "PID (COMM) STATE PPID ...".
func dockerdStat(stat []byte) (state byte, ppid int, ok bool) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, 0, false
	}
	fields := strings.Fields(string(stat[i+1:]))
	if len(fields) < 2 || len(fields[0]) != 1 {
		return 0, 0, false
	}
	ppid, err := strconv.Atoi(fields[1])
	return fields[0][0], ppid, err == nil
}

// dockerdUnmountUnder detaches every mount at or below dir, deepest first: the data root's own bind
// mount and the container shm and network namespace mounts that a killed daemon leaves behind.
func dockerdUnmountUnder(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var points []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 5 {
			continue
		}
		p := dockerdUnescapeMount(fields[4])
		if p == dir || strings.HasPrefix(p, dir+"/") {
			points = append(points, p)
		}
	}
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	var errs []error
	for _, p := range points {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// dockerdUnescapeMount undoes mountinfo's octal escapes (\040 for a space).
func dockerdUnescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
