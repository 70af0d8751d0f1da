package proxy_test

import (
	"context"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// The tests of this file run the configurations docs/clients.md gives, as
// written but for its placeholders (the table at the top of the document).
const (
	clientsDoc = "docs/clients.md"
	docHost    = "trustproxy.example.com:5000" // trustproxy's host:port
	docCA      = "/etc/trustproxy/ca.crt"      // the CA of trustproxy's certificate
	docHosts   = "/etc/containerd/certs.d"     // containerd's hosts directory
)

// clientSnippet is the snippet name of docs/clients.md with replace applied
// (testenv.Snippet). TestClientsDocSnippetsAreRun finds the names passed to
// it in this package's source: call it with a literal name.
func clientSnippet(t *testing.T, name string, replace ...string) string {
	t.Helper()
	return testenv.Snippet(t, clientsDoc, name, replace...)
}

// TestClientsDocSnippetsAreRun: every code block of docs/clients.md is a
// snippet some test of this package runs, or says it is not run by a test.
func TestClientsDocSnippetsAreRun(t *testing.T) {
	var inDoc []string
	for _, b := range testenv.DocBlocks(t, clientsDoc) {
		if b.Name != "" {
			inDoc = append(inDoc, b.Name)
		}
	}
	files, err := filepath.Glob("*_test.go")
	if err != nil {
		t.Fatal(err)
	}
	call := regexp.MustCompile(`clientSnippet\(t, "([a-z0-9-]+)"`)
	var used []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range call.FindAllStringSubmatch(string(b), -1) {
			used = append(used, m[1])
		}
	}
	slices.Sort(inDoc)
	slices.Sort(used)
	used = slices.Compact(used)
	for _, n := range inDoc {
		if !slices.Contains(used, n) {
			t.Errorf("%s: snippet %s is run by no test: use it (clientSnippet) or mark it <!-- not run by a test -->", clientsDoc, n)
		}
	}
	for _, n := range used {
		if !slices.Contains(inDoc, n) {
			t.Errorf("a test uses snippet %s, which %s does not have", n, clientsDoc)
		}
	}
}

// serveTLS serves p over HTTPS on a fresh port of ip ("127.0.0.1" or "::1")
// and returns its host:port and a PEM file of the CA that certifies it
// (httptest's certificate, for 127.0.0.1, ::1 and example.com).
func (p *instance) serveTLS(t *testing.T, ip string) (host, caFile string) {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatalf("listen on %s: %v", ip, err)
	}
	srv := httptest.NewUnstartedServer(p.proxy.Handler(http.NotFoundHandler()))
	srv.Listener.Close()
	srv.Listener = l
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caFile = filepath.Join(t.TempDir(), "ca.crt")
	must(t, os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644))
	return l.Addr().String(), caFile
}

// decided says whether a decision about repo and ref has been logged.
func (p *instance) decided(repo, ref string) bool {
	for _, line := range p.logs.Lines() {
		if strings.Contains(line, `"msg":"decision"`) && strings.Contains(line, `"repo":"`+repo+`"`) && strings.Contains(line, `"ref":"`+ref+`"`) {
			return true
		}
	}
	return false
}

// sh runs script with sh -ec and extra environment env, and returns its
// combined output.
func sh(ctx context.Context, script string, env ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "sh", "-ec", script)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// machineCertsDir makes sure dir (a folder under a machine-wide certs.d
// named by a port of this test, so no one else's) does not exist yet, and
// removes it when the test ends.
func machineCertsDir(t *testing.T, dir string) {
	t.Helper()
	if _, err := os.Stat(dir); err == nil {
		t.Fatalf("%s exists already: another run left it, or another server had this port", dir)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
}

// TestClientsDockerdHTTPSMirror runs docs/clients.md's Docker daemon
// configuration: daemon.json with trustproxy as an HTTPS registry mirror,
// and trustproxy's CA in /etc/docker/certs.d/<host:port>/ca.crt, written
// after the daemon started. dockerd treats 127.0.0.0/8 registries as
// insecure and skips certificate checks for them, so trustproxy is served
// on [::1]: a first pull fails for want of the CA, which shows that the CA
// is checked and that certs.d is read at pull time. Refusals are asserted in
// trustproxy's decision log (dockerd falls back to Docker Hub).
func TestClientsDockerdHTTPSMirror(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Docker daemon")
	}
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	signed := w.pushSigned(t, "library/app", "v1", "mirror-v1")
	w.Registry.Push(t, "library/app", "v2", testenv.Image(t, "mirror-v2", 1, 4096))
	p := w.start(t, "")
	host, ca := p.serveTLS(t, "::1")
	ctx := t.Context()
	d := testenv.StartDockerdConfig(t, clientSnippet(t, "docker-daemon-json", docHost, host))

	if out, err := d.Pull(ctx, "app:v1"); err == nil {
		t.Fatalf("docker pull app:v1 through the HTTPS mirror without its CA succeeded:\n%s", out)
	}
	if p.decided(gun, "v1") {
		t.Fatal("trustproxy served a request of a daemon that has not its CA yet")
	}
	if !strings.Contains(d.Log(), "certificate signed by unknown authority") {
		t.Errorf("dockerd's log does not say why the mirror failed:\n%s", d.Log())
	}

	machineCertsDir(t, filepath.Join("/etc/docker/certs.d", host))
	if out, err := sh(ctx, clientSnippet(t, "docker-certs-d", docHost, host, docCA, ca)); err != nil {
		t.Fatalf("docker-certs-d: %v\n%s", err, out)
	}
	if out, err := d.Pull(ctx, "app:v1"); err != nil {
		t.Fatalf("docker pull app:v1 through the HTTPS mirror: %v\n%s", err, out)
	}
	digests, err := d.RepoDigests(ctx, "app:v1")
	if err != nil || !slices.Contains(digests, "app@"+signed.String()) {
		t.Fatalf("RepoDigests %v (%v), want app@%s", digests, err, signed)
	}
	p.wantDecision(t, gun, "v1", "served", "verified")

	if out, err := d.Pull(ctx, "app:v2"); err == nil {
		t.Fatalf("docker pull app:v2 (unsigned) succeeded:\n%s", out)
	}
	p.wantDecision(t, gun, "v2", "denied", proxy.Reason(trust.NotSigned))
}

// twoUpstreamsConfig is trustproxy's YAML for upstreams registry-a and
// registry-b.example.com, each with its own registry and Notary server, and
// alice the trusted signer of both.
func twoUpstreamsConfig(t *testing.T, a, b *testenv.Env, alice *testenv.Key, roots map[string]string) string {
	t.Helper()
	var pins strings.Builder
	for g, id := range roots {
		fmt.Fprintf(&pins, "      %s: [%s]\n", g, id)
	}
	up := func(name string, e *testenv.Env) string {
		return fmt.Sprintf("  - name: %s\n    url: %s\n    notary:\n      url: %s\n      ca_file: %s\n", name, e.Registry.URL(), e.Notary.URL(), e.Notary.CAFile())
	}
	return fmt.Sprintf(`data_dir: %s
upstreams:
%s%strust:
  pinning:
    certs:
%s  signers:
    - name: alice
      public_key: %s
  rules:
    - repositories: "registry-a.example.com/**"
      signers: [alice]
    - repositories: "registry-b.example.com/**"
      signers: [alice]
`, t.TempDir(), up("registry-a.example.com", a), up("registry-b.example.com", b), pins.String(), alice.CertFile)
}

// TestClientsContainerdHostsDir runs docs/clients.md's containerd
// configuration: a standalone containerd whose config.toml holds the
// Kubernetes snippet (the CRI plugin's registry config_path), which
// `containerd config dump` must show it loaded, and `ctr images pull
// --hosts-dir` with that directory holding the hosts.toml of two upstreams,
// told apart by containerd's ns parameter. Each upstream has its own
// registry and Notary server; a signed image of each pulls, served from its
// own upstream, and an unsigned one is refused (decision log).
func TestClientsContainerdHostsDir(t *testing.T) {
	alice := testenv.NewKey(t, "alice")
	a, b := testenv.New(t), testenv.New(t)
	roots := map[string]string{}
	signed := map[string]string{}
	for _, u := range []struct {
		name string
		env  *testenv.Env
	}{{"registry-a.example.com", a}, {"registry-b.example.com", b}} {
		g := u.name + "/team/app"
		roots[g] = u.env.Notary.Init(t, g)
		u.env.Notary.AddDelegation(t, g, testenv.Releases, alice)
		img := testenv.Image(t, u.name, 2, 8<<10)
		signed[u.name] = u.env.Registry.Push(t, "team/app", "v1", img).String()
		u.env.Notary.SignImage(t, g, "v1", img, testenv.Releases)
	}
	a.Registry.Push(t, "team/app", "v2", testenv.Image(t, "registry-a v2", 1, 4096))
	p := start(t, twoUpstreamsConfig(t, a, b, alice, roots))
	host, ca := p.serveTLS(t, "127.0.0.1")
	ctx := t.Context()

	hosts := t.TempDir()
	c := testenv.StartContainerd(t, clientSnippet(t, "containerd-config-path", docHosts, hosts))
	dump, err := c.Run(ctx, nil, "containerd", "--config", c.Config, "config", "dump")
	if err != nil || !strings.Contains(dump, fmt.Sprintf("config_path = %q", hosts)) {
		t.Fatalf("containerd config dump does not show config_path = %q (%v):\n%s", hosts, err, dump)
	}
	for name, snippet := range map[string]string{
		"registry-a.example.com": clientSnippet(t, "containerd-hosts-registry-a", docHost, host, docCA, ca),
		"registry-b.example.com": clientSnippet(t, "containerd-hosts-registry-b", docHost, host, docCA, ca),
	} {
		must(t, os.MkdirAll(filepath.Join(hosts, name), 0o755))
		must(t, os.WriteFile(filepath.Join(hosts, name, "hosts.toml"), []byte(snippet), 0o644))
	}

	pull := func(ref string) (string, error) {
		return c.Run(ctx, nil, "sh", "-ec", clientSnippet(t, "ctr-pull", docHosts, hosts, "registry-a.example.com/team/app:v1", ref))
	}
	for _, up := range []struct {
		name string
		env  *testenv.Env
	}{{"registry-a.example.com", a}, {"registry-b.example.com", b}} {
		if out, err := pull(up.name + "/team/app:v1"); err != nil {
			t.Fatalf("ctr pull %s/team/app:v1: %v\n%s", up.name, err, out)
		}
		if d := p.decision(t, up.name+"/team/app", "v1"); d["verdict"] != "served" || d["digest"] != signed[up.name] {
			t.Fatalf("decision for %s/team/app:v1: %v, want served %s", up.name, d, signed[up.name])
		}
		if n := up.env.Registry.Requests(http.MethodGet, "/manifests/"+signed[up.name]); n == 0 {
			t.Errorf("%s's registry was not asked for the manifest it signed", up.name)
		}
	}
	if out, err := pull("registry-a.example.com/team/app:v2"); err == nil {
		t.Fatalf("ctr pull of the unsigned registry-a.example.com/team/app:v2 succeeded:\n%s", out)
	}
	p.wantDecision(t, "registry-a.example.com/team/app", "v2", "denied", proxy.Reason(trust.NotSigned))
}

// k3sRegistries is the part of k3s's registries.yaml schema
// (pkg/agent/templates.Registry) that docs/clients.md uses; Auth is there so
// that a snippet with credentials still decodes strictly.
type k3sRegistries struct {
	Mirrors map[string]struct {
		Endpoints []string          `yaml:"endpoint"`
		Rewrites  map[string]string `yaml:"rewrite"`
	} `yaml:"mirrors"`
	Configs map[string]struct {
		Auth map[string]string `yaml:"auth"`
		TLS  *struct {
			CAFile             string `yaml:"ca_file"`
			CertFile           string `yaml:"cert_file"`
			KeyFile            string `yaml:"key_file"`
			InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
		} `yaml:"tls"`
	} `yaml:"configs"`
}

// TestClientsK3sRegistriesYAML checks docs/clients.md's k3s registries.yaml
// as far as can be done without k3s: it decodes strictly with k3s's field
// names, becomes the hosts.toml such a file gives (a [host] per endpoint
// with the CA of the endpoint's host, server the registry itself), and ctr
// pulls through that on a standalone containerd: a signed tag pulls, an
// unsigned one is refused (decision log).
func TestClientsK3sRegistriesYAML(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	signed := w.pushSigned(t, "library/app", "v1", "k3s-v1")
	w.Registry.Push(t, "library/app", "v2", testenv.Image(t, "k3s-v2", 1, 4096))
	p := w.start(t, "")
	host, ca := p.serveTLS(t, "127.0.0.1")
	ctx := t.Context()

	var reg k3sRegistries
	snippet := clientSnippet(t, "k3s-registries-yaml", docHost, host, docCA, ca)
	dec := yaml.NewDecoder(strings.NewReader(snippet))
	dec.KnownFields(true)
	if err := dec.Decode(&reg); err != nil {
		t.Fatalf("k3s-registries-yaml does not decode with k3s's fields: %v", err)
	}
	hosts := t.TempDir()
	for registry, m := range reg.Mirrors {
		server := "https://" + registry
		if registry == "docker.io" {
			server = "https://registry-1.docker.io"
		}
		toml := fmt.Sprintf("server = %q\n", server)
		for _, e := range m.Endpoints {
			toml += fmt.Sprintf("\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", e)
			h := strings.TrimPrefix(strings.TrimPrefix(e, "https://"), "http://")
			if c, ok := reg.Configs[h]; ok && c.TLS != nil && c.TLS.CAFile != "" {
				toml += fmt.Sprintf("  ca = %q\n", c.TLS.CAFile)
			}
		}
		t.Logf("hosts.toml for %s:\n%s", registry, toml)
		must(t, os.MkdirAll(filepath.Join(hosts, registry), 0o755))
		must(t, os.WriteFile(filepath.Join(hosts, registry, "hosts.toml"), []byte(toml), 0o644))
	}
	if !strings.Contains(snippet, ca) {
		t.Fatal("the snippet names no CA file")
	}

	c := testenv.StartContainerd(t, "version = 2\n")
	pull := func(ref string) (string, error) { return c.Ctr(ctx, nil, "images", "pull", "--hosts-dir", hosts, ref) }
	if out, err := pull("docker.io/library/app:v1"); err != nil {
		t.Fatalf("ctr pull docker.io/library/app:v1: %v\n%s", err, out)
	}
	if d := p.decision(t, gun, "v1"); d["verdict"] != "served" || d["digest"] != signed.String() {
		t.Fatalf("decision for app:v1: %v, want served %s", d, signed)
	}
	if out, err := pull("docker.io/library/app:v2"); err == nil {
		t.Fatalf("ctr pull of the unsigned app:v2 succeeded:\n%s", out)
	}
	p.wantDecision(t, gun, "v2", "denied", proxy.Reason(trust.NotSigned))
}

// TestClientsPodmanSkopeoRegistriesConf runs docs/clients.md's
// registries.conf: podman (CONTAINERS_REGISTRIES_CONF, its own root, run
// root and vfs storage, nothing of the machine's) pulls a signed tag
// through trustproxy as a mirror and is refused an unsigned one (decision
// log: podman falls back to Docker Hub); skopeo with the same file
// (--registries-conf) copies the signed tag. trustproxy's CA goes in
// /etc/containers/certs.d/<host:port>/ as the document says.
func TestClientsPodmanSkopeoRegistriesConf(t *testing.T) {
	for _, bin := range []string{"podman", "skopeo"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found: apt-get install %s", bin, bin)
		}
	}
	if os.Geteuid() != 0 {
		t.Fatal("podman: this test runs podman as root (euid is not 0)")
	}
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	signed := w.pushSigned(t, "library/app", "v1", "podman-v1")
	w.Registry.Push(t, "library/app", "v2", testenv.Image(t, "podman-v2", 1, 4096))
	p := w.start(t, "")
	host, ca := p.serveTLS(t, "127.0.0.1")
	ctx := t.Context()

	conf := filepath.Join(t.TempDir(), "registries.conf")
	must(t, os.WriteFile(conf, []byte(clientSnippet(t, "registries-conf", docHost, host)), 0o644))
	machineCertsDir(t, filepath.Join("/etc/containers/certs.d", host))
	if out, err := sh(ctx, clientSnippet(t, "containers-certs-d", docHost, host, docCA, ca)); err != nil {
		t.Fatalf("containers-certs-d: %v\n%s", err, out)
	}

	// podman keeps state in run root and root; a short folder under /tmp
	// keeps its sockets' paths short.
	run, err := os.MkdirTemp("/tmp", "pm")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(run) })
	root := t.TempDir()
	podman := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "podman", append([]string{
			"--root", filepath.Join(root, "storage"), "--runroot", run, "--storage-driver", "vfs",
			"--cgroup-manager", "cgroupfs", "--events-backend", "file", "--tmpdir", filepath.Join(root, "tmp"),
		}, args...)...)
		cmd.Env = append(os.Environ(), "CONTAINERS_REGISTRIES_CONF="+conf, "XDG_CONFIG_HOME="+filepath.Join(root, "config"))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() {
		// vfs leaves no mounts; this drops podman's own bookkeeping of the storage.
		podman("system", "reset", "--force")
	})
	if out, err := podman("pull", "docker.io/library/app:v1"); err != nil {
		t.Fatalf("podman pull docker.io/library/app:v1: %v\n%s", err, out)
	}
	if d := p.decision(t, gun, "v1"); d["verdict"] != "served" || d["digest"] != signed.String() {
		t.Fatalf("decision for podman's pull of app:v1: %v, want served %s", d, signed)
	}
	if out, err := podman("image", "inspect", "--format", "{{.Digest}}", "docker.io/library/app:v1"); err != nil || strings.TrimSpace(out) != signed.String() {
		t.Fatalf("podman image inspect: %q (%v), want %s", out, err, signed)
	}
	if out, err := podman("pull", "docker.io/library/app:v2"); err == nil {
		t.Fatalf("podman pull of the unsigned app:v2 succeeded:\n%s", out)
	}
	p.wantDecision(t, gun, "v2", "denied", proxy.Reason(trust.NotSigned))

	before := p.decisions(t, "served", "verified")
	dst := filepath.Join(t.TempDir(), "app-v1")
	if out, err := sh(ctx, clientSnippet(t, "skopeo-copy", "/etc/containers/registries.conf", conf, "dir:app-v1", "dir:"+dst)); err != nil {
		t.Fatalf("skopeo-copy: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dst, "manifest.json")); err != nil {
		t.Fatalf("skopeo copied no manifest: %v", err)
	}
	if after := p.decisions(t, "served", "verified"); after <= before {
		t.Fatalf("skopeo's copy was not served by trustproxy (served decisions %v, then %v)", before, after)
	}
}

// TestClientsCranePathPrefix runs docs/clients.md's crane command: crane
// names the upstream in the path (trustproxy.example.com:5000/docker.io/...).
// A signed tag pulls; an unsigned one fails with trustproxy's reason in
// crane's output and in the decision log.
func TestClientsCranePathPrefix(t *testing.T) {
	if _, err := exec.LookPath("crane"); err != nil {
		t.Fatal("crane not found on PATH: go install github.com/google/go-containerregistry/cmd/crane@v0.22.1 (into $(go env GOPATH)/bin, on PATH)")
	}
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	signed := w.pushSigned(t, "library/app", "v1", "crane-v1")
	w.Registry.Push(t, "library/app", "v2", testenv.Image(t, "crane-v2", 1, 4096))
	p := w.start(t, "")
	host, ca := p.serveTLS(t, "127.0.0.1")
	ctx := t.Context()
	dir := t.TempDir()
	crane := func(tag string) (string, error) {
		return sh(ctx, clientSnippet(t, "crane-pull", docHost, host, docCA, ca,
			"library/app:v1", "library/app:"+tag, "app-v1.tar", filepath.Join(dir, tag+".tar")))
	}
	if out, err := crane("v1"); err != nil {
		t.Fatalf("crane pull: %v\n%s", err, out)
	}
	if d := p.decision(t, gun, "v1"); d["verdict"] != "served" || d["digest"] != signed.String() {
		t.Fatalf("decision for crane's pull of app:v1: %v, want served %s", d, signed)
	}
	out, err := crane("v2")
	if err == nil || !strings.Contains(out, "("+string(trust.NotSigned)+")") {
		t.Fatalf("crane pull of the unsigned v2: err %v, output:\n%s", err, out)
	}
	p.wantDecision(t, gun, "v2", "denied", proxy.Reason(trust.NotSigned))
}
