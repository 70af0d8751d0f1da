package testenv

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Redis is a redis-server subprocess on 127.0.0.1, without persistence.
type Redis struct {
	t        testing.TB
	bin      string
	dir      string
	addr     string
	password string
	ca       *testCA  // TLS, when not nil
	args     []string // further redis-server arguments (replication, cluster mode)
	conf     string   // a sentinel's configuration file: redis-server CONF --sentinel

	mu  sync.Mutex
	cmd *exec.Cmd
}

// StartRedis starts /usr/bin/redis-server (Debian's redis-server package)
// on a free port; with password, it requires it (requirepass). It is
// stopped at t.Cleanup.
func StartRedis(t testing.TB, password string) *Redis {
	t.Helper()
	return startRedis(t, password, false)
}

// StartRedisTLS is StartRedis serving TLS only, with a certificate for
// 127.0.0.1 from a CA of its own (CAFile).
func StartRedisTLS(t testing.TB, password string) *Redis {
	t.Helper()
	return startRedis(t, password, true)
}

func startRedis(t testing.TB, password string, withTLS bool) *Redis {
	t.Helper()
	r := newRedis(t, password)
	if withTLS {
		r.ca = newTestCA(t, r.dir)
	}
	r.Start()
	return r
}

// newRedis is a Redis on a free port, not started, with further
// redis-server arguments args.
func newRedis(t testing.TB, password string, args ...string) *Redis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not found (install it: apt-get install -y redis-server): %v", err)
	}
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	r := &Redis{t: t, bin: bin, dir: t.TempDir(), addr: addr, password: password, args: args}
	t.Cleanup(r.Stop)
	return r
}

// CAFile is the CA of a TLS Redis's certificate.
func (r *Redis) CAFile() string { return r.ca.CertFile }

// Addr is host:port.
func (r *Redis) Addr() string { return r.addr }

// Start starts the server (again) on its address, and waits until it
// answers PING.
func (r *Redis) Start() {
	r.t.Helper()
	_, port, _ := net.SplitHostPort(r.addr)
	var args []string
	if r.conf != "" {
		args = []string{r.conf, "--sentinel"}
	}
	args = append(args, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", r.dir, "--protected-mode", "no")
	if r.ca != nil {
		args = append(args, "--port", "0", "--tls-port", port, "--tls-cert-file", r.ca.ServerCertFile,
			"--tls-key-file", r.ca.ServerKeyFile, "--tls-ca-cert-file", r.ca.CertFile, "--tls-auth-clients", "no")
	}
	switch {
	case r.password != "" && r.conf != "": // a Sentinel: its own password (masterauth is no Sentinel setting)
		args = append(args, "--requirepass", r.password)
	case r.password != "":
		args = append(args, "--requirepass", r.password, "--masterauth", r.password)
	}
	args = append(args, r.args...)
	cmd := exec.Command(r.bin, args...)
	dieWithParent(cmd)
	log, err := os.Create(filepath.Join(r.dir, "redis.log"))
	if err != nil {
		r.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		r.t.Fatalf("start redis-server: %v", err)
	}
	r.mu.Lock()
	r.cmd = cmd
	r.mu.Unlock()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if err := r.ping(); err == nil {
			return
		} else if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
			r.t.Fatalf("redis-server on %s does not answer: %v\n%s", r.addr, err, b)
		}
	}
}

// Kill sends the server SIGKILL, as Stop does: what it had not yet sent its
// replicas is lost.
func (r *Redis) Kill() { r.Stop() }

// Pause stops the server with SIGSTOP: it holds its connections and
// answers nothing, replication included, until Resume.
func (r *Redis) Pause() { r.signal(syscall.SIGSTOP) }

// Resume continues a paused server (SIGCONT).
func (r *Redis) Resume() { r.signal(syscall.SIGCONT) }

func (r *Redis) signal(s syscall.Signal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		_ = r.cmd.Process.Signal(s)
	}
}

// Running says whether the server was started and not stopped since.
func (r *Redis) Running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cmd != nil
}

// Stop kills the server; its data is gone.
func (r *Redis) Stop() {
	r.mu.Lock()
	cmd := r.cmd
	r.cmd = nil
	r.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
}

// ping speaks just enough RESP for PING (with AUTH first when a password
// is set).
func (r *Redis) ping() error {
	var c net.Conn
	var err error
	if r.ca != nil {
		c, err = tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", r.addr, &tls.Config{RootCAs: r.ca.Pool})
	} else {
		c, err = net.DialTimeout("tcp", r.addr, time.Second)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	rd := bufio.NewReader(c)
	if r.password != "" {
		fmt.Fprintf(c, "*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n", len(r.password), r.password)
		if line, err := rd.ReadString('\n'); err != nil || !strings.HasPrefix(line, "+OK") {
			return fmt.Errorf("AUTH: %q %v", line, err)
		}
	}
	fmt.Fprint(c, "*1\r\n$4\r\nPING\r\n")
	line, err := rd.ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING: %q %v", line, err)
	}
	return nil
}

// StateKey is the state key of the deployment tests run by default: every
// replica sharing a Redis has the same one (redis.state_key_file).
const StateKey = "test-deployment-state-key-0123456789abcdef"

// StateKeyFile writes key to a file of its own and returns its path, for
// redis.state_key_file.
func StateKeyFile(t testing.TB, key string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "state-key")
	if err := os.WriteFile(p, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
