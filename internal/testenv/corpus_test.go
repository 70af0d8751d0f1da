package testenv_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd" // registers the "htpasswd" access controller
	_ "github.com/distribution/distribution/v3/registry/auth/token"    // registers the "token" access controller
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	"sigs.k8s.io/yaml"

	"github.com/trustproxy/trustproxy/internal/demo"
	"github.com/trustproxy/trustproxy/internal/sample"
	"github.com/trustproxy/trustproxy/internal/scan"
	"github.com/trustproxy/trustproxy/internal/testenv"
)

var fuzzCorpus = flag.Bool("fuzzcorpus", false, "write the seed corpora of the repository's fuzz targets (testdata/fuzz/FuzzX/real-*) from real inputs")

// TestWriteFuzzCorpus writes, when run with -fuzzcorpus (as root: it starts
// a Docker daemon), the seed corpus of the repository's fuzz targets from
// real inputs, as testdata/fuzz/FuzzX/real-* files in Go's corpus format:
//
//	go test -count=1 -run TestWriteFuzzCorpus ./internal/testenv -fuzzcorpus
//
// The inputs: TUF metadata and keys a real notary-server serves for a GUN
// with a delegation and signed tags; the manifests a distribution registry
// serves for a Docker image, an OCI image, an OCI index and a Docker
// manifest list; the request paths and queries go-containerregistry,
// skopeo, dockerd (as a mirror) and ctr (through hosts.toml) send while
// pulling them; the challenges distribution's token and htpasswd access
// controllers send; a Harbor scanner adapter's metadata and reports, and a
// scan credential as trustproxy mints it; the demo's and the Kubernetes
// ConfigMap's configurations, and PEM keys and certificates as notary and
// trustproxy's signers hold them. It replaces
// the real-* files of each target it writes and leaves any other file there
// (such as a failing input the fuzzer saved) alone. internal/cache's
// targets are seeded by their own f.Add calls.
//
// `go test ./...` runs every seed once through its target; scripts/test
// then fuzzes each target from them.
func TestWriteFuzzCorpus(t *testing.T) {
	if !*fuzzCorpus {
		t.Skip("run with -fuzzcorpus to write the fuzz targets' seed corpora")
	}
	c := corpus{}
	env := testenv.New(t)
	pushed := pushAndSign(t, env)
	notaryInputs(t, c, env)
	manifestInputs(t, c, env, pushed)
	requestInputs(t, c, env, pushed)
	challengeInputs(t, c)
	scanInputs(t, c, env, pushed)
	configInputs(t, c)
	c.write(t, filepath.Join("..", ".."))
}

// corpus holds seeds by package folder (from the repository root), target
// and name.
type corpus map[string]map[string]map[string][]any

// add adds a seed named real-name, unless target has one of the same values.
func (c corpus) add(pkg, target, name string, values ...any) {
	if c[pkg] == nil {
		c[pkg] = map[string]map[string][]any{}
	}
	if c[pkg][target] == nil {
		c[pkg][target] = map[string][]any{}
	}
	for _, v := range c[pkg][target] {
		if fmt.Sprintf("%q", v) == fmt.Sprintf("%q", values) {
			return
		}
	}
	c[pkg][target]["real-"+name] = values
}

// write replaces the real-* files of each target under root with c's seeds.
func (c corpus) write(t *testing.T, root string) {
	t.Helper()
	for pkg, targets := range c {
		for target, seeds := range targets {
			dir := filepath.Join(root, pkg, "testdata", "fuzz", target)
			old, _ := filepath.Glob(filepath.Join(dir, "real-*"))
			for _, f := range old {
				if err := os.Remove(f); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			for name, values := range seeds {
				if err := os.WriteFile(filepath.Join(dir, name), corpusFile(t, values), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			t.Logf("%s/%s: %d seeds", pkg, target, len(seeds))
		}
	}
}

// corpusFile encodes values as the go command's fuzz corpus files do.
func corpusFile(t *testing.T, values []any) []byte {
	t.Helper()
	var b bytes.Buffer
	b.WriteString("go test fuzz v1\n")
	for _, v := range values {
		switch v := v.(type) {
		case []byte:
			fmt.Fprintf(&b, "[]byte(%q)\n", v)
		case string:
			fmt.Fprintf(&b, "string(%q)\n", v)
		default:
			t.Fatalf("corpus value of type %T", v)
		}
	}
	return b.Bytes()
}

const corpusGUN = "docker.io/library/app"

// pushed are the manifests pushed as library/app, by tag, and the platform
// manifests of the two indexes.
type pushed struct {
	tags     map[string]partial.Describable
	children []v1.Image
}

// pushAndSign pushes a Docker image (v1), an OCI image (oci), an OCI index
// (multi) and a Docker manifest list (list) as library/app and signs them in
// targets/releases, with a second delegation (targets/qa) holding one tag.
func pushAndSign(t *testing.T, env *testenv.Env) pushed {
	t.Helper()
	release, qa := testenv.NewKey(t, "release"), testenv.NewKey(t, "qa")
	env.Notary.Init(t, corpusGUN)
	env.Notary.AddDelegation(t, corpusGUN, testenv.Releases, release)
	env.Notary.AddDelegation(t, corpusGUN, "targets/qa", qa)
	p := pushed{tags: map[string]partial.Describable{}}
	image := testenv.Image(t, "corpus v1", 2, 2048)
	oci := testenv.OCIImage(t, "linux", "amd64", 2048)
	amd, arm := testenv.OCIImage(t, "linux", "amd64", 2048), testenv.OCIImage(t, "linux", "arm64", 2048)
	lamd, larm := testenv.ImageFor(t, "corpus list", "linux/amd64", 1, 1024), testenv.ImageFor(t, "corpus list", "linux/arm64/v8", 1, 1024)
	for tag, img := range map[string]v1.Image{"v1": image, "oci": oci} {
		env.Registry.Push(t, "library/app", tag, img)
		env.Notary.SignImage(t, corpusGUN, tag, img, testenv.Releases)
		p.tags[tag] = img
	}
	for tag, idx := range map[string]v1.ImageIndex{"multi": testenv.OCIIndex(t, amd, arm), "list": testenv.Index(t, lamd, larm)} {
		env.Registry.PushIndex(t, "library/app", tag, idx)
		env.Notary.SignImage(t, corpusGUN, tag, idx, testenv.Releases)
		p.tags[tag] = idx
	}
	env.Notary.SignImage(t, corpusGUN, "v1-qa", image, "targets/qa")
	p.children = []v1.Image{amd, arm, lamd, larm}
	return p
}

// notaryInputs: the GUN's TUF metadata as notary-server serves it, and the
// keys in it.
func notaryInputs(t *testing.T, c corpus, env *testenv.Env) {
	t.Helper()
	rec := env.Notary.Record(t, corpusGUN)
	roles := []string{"root", "timestamp", "snapshot", "targets", "targets/releases", "targets/qa"}
	for _, role := range roles {
		b := rec.Files[role+".json"]
		if b == nil {
			t.Fatalf("notary-server served no %s.json", role)
		}
		name := "notary-" + strings.ReplaceAll(role, "/", "-")
		c.add("internal/trust", "FuzzSnapshotRoles", name, b)
		if strings.HasPrefix(role, "targets") {
			c.add("internal/trust", "FuzzDelegationNames", name, b, role)
		}
		var m struct {
			Signed struct {
				Keys        map[string]tufKey `json:"keys"`
				Delegations struct {
					Keys map[string]tufKey `json:"keys"`
				} `json:"delegations"`
			} `json:"signed"`
		}
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("%s.json: %v", role, err)
		}
		for id, k := range mergeKeys(m.Signed.Keys, m.Signed.Delegations.Keys) {
			pub, err := base64.StdEncoding.DecodeString(k.Value.Public)
			if err != nil {
				t.Fatalf("%s.json key %s: %v", role, id, err)
			}
			c.add("internal/trust", "FuzzKeySPKI", name+"-"+k.Type+"-"+id[:12], k.Type, pub)
			if k.Type == "ecdsa-x509" {
				c.add("config", "FuzzParsePublicKeys", name+"-cert-"+id[:12], pub)
			}
		}
	}
}

type tufKey struct {
	Type  string `json:"keytype"`
	Value struct {
		Public string `json:"public"`
	} `json:"keyval"`
}

func mergeKeys(a, b map[string]tufKey) map[string]tufKey {
	out := map[string]tufKey{}
	for _, m := range []map[string]tufKey{a, b} {
		for id, k := range m {
			out[id] = k
		}
	}
	return out
}

// manifestInputs: each manifest as the registry serves it.
func manifestInputs(t *testing.T, c corpus, env *testenv.Env, p pushed) {
	t.Helper()
	get := func(d v1.Hash) []byte {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, env.Registry.URL()+"/v2/library/app/manifests/"+d.String(), nil)
		req.Header.Set("Accept", strings.Join([]string{string(types.OCIImageIndex), string(types.OCIManifestSchema1),
			string(types.DockerManifestList), string(types.DockerManifestSchema2)}, ", "))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET manifest %s: %d %v", d, resp.StatusCode, err)
		}
		return b
	}
	for tag, m := range p.tags {
		d, err := m.Digest()
		if err != nil {
			t.Fatal(err)
		}
		c.add("internal/proxy", "FuzzParseManifest", "registry-"+tag, get(d))
	}
	for i, img := range p.children {
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		c.add("internal/proxy", "FuzzParseManifest", fmt.Sprintf("registry-platform-%d", i), get(d))
	}
}

// requestInputs: the paths and queries clients send while pulling, one of
// each client, method and kind of route.
func requestInputs(t *testing.T, c corpus, env *testenv.Env, p pushed) {
	t.Helper()
	var mu sync.Mutex
	client := ""
	seen := map[string]bool{}
	env.Registry.SetFault(func(_ http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		defer mu.Unlock()
		kind := "ping"
		for _, k := range []string{"/manifests/", "/blobs/", "/tags/list"} {
			if strings.Contains(r.URL.Path, k) {
				kind = strings.Trim(k, "/")
			}
		}
		if r.URL.RawQuery != "" {
			kind += "-query"
		}
		name := "request-" + client + "-" + strings.ToLower(r.Method) + "-" + strings.ReplaceAll(kind, "/", "-")
		if !seen[name] {
			seen[name] = true
			c.add("internal/proxy", "FuzzParseRequest", name, r.URL.EscapedPath(), r.URL.RawQuery)
		}
		return false
	})
	defer env.Registry.SetFault(nil)
	as := func(name string) {
		mu.Lock()
		client = name
		mu.Unlock()
	}
	ctx := t.Context()
	host := env.Registry.Host()

	as("ggcr")
	for tag := range p.tags {
		if _, err := sample.Pull(ctx, host+"/library/app:"+tag); err != nil {
			t.Fatalf("go-containerregistry pull %s: %v", tag, err)
		}
	}
	as("skopeo")
	for _, tag := range []string{"v1", "multi"} {
		if out, err := exec.CommandContext(ctx, "skopeo", "copy", "--src-tls-verify=false", "docker://"+host+"/library/app:"+tag,
			"oci:"+filepath.Join(t.TempDir(), "layout")).CombinedOutput(); err != nil {
			t.Fatalf("skopeo copy %s: %v\n%s", tag, err, out)
		}
	}
	as("dockerd")
	d := testenv.StartDockerd(t, env.Registry.URL())
	if out, err := d.Pull(ctx, "app:list"); err != nil {
		t.Fatalf("docker pull through the mirror: %v\n%s", err, out)
	}
	as("ctr")
	hosts := t.TempDir()
	if err := os.MkdirAll(filepath.Join(hosts, "docker.io"), 0o700); err != nil {
		t.Fatal(err)
	}
	toml := "server = \"https://registry-1.docker.io\"\n\n[host.\"" + env.Registry.URL() + "\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
	if err := os.WriteFile(filepath.Join(hosts, "docker.io", "hosts.toml"), []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(ctx, "ctr", "-a", d.ContainerdAddress(), "-n", "corpus", "images", "pull",
		"--hosts-dir", hosts, "docker.io/library/app:multi").CombinedOutput(); err != nil {
		t.Fatalf("ctr pull through hosts.toml: %v\n%s", err, out)
	}
}

// challengeInputs: the WWW-Authenticate headers distribution's token and
// htpasswd access controllers send for the ping, a pull and a push.
func challengeInputs(t *testing.T, c corpus) {
	t.Helper()
	bundle := testenv.NewKey(t, "token-issuer").CertFile
	for _, auth := range []struct {
		name string
		cfg  configuration.Auth
	}{
		{"token", configuration.Auth{"token": configuration.Parameters{"realm": "https://auth.registry.example/token",
			"service": "registry.example", "issuer": "auth.registry.example", "rootcertbundle": bundle}}},
		{"htpasswd", configuration.Auth{"htpasswd": configuration.Parameters{"realm": "Registry Realm",
			"path": filepath.Join(t.TempDir(), "htpasswd")}}},
	} {
		cfg := &configuration.Configuration{}
		cfg.Storage = configuration.Storage{"inmemory": configuration.Parameters{}}
		cfg.HTTP.Secret = "corpus"
		cfg.Auth = auth.cfg
		srv := httptest.NewServer(handlers.NewApp(context.Background(), cfg))
		for _, r := range []struct{ name, method, path string }{
			{"ping", http.MethodGet, "/v2/"},
			{"pull", http.MethodGet, "/v2/library/app/manifests/v1"},
			{"push", http.MethodPost, "/v2/library/app/blobs/uploads/"},
		} {
			req, _ := http.NewRequestWithContext(t.Context(), r.method, srv.URL+r.path, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			h := resp.Header.Get("WWW-Authenticate")
			if resp.StatusCode != http.StatusUnauthorized || h == "" {
				t.Fatalf("distribution %s %s %s: %d, challenge %q", auth.name, r.method, r.path, resp.StatusCode, h)
			}
			c.add("internal/egress", "FuzzParseChallenges", "distribution-"+auth.name+"-"+r.name, h)
		}
		srv.Close()
	}
	// RFC 9110 section 10.2.3's two forms, and the date as net/http writes it.
	c.add("internal/egress", "FuzzRetryAfter", "rfc9110-date", "Fri, 31 Dec 1999 23:59:59 GMT")
	c.add("internal/egress", "FuzzRetryAfter", "rfc9110-seconds", "120")
	c.add("internal/egress", "FuzzRetryAfter", "net-http-date", time.Now().Add(30*time.Second).UTC().Format(http.TimeFormat))
}

// scanInputs: a scanner adapter's metadata, with the media type of each
// manifest pushed; its report on the Docker image in both report types;
// and the credential trustproxy mints for a scanner's pull.
func scanInputs(t *testing.T, c corpus, env *testenv.Env, p pushed) {
	t.Helper()
	s := testenv.StartScanner(t)
	img := p.tags["v1"].(v1.Image)
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	dgst := digest.Digest(d.String())
	s.SetReport(dgst, []scan.Vulnerability{
		{ID: "CVE-2024-3094", Package: "xz-utils", Version: "5.6.0-0.2", FixVersion: "5.6.1+really5.4.5-1", Severity: "Critical",
			Description: "Malicious code was discovered in the upstream tarballs of xz, starting with version 5.6.0.",
			Links:       []string{"https://nvd.nist.gov/vuln/detail/CVE-2024-3094"}},
		{ID: "CVE-2023-4911", Package: "libc6", Version: "2.36-9", FixVersion: "2.36-9+deb12u3", Severity: "High",
			Links: []string{"https://security-tracker.debian.org/tracker/CVE-2023-4911"}},
		{ID: "CVE-2023-2650", Package: "openssl", Version: "3.0.8-1", Severity: "Medium"},
	})
	metadata := scannerGet(t, s.URL()+"/api/v1/metadata", "application/vnd.scanner.adapter.metadata+json; version=1.1")
	for tag, m := range p.tags {
		mt, err := m.MediaType()
		if err != nil {
			t.Fatal(err)
		}
		c.add("internal/scan", "FuzzMetadata", "testenv-adapter-"+tag, metadata, string(mt))
	}

	body, _ := json.Marshal(scan.ScanRequest{
		Registry: scan.Registry{URL: env.Registry.URL(), Authorization: "Basic " + base64.StdEncoding.EncodeToString([]byte("scanner:secret"))},
		Artifact: scan.Artifact{Repository: "library/app", Digest: dgst.String(), Tag: "v1", MimeType: string(types.DockerManifestSchema2)},
	})
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, s.URL()+"/api/v1/scan", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/vnd.scanner.adapter.scan.request+json; version=1.1")
	req.Header.Set("Accept", "application/vnd.scanner.adapter.scan.response+json; version=1.0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var accepted struct{ ID string }
	err = json.NewDecoder(resp.Body).Decode(&accepted)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("scan request: %d %v", resp.StatusCode, err)
	}
	for _, rt := range []string{scan.ReportV11, scan.ReportHarbor10} {
		name := "testenv-adapter-v1.1"
		if rt == scan.ReportHarbor10 {
			name = "testenv-adapter-harbor-1.0"
		}
		c.add("internal/scan", "FuzzParseReport", name, scannerGet(t, s.URL()+"/api/v1/scan/"+accepted.ID+"/report", rt))
	}

	key, err := scan.LoadKey(filepath.Join(t.TempDir(), "scan-key"))
	if err != nil {
		t.Fatal(err)
	}
	creds, err := scan.NewCredentials(key)
	if err != nil {
		t.Fatal(err)
	}
	for name, g := range map[string]scan.Grant{
		"minted":         {Repository: corpusGUN, Digest: dgst, Expires: time.Now().Add(10 * time.Minute)},
		"minted-expired": {Repository: corpusGUN, Digest: dgst, Expires: time.Now().Add(-time.Minute)},
	} {
		c.add("internal/scan", "FuzzCheckCredential", name, creds.Mint(g))
	}
}

// scannerGet GETs url with accept and returns the body of its 200, after
// the adapter's 302s while a scan runs.
func scannerGet(t *testing.T, url, accept string) []byte {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
		req.Header.Set("Accept", accept)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode == http.StatusOK {
			return b
		}
		if resp.StatusCode != http.StatusFound {
			t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
		}
	}
	t.Fatalf("GET %s: no report in 30 s", url)
	return nil
}

// configInputs: trustproxy configurations as they are written (the
// Kubernetes ConfigMap's, the demo's) and the PEM files the demo and a
// signer hold.
func configInputs(t *testing.T, c corpus) {
	t.Helper()
	read := func(path string) []byte {
		t.Helper()
		b, err := os.ReadFile(filepath.Join("..", "..", path))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// FuzzLoad reads config/trustproxy.yaml and the embedded default itself.
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal(read("deploy/configmap.yaml"), &cm); err != nil || cm.Data["trustproxy.yaml"] == "" {
		t.Fatalf("deploy/configmap.yaml: %v", err)
	}
	c.add("config", "FuzzLoad", "deploy-configmap", []byte(cm.Data["trustproxy.yaml"]))

	dir := t.TempDir()
	d, err := demo.Start(t.Context(), dir, "127.0.0.1:0")
	if err != nil {
		t.Fatalf("demo: %v", err)
	}
	defer d.Close()
	b, err := os.ReadFile(d.ConfigFile)
	if err != nil {
		t.Fatal(err)
	}
	c.add("config", "FuzzLoad", "demo", b)
	pems, _ := filepath.Glob(filepath.Join(dir, "*"))
	for _, f := range pems {
		b, err := os.ReadFile(f)
		if err != nil || !bytes.Contains(b, []byte("-----BEGIN ")) || bytes.Contains(b, []byte("PRIVATE KEY")) {
			continue
		}
		c.add("config", "FuzzParsePublicKeys", "demo-"+filepath.Base(f), b)
	}
	k := testenv.NewKey(t, "signer")
	for _, f := range []string{k.CertFile, k.PublicKeyFile} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		c.add("config", "FuzzParsePublicKeys", "signer-"+strings.TrimPrefix(filepath.Ext(f), "."), b)
	}
}
