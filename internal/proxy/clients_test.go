package proxy_test

import (
	"context"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
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

// shExports runs script with sh -ec, with the test's PATH and env as its
// only environment, and returns the DOCKER_* variables it exported.
func shExports(ctx context.Context, script string, env ...string) ([]string, error) {
	cmd := exec.CommandContext(ctx, "sh", "-ec", script+"env\n")
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%w\n%s", err, out)
	}
	var exported []string
	for line := range strings.Lines(string(out)) {
		if strings.HasPrefix(line, "DOCKER_") {
			exported = append(exported, strings.TrimSuffix(line, "\n"))
		}
	}
	return exported, nil
}

// needCommand fails t when the command name is not on PATH, saying how to
// install it (scripts/test installs every command the tests run).
func needCommand(t *testing.T, name, install string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s not found on PATH: %s (scripts/test does)", name, install)
	}
}

// machinePath makes sure path (under a machine-wide folder such as
// /etc/docker/certs.d, named by a port of this test, so no one else's) does
// not exist yet, and removes it when the test ends (removeIfCreated).
func machinePath(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); err == nil {
		t.Fatalf("%s exists already: another run left it, or another server had this port", path)
	}
	removeIfCreated(t, path)
}

// removeIfCreated removes path when the test ends if it does not exist now,
// with each folder above it that does not exist either (a clean machine has
// no /etc/containers/certs.d); a path that exists now is left as it is then.
func removeIfCreated(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); err == nil {
		return
	}
	top := createdTop(path)
	t.Cleanup(func() {
		if err := os.RemoveAll(top); err != nil {
			t.Errorf("remove %s: %v", top, err)
		}
	})
}

// createdTop is the highest of path and the folders above it that does not
// exist: what creating path with its parents adds to the file system.
func createdTop(path string) string {
	top := path
	for {
		parent := filepath.Dir(top)
		if parent == top {
			return top
		}
		if _, err := os.Lstat(parent); err == nil {
			return top
		}
		top = parent
	}
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

	machinePath(t, filepath.Join("/etc/docker/certs.d", host))
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
// configuration with two upstreams, each with its own registry and Notary
// server, told apart by the ns parameter containerd adds to mirror
// requests. A standalone containerd runs with the Kubernetes snippet in its
// config.toml (the CRI plugin's registry config_path), which `containerd
// config dump` must show, and the hosts directory holds the hosts.toml of
// both upstreams. `ctr images pull --hosts-dir` pulls a signed image of
// each upstream, each served from its own upstream, and is refused an
// unsigned one; the CRI plugin (PullImage, the call a kubelet makes) pulls
// a signed image through config_path and is refused an unsigned one of the
// other upstream. Refusals are asserted in the decision log: containerd
// then goes on to the hosts.toml's server, which does not resolve here.
func TestClientsContainerdHostsDir(t *testing.T) {
	needCommand(t, "containerd", "apt-get install containerd")
	alice := testenv.NewKey(t, "alice")
	a, b := testenv.New(t), testenv.New(t)
	ups := []struct {
		name string
		env  *testenv.Env
	}{{"registry-a.example.com", a}, {"registry-b.example.com", b}}
	roots := map[string]string{}
	signed := map[string]string{}
	for _, u := range ups {
		g := u.name + "/team/app"
		roots[g] = u.env.Notary.Init(t, g)
		u.env.Notary.AddDelegation(t, g, testenv.Releases, alice)
		img := testenv.Image(t, u.name, 2, 8<<10)
		signed[u.name] = u.env.Registry.Push(t, "team/app", "v1", img).String()
		u.env.Notary.SignImage(t, g, "v1", img, testenv.Releases)
		u.env.Registry.Push(t, "team/app", "v2", testenv.Image(t, u.name+" v2", 1, 4096))
	}
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
	for _, up := range ups {
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

	// The CRI plugin, through config_path alone.
	before := p.decisions(t, "served", "verified")
	if _, err := c.CRIPull(ctx, "registry-b.example.com/team/app:v1"); err != nil {
		t.Fatalf("the CRI plugin's pull of registry-b.example.com/team/app:v1: %v\n%s", err, c.Log())
	}
	if after := p.decisions(t, "served", "verified"); after <= before {
		t.Fatalf("the CRI plugin's pull was not served by trustproxy (served decisions %v, then %v)", before, after)
	}
	if d := p.decision(t, "registry-b.example.com/team/app", "v1"); d["digest"] != signed["registry-b.example.com"] {
		t.Fatalf("decision for the CRI plugin's pull: %v, want %s", d, signed["registry-b.example.com"])
	}
	if ref, err := c.CRIPull(ctx, "registry-b.example.com/team/app:v2"); err == nil {
		t.Fatalf("the CRI plugin pulled the unsigned registry-b.example.com/team/app:v2 (%s)", ref)
	}
	p.wantDecision(t, "registry-b.example.com/team/app", "v2", "denied", proxy.Reason(trust.NotSigned))
}

// k3sRegistries is the part of k3s's registries.yaml schema (rancher/wharfie
// pkg/registries.Registry) that docs/clients.md uses; Auth and Rewrites are
// there so that a snippet with credentials or rewrites still decodes
// strictly.
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

// k3sHostsToml is the hosts.toml k3s writes for a registry from
// registries.yaml (pkg/agent/containerd getHostConfigs and the hosts.toml
// template of pkg/agent/templates), for what k3sRegistries holds: server is
// the registry's own /v2 URL (registry-1.docker.io for docker.io), a [host]
// per endpoint, given /v2 when it has no path, with the CA that configs
// names for the endpoint's host. Rewrites, credentials, client certificates
// and endpoints with a path of their own are left out: the snippet has none.
func k3sHostsToml(t *testing.T, reg k3sRegistries, registry string, endpoints []string) string {
	t.Helper()
	server := registry
	if registry == "docker.io" {
		server = "registry-1.docker.io"
	}
	toml := fmt.Sprintf("# File generated by k3s. DO NOT EDIT.\nserver = %q\n\n", "https://"+server+"/v2")
	for _, e := range endpoints {
		u, err := url.Parse(e)
		if err != nil || u.Scheme != "https" || (u.Path != "" && u.Path != "/" && u.Path != "/v2") {
			t.Fatalf("endpoint %q: the test translates https://host[:port] endpoints only", e)
		}
		u.Path = "/v2"
		toml += fmt.Sprintf("[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", u.String())
		if c, ok := reg.Configs[u.Host]; ok && c.TLS != nil && c.TLS.CAFile != "" {
			toml += fmt.Sprintf("  ca = [%q]\n", c.TLS.CAFile)
		}
		toml += "\n"
	}
	return toml
}

// TestClientsK3sRegistriesYAML checks docs/clients.md's k3s registries.yaml
// as far as can be done without k3s: it decodes strictly with k3s's field
// names and becomes the hosts.toml files k3s writes from such a file (one
// for the mirrored registry, one for trustproxy's host, whose configs entry
// names its CA; k3sHostsToml). A standalone containerd whose CRI plugin has
// config_path pointing at them, as k3s's own containerd has, pulls through
// trustproxy with the CRI call a kubelet makes: a signed tag pulls, an
// unsigned one is refused (decision log).
func TestClientsK3sRegistriesYAML(t *testing.T) {
	needCommand(t, "containerd", "apt-get install containerd")
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
	if len(reg.Mirrors["docker.io"].Endpoints) == 0 {
		t.Fatal("the snippet mirrors no endpoint for docker.io")
	}
	files := map[string]string{}
	for h := range reg.Configs { // a registry that configs names gets a hosts.toml of its own
		files[h] = k3sHostsToml(t, reg, h, nil)
	}
	for registry, m := range reg.Mirrors {
		files[registry] = k3sHostsToml(t, reg, registry, m.Endpoints)
	}
	hosts := t.TempDir()
	for registry, toml := range files {
		t.Logf("hosts.toml for %s:\n%s", registry, toml)
		must(t, os.MkdirAll(filepath.Join(hosts, registry), 0o755))
		must(t, os.WriteFile(filepath.Join(hosts, registry, "hosts.toml"), []byte(toml), 0o644))
	}
	if !strings.Contains(files["docker.io"], ca) {
		t.Fatalf("docker.io's hosts.toml names no CA file:\n%s", files["docker.io"])
	}

	c := testenv.StartContainerd(t, fmt.Sprintf("version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = %q\n", hosts))
	if _, err := c.CRIPull(ctx, "docker.io/library/app:v1"); err != nil {
		t.Fatalf("the CRI plugin's pull of docker.io/library/app:v1: %v\n%s", err, c.Log())
	}
	if d := p.decision(t, gun, "v1"); d["verdict"] != "served" || d["digest"] != signed.String() {
		t.Fatalf("decision for app:v1: %v, want served %s", d, signed)
	}
	if ref, err := c.CRIPull(ctx, "docker.io/library/app:v2"); err == nil {
		t.Fatalf("the CRI plugin pulled the unsigned app:v2 (%s)", ref)
	}
	p.wantDecision(t, gun, "v2", "denied", proxy.Reason(trust.NotSigned))
}

// containersEnv is the environment that gives podman and skopeo a
// configuration and storage of their own under dir and run: the
// registries.conf conf, containers.conf (network config, tmp, event and
// image copy paths, cgroupfs), storage.conf (vfs under dir, run root under
// run), an auth file and TMPDIR. Of the machine's they still read the
// signature policy (/etc/containers/policy.json), the registries.conf.d
// drop-ins and the certs.d folders; the test puts trustproxy's CA in one.
func containersEnv(t *testing.T, dir, run, conf string) []string {
	t.Helper()
	containersConf := filepath.Join(dir, "containers.conf")
	tmp := filepath.Join(dir, "tmp") // big files of an image copy, /var/tmp by default
	must(t, os.Mkdir(tmp, 0o700))
	must(t, os.WriteFile(containersConf, fmt.Appendf(nil, `[network]
network_config_dir = %q

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %q
tmp_dir = %q
static_dir = %q
volume_path = %q
image_copy_tmp_dir = %q
`, filepath.Join(dir, "networks"), filepath.Join(dir, "events.log"), filepath.Join(run, "libpod"),
		filepath.Join(dir, "libpod"), filepath.Join(dir, "volumes"), tmp), 0o644))
	storageConf := filepath.Join(dir, "storage.conf")
	must(t, os.WriteFile(storageConf, fmt.Appendf(nil, "[storage]\ndriver = \"vfs\"\ngraphroot = %q\nrunroot = %q\n",
		filepath.Join(dir, "storage"), filepath.Join(run, "storage")), 0o644))
	authFile := filepath.Join(dir, "auth.json")
	must(t, os.WriteFile(authFile, []byte(`{"auths": {}}`+"\n"), 0o600))
	return []string{
		"CONTAINERS_CONF=" + containersConf,
		"CONTAINERS_STORAGE_CONF=" + storageConf,
		"CONTAINERS_REGISTRIES_CONF=" + conf,
		"REGISTRY_AUTH_FILE=" + authFile,
		"TMPDIR=" + tmp,
		"XDG_RUNTIME_DIR=" + run,
		"XDG_CONFIG_HOME=" + filepath.Join(dir, "config"),
		"XDG_DATA_HOME=" + filepath.Join(dir, "data"),
	}
}

// TestClientsPodmanSkopeoRegistriesConf runs docs/clients.md's
// registries.conf: podman, with a configuration and storage of its own
// (containersEnv), pulls a signed tag through trustproxy as a mirror and is
// refused an unsigned one; skopeo with the same file (--registries-conf:
// skopeo 1.9 does not read CONTAINERS_REGISTRIES_CONF) copies the signed
// tag and is refused the unsigned one. Both go on to Docker Hub after a
// refusal, so refusals are asserted in trustproxy's decision log.
// trustproxy's CA goes in /etc/containers/certs.d/<host:port>/ as the
// document says, removed when the test ends.
func TestClientsPodmanSkopeoRegistriesConf(t *testing.T) {
	needCommand(t, "podman", "apt-get install podman")
	needCommand(t, "skopeo", "apt-get install skopeo")
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

	dir := t.TempDir()
	conf := filepath.Join(dir, "registries.conf")
	must(t, os.WriteFile(conf, []byte(clientSnippet(t, "registries-conf", docHost, host)), 0o644))
	machinePath(t, filepath.Join("/etc/containers/certs.d", host))
	if out, err := sh(ctx, clientSnippet(t, "containers-certs-d", docHost, host, docCA, ca)); err != nil {
		t.Fatalf("containers-certs-d: %v\n%s", err, out)
	}
	// What podman and skopeo write as root whatever their configuration
	// says: skopeo's blob location cache, and netavark's run folder (podman
	// makes it at start-up; only containers write in it).
	removeIfCreated(t, "/var/lib/containers/cache/blob-info-cache-v1.boltdb")
	removeIfCreated(t, "/run/containers/networks")

	// The run root holds sockets and locks: a short folder under /tmp keeps
	// their paths short.
	run, err := os.MkdirTemp("/tmp", "pm")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(run) })
	env := containersEnv(t, dir, run, conf)
	podman := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "podman", args...)
		cmd.Env = append(os.Environ(), env...)
		cmd.WaitDelay = 5 * time.Second
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := podman("info", "--format", "{{.Store.GraphRoot}} {{.Store.GraphDriverName}}"); err != nil || strings.TrimSpace(out) != filepath.Join(dir, "storage")+" vfs" {
		t.Fatalf("podman does not use the test's storage: %q (%v)", out, err)
	}
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

	dst := t.TempDir()
	skopeo := func(tag string) (string, error) {
		return sh(ctx, clientSnippet(t, "skopeo-copy", "/etc/containers/registries.conf", conf,
			"docker.io/library/app:v1", "docker.io/library/app:"+tag, "dir:app-v1", "dir:"+filepath.Join(dst, tag)), env...)
	}
	before := p.decisions(t, "served", "verified")
	if out, err := skopeo("v1"); err != nil {
		t.Fatalf("skopeo-copy: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dst, "v1", "manifest.json")); err != nil {
		t.Fatalf("skopeo copied no manifest: %v", err)
	}
	if after := p.decisions(t, "served", "verified"); after <= before {
		t.Fatalf("skopeo's copy was not served by trustproxy (served decisions %v, then %v)", before, after)
	}
	before = p.decisions(t, "denied", string(trust.NotSigned))
	if out, err := skopeo("v2"); err == nil {
		t.Fatalf("skopeo copy of the unsigned app:v2 succeeded:\n%s", out)
	}
	if after := p.decisions(t, "denied", string(trust.NotSigned)); after <= before {
		t.Fatalf("skopeo's copy of app:v2 was not refused by trustproxy (denied decisions %v, then %v)", before, after)
	}
}

// TestClientsCranePathPrefix runs docs/clients.md's crane command: crane
// names the upstream in the path (trustproxy.example.com:5000/docker.io/...).
// A signed tag pulls; an unsigned one fails with trustproxy's reason in
// crane's output and in the decision log.
func TestClientsCranePathPrefix(t *testing.T) {
	needCommand(t, "crane", "go install github.com/google/go-containerregistry/cmd/crane@v0.22.1, with $(go env GOPATH)/bin on PATH")
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

// TestClientsCraneSignatureSources pulls with the crane command through
// trustproxy under one rule whose sources are cosign and Notation (require
// any), each signer trusted for one kind: a keyless cosign signature of the
// trusted identity, a keyed cosign signature logged in the test Sigstore's
// Rekor, and a Notation signature under the trusted CA pull; another
// identity's keyless signature, one without its inclusion proof, a cosign
// signature by another key, a Notation signature under another CA and an
// unsigned image fail, each with its
// reason in crane's output and in the decision log.
func TestClientsCraneSignatureSources(t *testing.T) {
	needCommand(t, "crane", "go install github.com/google/go-containerregistry/cmd/crane@v0.22.1, with $(go env GOPATH)/bin on PATH")
	w := newWorld(t)
	ss := testenv.NewTestSigstore(t)
	ci := testenv.NewCosignKey(t, "ci")
	acme, evil := testenv.NewNotationCA(t, "acme"), testenv.NewNotationCA(t, "evil")
	release := acme.Key(t, "release", 0)

	want := map[string]v1.Hash{
		"keyless":  w.pushKeyless(t, "keyless", ss, releaseSubject, releaseIssuer, testenv.Keyless{}),
		"notation": w.pushNotationSigned(t, "notation", "crane-notation", release),
	}
	keyed := w.pushCosigned(t, "keyed", "crane-keyed", nil)
	w.Registry.CosignAttach(t, "library/app", digest.Digest(keyed.String()),
		ss.Logged(t, ci.Bundle(t, w.Registry.Host()+"/library/app", digest.Digest(keyed.String())), ci))
	want["keyed"] = keyed
	w.pushKeyless(t, "fork", ss, strings.Replace(releaseSubject, "/app/", "/fork/", 1), releaseIssuer, testenv.Keyless{})
	w.pushKeyless(t, "noproof", ss, releaseSubject, releaseIssuer, testenv.Keyless{NoInclusionProof: true})
	w.pushNotationSigned(t, "evil", "crane-evil", evil.Key(t, "release", 0))
	w.pushCosigned(t, "unsigned", "crane-unsigned", nil)
	w.pushCosigned(t, "otherkey", "crane-otherkey", testenv.NewCosignKey(t, "other"))

	rule := `    - repositories: "docker.io/**"
      sources: [cosign, notation]
      signers: [ci, release, acme]
`
	cfg := w.keylessConfig(t, t.TempDir(), ci, ss.RootFile, anchoredRelease, rule, "")
	cfg = strings.Replace(cfg, "  rules:\n", "    - name: acme\n      notation_ca: "+acme.PEMFile+
		"\n      notation_identities: ['"+release.Identity()+"']\n  rules:\n", 1)
	p := start(t, cfg)

	dir := t.TempDir()
	crane := func(tag string) (string, error) {
		cmd := exec.CommandContext(t.Context(), "crane", "pull", "--insecure", p.host+"/library/app:"+tag, filepath.Join(dir, tag+".tar"))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for tag, d := range want {
		if out, err := crane(tag); err != nil {
			t.Errorf("crane pull %s: %v\n%s", tag, err, out)
			continue
		}
		if got := p.decision(t, gun, tag); got["verdict"] != "served" || got["digest"] != d.String() {
			t.Errorf("decision for crane's pull of app:%s: %v, want served %s", tag, got, d)
		}
	}
	for tag, reason := range map[string]proxy.Reason{
		"fork":     proxy.ReasonIdentityMismatch,
		"noproof":  proxy.ReasonNoTlog,
		"evil":     proxy.Reason(trust.UntrustedSigner),
		"otherkey": proxy.Reason(trust.UntrustedSigner),
		"unsigned": proxy.Reason(trust.NotSigned),
	} {
		out, err := crane(tag)
		if err == nil || !strings.Contains(out, "("+string(reason)+")") {
			t.Errorf("crane pull of %s: err %v, want %s in the output:\n%s", tag, err, reason, out)
		}
		p.wantDecision(t, gun, tag, "denied", reason)
	}
}
