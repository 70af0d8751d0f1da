package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Notary is a real notary-server (Debian package notary) on 127.0.0.1, with memory
// storage and its own signer, behind a TLS front that forwards to it and can replay
// recorded metadata or play dead. Clients under test use URL(); the notary CLI that signs
// talks to the server directly, so what the front does never blocks signing.
type Notary struct {
	dir      string
	ca       *testCA
	backend  string       // https://127.0.0.1:PORT of notary-server itself
	client   *http.Client // trusts ca, for direct reads
	front    *httptest.Server
	trustDir string // the notary CLI's keys and cache
	cliConf  string
	logFile  string
	tls      *http.Transport // trusts ca; what the front forwards with

	// With NotaryTokenAuth: the auth section of notary-server's config, and the
	// user testenv signs and reads as.
	authConf             map[string]any
	signerUser, signerPW string

	cli sync.Mutex // one CLI call at a time: they share trustDir

	mu       sync.Mutex
	down     bool
	replay   map[string]Recording // by GUN
	counts   map[string]int       // by path
	imported map[string]bool      // key files imported into trustDir
}

// A NotaryOption configures StartNotary.
type NotaryOption func(n *Notary)

// NotaryService is the service name of a notary-server with NotaryTokenAuth.
const NotaryService = "testenv-notary"

// NotaryTokenAuth makes notary-server want tokens from ts (auth type token, service
// NotaryService, no autoredirect). testenv's signing (the notary CLI through
// NOTARY_AUTH, the notary library and direct reads through a token-getting transport)
// then authenticates as a user of ts with a password of its own.
func NotaryTokenAuth(ts *TokenServer) NotaryOption {
	return func(n *Notary) {
		n.authConf = map[string]any{"type": "token", "options": ts.Options(NotaryService)}
		n.signerUser, n.signerPW = "testenv-signer", rand.Text()
		ts.AddUser(n.signerUser, n.signerPW)
	}
}

// StartNotary runs /usr/bin/notary-server and its front; t.Cleanup stops both.
func StartNotary(t testing.TB, opts ...NotaryOption) *Notary {
	t.Helper()
	bin, err := exec.LookPath("notary-server")
	if err != nil {
		t.Fatalf("notary-server not found (install it: apt-get install -y notary): %v", err)
	}
	dir := t.TempDir()
	n := &Notary{
		dir:      dir,
		ca:       newTestCA(t, dir),
		trustDir: filepath.Join(dir, "trust"),
		cliConf:  filepath.Join(dir, "client.json"),
		logFile:  filepath.Join(dir, "notary-server.log"),
		replay:   map[string]Recording{},
		counts:   map[string]int{},
		imported: map[string]bool{},
	}
	for _, o := range opts {
		o(n)
	}
	n.tls = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: n.ca.Pool}}
	n.client = &http.Client{Timeout: 10 * time.Second, Transport: n.authed(n.tls)}
	t.Cleanup(n.tls.CloseIdleConnections)

	// The port is chosen free and then handed over, so another process may take it in
	// between; notary-server then exits at once, and we try another.
	var lastErr error
	for range 3 {
		if lastErr = n.startServer(t, bin); lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		t.Fatalf("start notary-server: %v\n%s", lastErr, n.serverLog(false))
	}

	target, _ := url.Parse(n.backend)
	proxy := &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport: n.tls, // clients under test authenticate themselves
		ErrorLog:  discardLog(),
	}
	n.front = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.serveFront(w, r, proxy)
	}))
	n.front.TLS = &tls.Config{Certificates: []tls.Certificate{n.ca.Server}}
	n.front.Config.ErrorLog = discardLog()
	n.front.StartTLS()
	t.Cleanup(n.front.Close)

	cfg, _ := json.Marshal(map[string]any{
		"trust_dir":     n.trustDir,
		"remote_server": map[string]any{"url": n.backend, "root_ca": n.ca.CertFile},
	})
	writeFile(t, n.cliConf, cfg)
	return n
}

func (n *Notary) startServer(t testing.TB, bin string) error {
	t.Helper()
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	conf := filepath.Join(n.dir, "server.json")
	sc := map[string]any{
		"server": map[string]any{
			"http_addr":     addr,
			"tls_cert_file": n.ca.ServerCertFile,
			"tls_key_file":  n.ca.ServerKeyFile,
		},
		"trust_service": map[string]any{"type": "local"},
		"storage":       map[string]any{"backend": "memory"},
		"logging":       map[string]any{"level": "info"},
	}
	if n.authConf != nil {
		sc["auth"] = n.authConf
	}
	b, _ := json.Marshal(sc)
	writeFile(t, conf, b)
	logf, err := os.OpenFile(n.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()

	cmd := exec.Command(bin, "-config", conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	n.backend = "https://" + addr
	deadline := time.After(15 * time.Second)
	for {
		resp, err := n.client.Get(n.backend + "/_notary_server/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("notary-server on %s exited: %s", addr, cmd.ProcessState)
		case <-deadline:
			return fmt.Errorf("notary-server on %s not healthy after 15s: %v", addr, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// serverLog is the end of notary-server's log; problemsOnly keeps warnings and errors.
func (n *Notary) serverLog(problemsOnly bool) string {
	b, _ := os.ReadFile(n.logFile)
	var lines []string
	for l := range strings.Lines(string(b)) {
		if !problemsOnly || !strings.Contains(l, `"level":"info"`) && !strings.Contains(l, `"level":"debug"`) {
			lines = append(lines, l)
		}
	}
	lines = lines[max(0, len(lines)-20):]
	return "notary-server log (" + n.logFile + "):\n" + strings.Join(lines, "")
}

// freeAddr finds a free port on 127.0.0.1 for a server that must open its own listener.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// FreeAddr is a free 127.0.0.1:port, for a server that must open its own listener (a
// trustproxy process, `trustproxy serve` in the test binary), or for an address that
// nothing answers.
func FreeAddr(t testing.TB) string {
	t.Helper()
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// URL is the address clients under test should use: https://127.0.0.1:PORT of the front.
func (n *Notary) URL() string { return n.front.URL }

// ServerURL is notary-server's own address, behind the front; the notary CLI signs there.
func (n *Notary) ServerURL() string { return n.backend }

// CAFile is the PEM file of the CA both the front and notary-server are certified by.
func (n *Notary) CAFile() string { return n.ca.CertFile }

// CAPool holds that CA.
func (n *Notary) CAPool() *x509.CertPool { return n.ca.Pool }

// TrustDir is the notary CLI's trust folder (private keys, cached metadata).
func (n *Notary) TrustDir() string { return n.trustDir }

// Requests counts the requests the front received whose path ends in pathSuffix, such as
// "/_trust/tuf/timestamp.json"; "" counts them all.
func (n *Notary) Requests(pathSuffix string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := 0
	for p, k := range n.counts {
		if strings.HasSuffix(p, pathSuffix) {
			c += k
		}
	}
	return c
}

// SetDown makes the front close every connection without answering (true), as an
// unreachable trust server does, or forward again (false).
func (n *Notary) SetDown(down bool) {
	n.mu.Lock()
	n.down = down
	n.mu.Unlock()
}

func (n *Notary) serveFront(w http.ResponseWriter, r *http.Request, proxy http.Handler) {
	n.mu.Lock()
	n.counts[r.URL.Path]++
	down := n.down
	var rec Recording
	var replaying bool
	var file string
	for gun, rc := range n.replay {
		if f, ok := strings.CutPrefix(r.URL.Path, tufPrefix(gun)); ok {
			rec, replaying, file = rc, true, f
			break
		}
	}
	n.mu.Unlock()

	if down {
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
				return
			}
		}
		panic(http.ErrAbortHandler)
	}
	if replaying && r.Method == http.MethodGet && strings.HasSuffix(file, ".json") {
		b, ok := rec.Files[file]
		if !ok {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, `{"errors":[{"code":"METADATA_NOT_FOUND","message":"You have requested metadata that does not exist."}]}`)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		_, _ = w.Write(b)
		return
	}
	proxy.ServeHTTP(w, r)
}

func tufPrefix(gun string) string { return "/v2/" + gun + "/_trust/tuf/" }

// A Recording is the metadata notary-server served for one GUN at one moment.
type Recording struct {
	GUN string
	// Files holds each document by its name under /v2/<GUN>/_trust/tuf/, under every name
	// the server answers to: "timestamp.json", "snapshot.<sha256 hex>.json",
	// "snapshot.<sha512 hex>.json", "3.snapshot.json", "1.root.json", "targets/releases.json", ...
	Files map[string][]byte
}

// Version is the signed version of role ("timestamp", "targets/releases", ...) in r, or 0.
func (r Recording) Version(role string) int {
	v, _ := metaVersion(r.Files[role+".json"])
	return v
}

// Record fetches, straight from notary-server, every metadata file of gun it serves now:
// root (every version), targets, snapshot, timestamp and each delegation in the snapshot.
func (n *Notary) Record(t testing.TB, gun string) Recording {
	t.Helper()
	rec := Recording{GUN: gun, Files: map[string][]byte{}}
	add := func(role string) []byte {
		t.Helper()
		b := n.fetchMeta(t, gun, role+".json")
		v, err := metaVersion(b)
		if err != nil {
			t.Fatalf("record %s %s: %v", gun, role, err)
		}
		s256, s512 := sha256.Sum256(b), sha512.Sum512(b)
		rec.Files[role+".json"] = b
		rec.Files[role+"."+hex.EncodeToString(s256[:])+".json"] = b
		rec.Files[role+"."+hex.EncodeToString(s512[:])+".json"] = b
		rec.Files[strconv.Itoa(v)+"."+role+".json"] = b
		return b
	}
	add("root")
	for v := range rec.Version("root") - 1 {
		name := strconv.Itoa(v+1) + ".root.json"
		rec.Files[name] = n.fetchMeta(t, gun, name)
	}
	add("timestamp")
	add("targets")
	var snap struct {
		Signed struct {
			Meta map[string]json.RawMessage `json:"meta"`
		} `json:"signed"`
	}
	if err := json.Unmarshal(add("snapshot"), &snap); err != nil {
		t.Fatalf("record %s snapshot: %v", gun, err)
	}
	for role := range snap.Signed.Meta {
		if _, done := rec.Files[role+".json"]; !done {
			add(role)
		}
	}
	return rec
}

func (n *Notary) fetchMeta(t testing.TB, gun, file string) []byte {
	t.Helper()
	u := n.backend + tufPrefix(gun) + file
	resp, err := n.client.Get(u)
	if err != nil {
		t.Fatalf("fetch %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("fetch %s: %s %v %s", u, resp.Status, err, bytes.TrimSpace(b))
	}
	return b
}

func metaVersion(b []byte) (int, error) {
	var m struct {
		Signed struct {
			Version int `json:"version"`
		} `json:"signed"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return 0, err
	}
	if m.Signed.Version == 0 {
		return 0, errors.New("no signed version")
	}
	return m.Signed.Version, nil
}

// Replay makes the front answer GETs of gun's metadata with rec's bytes instead of the
// server's, as a server (or a man in the middle) replaying older metadata would: names
// rec lacks get 404. Other GUNs and other routes are still forwarded.
func (n *Notary) Replay(gun string, rec Recording) {
	n.mu.Lock()
	n.replay[gun] = rec
	n.mu.Unlock()
}

// Live ends a Replay of gun.
func (n *Notary) Live(gun string) {
	n.mu.Lock()
	delete(n.replay, gun)
	n.mu.Unlock()
}

// cliTimeout bounds one notary CLI call, which takes well under a second.
const cliTimeout = time.Minute

// passphrase protects every key in the CLI's trust folder; the CLI reads it from env.
const passphrase = "testenv-passphrase"

// notary runs the notary CLI against notary-server and returns its combined output.
func (n *Notary) notary(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cliTimeout)
	defer cancel()
	full := append([]string{"-c", n.cliConf, "-s", n.backend, "-d", n.trustDir, "--tlscacert", n.ca.CertFile}, args...)
	cmd := exec.CommandContext(ctx, "notary", full...)
	cmd.Env = append(os.Environ(),
		"HOME="+n.dir, // keep ~/.notary out of it
		"NOTARY_ROOT_PASSPHRASE="+passphrase,
		"NOTARY_TARGETS_PASSPHRASE="+passphrase,
		"NOTARY_SNAPSHOT_PASSPHRASE="+passphrase,
		"NOTARY_DELEGATION_PASSPHRASE="+passphrase,
	)
	if n.signerUser != "" {
		cmd.Env = append(cmd.Env, "NOTARY_AUTH="+base64.StdEncoding.EncodeToString([]byte(n.signerUser+":"+n.signerPW)))
	}
	cmd.Stdin = nil
	out, err := cmd.CombinedOutput()
	if errors.Is(err, exec.ErrNotFound) {
		err = fmt.Errorf("%w (install it: apt-get install -y notary)", err)
	}
	return string(out), err
}

// authed is base, getting tokens as testenv's signer when notary-server wants them.
func (n *Notary) authed(base http.RoundTripper) http.RoundTripper {
	if n.signerUser == "" {
		return base
	}
	return &tokenTransport{base: base, user: n.signerUser, pass: n.signerPW}
}
