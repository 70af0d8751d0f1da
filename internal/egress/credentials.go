package egress

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	dockerconfig "github.com/docker/cli/cli/config"
	"github.com/docker/cli/cli/config/credentials"
)

// credentialSource gives an endpoint's username and password when they are
// about to be sent. A source may change its answer between calls (a
// rewritten password file, a credential helper that rotates), so nothing
// keeps its answer longer than the source allows. ("", "", nil) is
// anonymous.
type credentialSource interface {
	get(ctx context.Context) (user, pass string, err error)
	// refused says the server or realm refused what get last returned:
	// a source that keeps answers drops them.
	refused()
	// LogValue names the source, never the secret.
	slog.LogValuer
}

// credentialsOf is the one place an endpoint's configured credentials
// become a source: username and password, username and password_file, or
// docker_config (validated by config as exactly one). nil means anonymous.
func credentialsOf(e Endpoint) credentialSource {
	switch {
	case e.DockerConfig != "":
		host := ""
		if u, err := url.Parse(e.URL); err == nil {
			host = u.Host
		}
		return &dockerConfigSource{field: e.Field, path: e.DockerConfig, key: authKey(host)}
	case e.PasswordFile != "":
		return &fileSource{field: e.Field, user: e.Username, path: e.PasswordFile}
	case e.Username != "" || e.Password != "":
		return staticSource{user: e.Username, pass: e.Password}
	}
	return nil
}

// staticSource is username and password written in the configuration.
type staticSource struct{ user, pass string }

func (s staticSource) get(context.Context) (string, string, error) { return s.user, s.pass, nil }
func (staticSource) refused()                                      {}
func (staticSource) LogValue() slog.Value                          { return slog.StringValue("password") }

// fileSource is a username and the password held in a file. The file is
// read when first needed and again whenever its size or modification time
// changes (checked with one stat per use), so a rotated password is picked
// up without a restart; a refusal makes the next use read it again anyway.
type fileSource struct {
	field, user, path string

	mu    sync.Mutex
	pass  string
	size  int64
	mtime time.Time
	read  bool
}

func (s *fileSource) get(context.Context) (string, string, error) {
	fi, err := os.Stat(s.path)
	if err != nil {
		return "", "", fmt.Errorf("%s.password_file: %w", s.field, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.read && fi.Size() == s.size && fi.ModTime().Equal(s.mtime) {
		return s.user, s.pass, nil
	}
	b, err := os.ReadFile(s.path)
	if err != nil {
		return "", "", fmt.Errorf("%s.password_file: %w", s.field, err)
	}
	pass := string(bytes.TrimSpace(b))
	if pass == "" || strings.ContainsAny(pass, "\r\n") {
		return "", "", fmt.Errorf("%s.password_file %s: want one line holding the password", s.field, s.path)
	}
	s.pass, s.size, s.mtime, s.read = pass, fi.Size(), fi.ModTime(), true
	return s.user, s.pass, nil
}

func (s *fileSource) refused() {
	s.mu.Lock()
	s.read = false
	s.mu.Unlock()
}

func (s *fileSource) LogValue() slog.Value { return slog.StringValue("password_file " + s.path) }

// helperTTL is how long an answer from a docker config (a credential
// helper's above all: each asks a process) is kept before it is asked
// again; a refusal by the server drops it at once.
const helperTTL = time.Minute

// dockerConfigSource resolves the endpoint's host in a docker CLI config
// file as docker login wrote it: credHelpers[host], else credsStore, else
// auths[host]. The file is loaded on each resolution, so an edited file
// counts at the next one. DOCKER_AUTH_CONFIG and other environment are not
// consulted: the file alone says.
type dockerConfigSource struct {
	field, path, key string

	mu         sync.Mutex
	user, pass string
	until      time.Time
}

func (s *dockerConfigSource) get(ctx context.Context) (string, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Now().Before(s.until) {
		return s.user, s.pass, nil
	}
	user, pass, err := s.resolve()
	if err != nil {
		return "", "", err
	}
	s.user, s.pass, s.until = user, pass, time.Now().Add(helperTTL)
	return user, pass, nil
}

func (s *dockerConfigSource) resolve() (string, string, error) {
	f, err := os.Open(s.path)
	if err != nil {
		return "", "", fmt.Errorf("%s.docker_config: %w", s.field, err)
	}
	defer f.Close()
	cf, err := dockerconfig.LoadFromReader(f)
	if err != nil {
		return "", "", fmt.Errorf("%s.docker_config %s: %w", s.field, s.path, err)
	}
	cf.Filename = s.path
	store := credentials.NewFileStore(cf)
	helper := cf.CredentialHelpers[s.key]
	if helper == "" {
		helper = cf.CredentialsStore
	}
	if helper != "" {
		store = credentials.NewNativeStore(cf, helper)
	}
	ac, err := store.Get(s.key)
	if err != nil {
		// docker-credential-helpers' error carries the helper's output
		// when it fails (never its JSON answer, which only success has).
		return "", "", fmt.Errorf("%s.docker_config %s: credentials for %s: %w", s.field, s.path, s.key, err)
	}
	if ac.IdentityToken != "" || ac.RegistryToken != "" {
		return "", "", fmt.Errorf("%s.docker_config %s: the credentials for %s are an identity or registry token, which trustproxy does not use; store a username and password (or access token) instead", s.field, s.path, s.key)
	}
	return ac.Username, ac.Password, nil
}

func (s *dockerConfigSource) refused() {
	s.mu.Lock()
	s.until = time.Time{}
	s.mu.Unlock()
}

func (s *dockerConfigSource) LogValue() slog.Value {
	return slog.StringValue("docker_config " + s.path + " for " + s.key)
}

// authKey is the key a docker config holds host's credentials under: the
// host (with its port) for any registry but Docker Hub's, whose key is
// historically https://index.docker.io/v1/.
func authKey(host string) string {
	switch strings.ToLower(host) {
	case "docker.io", "index.docker.io", "registry-1.docker.io":
		return "https://index.docker.io/v1/"
	}
	return host
}
