package egress

import (
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

// basicRegistry answers 401 with a Basic challenge until it sees user:pass.
func basicRegistry(t *testing.T, user, pass *string) *server {
	return newServer(t, func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != *user || p != *pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="registry"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, "content")
	}, false)
}

// TestDockerConfigCredsStore: with no credHelpers entry for the host, the
// credsStore helper answers; its answer is kept (one helper run for several
// requests) until the registry refuses it, and then asked again.
func TestDockerConfigCredsStore(t *testing.T) {
	user, pass := "store-user", "store-pass"
	reg := basicRegistry(t, &user, &pass)
	host := strings.TrimPrefix(reg.URL, "http://")
	helper := testenv.NewCredentialHelper(t, "egress-store", map[string]testenv.Cred{host: {Username: user, Secret: pass}})
	cfg := testenv.DockerConfig(t, nil, map[string]string{"other.example": "nonexistent"}, "egress-store")
	c := newClient(t, Endpoint{URL: reg.URL, DockerConfig: cfg})
	for range 3 {
		if resp, err := get(t, c, reg.URL+"/v2/library/app/manifests/v1"); err != nil || resp.StatusCode != 200 {
			t.Fatalf("got %v %v", resp, err)
		}
	}
	if n := helper.Calls(); n != 1 {
		t.Fatalf("the helper ran %d times for 3 requests, want 1", n)
	}
	pass = "rotated" // the registry no longer takes the kept answer
	if resp, err := get(t, c, reg.URL+"/v2/library/app/manifests/v1"); err != nil || resp.StatusCode != 401 {
		t.Fatalf("with a refused password: %v %v", resp, err)
	}
	if resp, err := get(t, c, reg.URL+"/v2/library/app/manifests/v1"); err != nil || resp.StatusCode != 401 {
		t.Fatalf("got %v %v", resp, err)
	}
	if n := helper.Calls(); n < 2 {
		t.Fatalf("the helper was not asked again after a refusal (%d runs)", n)
	}
}

// TestPasswordFileReadWhenChanged: the password file is read again once it
// changes, and an unreadable one fails the request naming the field.
func TestPasswordFileReadWhenChanged(t *testing.T) {
	user, pass := "u", "first"
	reg := basicRegistry(t, &user, &pass)
	f := filepath.Join(t.TempDir(), "password")
	write := func(s string) {
		if err := os.WriteFile(f, []byte(s+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("first")
	c := newClient(t, Endpoint{URL: reg.URL, Username: "u", PasswordFile: f})
	if resp, err := get(t, c, reg.URL+"/v2/x/manifests/v1"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("got %v %v", resp, err)
	}
	pass = "second-longer"
	write("second-longer")
	if resp, err := get(t, c, reg.URL+"/v2/x/manifests/v1"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("after the file changed: %v %v", resp, err)
	}
	os.Remove(f)
	if _, err := get(t, c, reg.URL+"/v2/x/manifests/v1"); err == nil || !strings.Contains(err.Error(), "upstreams[0].password_file") {
		t.Fatalf("with the file gone: %v, want an error naming password_file", err)
	}
}

// TestCredentialSourcesLogNoSecret: a source logs as its kind and path.
func TestCredentialSourcesLogNoSecret(t *testing.T) {
	for _, e := range []Endpoint{
		{Field: "f", URL: "https://r.example", Username: "u", Password: "hunter2"},
		{Field: "f", URL: "https://r.example", Username: "u", PasswordFile: "/run/secrets/hunter2-file"},
		{Field: "f", URL: "https://r.example", DockerConfig: "/etc/docker/config.json"},
	} {
		var b strings.Builder
		slog.New(slog.NewTextHandler(&b, nil)).Info("x", "credentials", credentialsOf(e))
		if strings.Contains(b.String(), "hunter2\"") || strings.Contains(b.String(), "=hunter2") {
			t.Errorf("logged %q", b.String())
		}
	}
}
