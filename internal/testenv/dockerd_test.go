package testenv

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func TestDockerdPullsFromLoopbackRegistry(t *testing.T) {
	reg := startDockerdRegistry(t)
	manifest, config := pushDockerdHello(t, reg.host+"/library/hello:1")
	d := StartDockerd(t, "")

	ref := reg.host + "/library/hello:1"
	if out, err := d.Pull(t.Context(), ref); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("docker pull %s:\n%s", ref, out)
	}
	if id, err := d.ImageID(t.Context(), ref); err != nil || id != config.String() {
		t.Errorf("ImageID(%s) = %q, %v; want %s", ref, id, err, config)
	}
	digests, err := d.RepoDigests(t.Context(), ref)
	if want := reg.host + "/library/hello@" + manifest.String(); err != nil || !slices.Contains(digests, want) {
		t.Errorf("RepoDigests(%s) = %q, %v; want %s among them", ref, digests, err, want)
	}
	if ctr, err := exec.LookPath("ctr"); err == nil {
		out, err := exec.CommandContext(t.Context(), ctr, "-a", d.ContainerdAddress(), "namespaces", "list", "-q").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "moby") {
			t.Errorf("ctr -a %s namespaces list = %q, %v; want moby", d.ContainerdAddress(), out, err)
		}
	}
}

func TestDockerdPullsHubNamesThroughMirror(t *testing.T) {
	reg := startDockerdRegistry(t)
	manifest, config := pushDockerdHello(t, reg.host+"/library/hello:1")
	d := StartDockerd(t, "http://"+reg.host)

	pushed := len(reg.requests())
	if out, err := d.Pull(t.Context(), "library/hello:1"); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("docker pull library/hello:1:\n%s", out)
	}
	// dockerd 20.10 resolves a tag with HEAD and fetches the manifest by digest; containerd would add ?ns=docker.io.
	seen := reg.requests()[pushed:]
	for _, want := range []string{
		"GET /v2/",
		"HEAD /v2/library/hello/manifests/1",
		"GET /v2/library/hello/manifests/" + manifest.String(),
		"GET /v2/library/hello/blobs/" + config.String(),
	} {
		if !slices.Contains(seen, want) {
			t.Errorf("mirror saw %q, want %q among them", seen, want)
		}
	}
	if id, err := d.ImageID(t.Context(), "library/hello:1"); err != nil || id != config.String() {
		t.Errorf("ImageID(library/hello:1) = %q, %v; want %s", id, err, config)
	}
}

// A mirror's refusal is not what docker prints for a Docker Hub name: dockerd goes on to
// registry-1.docker.io and prints that failure (here a DNS error; with Internet access, Hub's answer).
// The refusal shows in the daemon log, and in docker's output when the pull names the registry.
func TestDockerdMirrorRefusal(t *testing.T) {
	const reason = "library/x:1 is not signed by a trusted signer"
	var mu sync.Mutex
	var seen []string
	mirror := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.RequestURI())
		mu.Unlock()
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		if r.URL.Path == "/v2/" {
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, `{"errors":[{"code":"DENIED","message":"`+reason+`"}]}`)
	}))
	t.Cleanup(mirror.Close)
	d := StartDockerd(t, mirror.URL)

	start := time.Now()
	out, err := d.Pull(t.Context(), "library/x:1")
	t.Logf("docker pull library/x:1 took %s:\n%s", time.Since(start).Round(time.Millisecond), out)
	if err == nil {
		t.Fatal("pull through the mirror succeeded, want the refusal")
	}
	mu.Lock()
	if want := "HEAD /v2/library/x/manifests/1"; !slices.Contains(seen, want) {
		t.Errorf("mirror saw %q, want %q among them", seen, want)
	}
	mu.Unlock()
	if want := "Attempting next endpoint for pull after error: denied: " + reason; !strings.Contains(d.Log(), want) {
		t.Errorf("daemon log lacks %q:\n%s", want, d.logTail(dockerdLogTail))
	}

	ref := strings.TrimPrefix(mirror.URL, "http://") + "/library/x:1"
	out, err = d.Pull(t.Context(), ref)
	if want := "denied: " + reason; err == nil || !strings.Contains(out, want) {
		t.Errorf("docker pull %s = %q, %v; want an error with %q", ref, out, err, want)
	}
}

// dockerdRegistry is an in-process distribution registry on 127.0.0.1 that records its requests.
type dockerdRegistry struct {
	host string // 127.0.0.1:PORT

	mu  sync.Mutex
	log []string // "GET /v2/library/hello/manifests/1"
}

func (r *dockerdRegistry) requests() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.log)
}

func startDockerdRegistry(t *testing.T) *dockerdRegistry {
	t.Helper()
	config := &configuration.Configuration{
		Storage: configuration.Storage{
			"inmemory":    configuration.Parameters{},
			"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
		},
	}
	config.HTTP.Secret = "dockerd-test"
	app := handlers.NewApp(context.Background(), config)
	reg := &dockerdRegistry{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reg.mu.Lock()
		reg.log = append(reg.log, r.Method+" "+r.URL.Path)
		reg.mu.Unlock()
		app.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		srv.Close()
		app.Shutdown()
	})
	reg.host = strings.TrimPrefix(srv.URL, "http://")
	return reg
}

// pushDockerdHello pushes a one-layer Docker schema2 image for linux/amd64 to ref and returns the
// digests of its manifest and its config (the image ID docker shows).
func pushDockerdHello(t *testing.T, ref string) (manifest, config v1.Hash) {
	t.Helper()
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	body := []byte("hello from trustproxy\n")
	tw.WriteHeader(&tar.Header{Name: "hello.txt", Mode: 0o644, Size: int64(len(body)), ModTime: time.Unix(0, 0)})
	tw.Write(body)
	tw.Close()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layer.Bytes())), nil
	}, tarball.WithMediaType(types.DockerLayer))
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Cmd = []string{"/hello.txt"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	img = mutate.ConfigMediaType(mutate.MediaType(img, types.DockerManifestSchema2), types.DockerConfigJSON)

	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	if manifest, err = img.Digest(); err != nil {
		t.Fatal(err)
	}
	if config, err = img.ConfigName(); err != nil {
		t.Fatal(err)
	}
	return manifest, config
}
