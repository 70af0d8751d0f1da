package testenv

import (
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestTokenAuthRegistry: distribution with auth: token accepts the TokenServer's
// tokens. Push authenticates; an anonymous pull works on a repository the token
// server lets anonymous pull, and is refused (401) on another; a known user pulls it.
func TestTokenAuthRegistry(t *testing.T) {
	ts := NewTokenServer(t)
	ts.AllowAnonymous("library/public")
	ts.AddUser("reader", "reader-pw")
	reg := NewRegistry(t, TokenAuth(ts))
	img := Image(t, "token", 1, 64)
	want := reg.Push(t, "library/public", "v1", img)
	reg.Push(t, "library/private", "v1", img)

	pull := func(repo string, a authn.Authenticator) error {
		ref, err := name.ParseReference(reg.Host()+"/"+repo+":v1", name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		d, err := remote.Head(ref, remote.WithAuth(a), remote.WithContext(t.Context()))
		if err == nil && d.Digest != want {
			t.Fatalf("%s: digest %s, want %s", repo, d.Digest, want)
		}
		return err
	}
	if err := pull("library/public", authn.Anonymous); err != nil {
		t.Errorf("anonymous pull of library/public: %v", err)
	}
	if err := pull("library/private", authn.Anonymous); err == nil {
		t.Error("anonymous pull of library/private succeeded")
	}
	if err := pull("library/private", &authn.Basic{Username: "reader", Password: "reader-pw"}); err != nil {
		t.Errorf("reader's pull of library/private: %v", err)
	}
	if err := pull("library/private", &authn.Basic{Username: "reader", Password: "wrong"}); err == nil {
		t.Error("a pull with a wrong password succeeded")
	}
	if ts.Requests("!") == 0 || ts.Requests("reader") == 0 || ts.Requests("") == 0 {
		t.Errorf("token requests: refused %d, reader %d, anonymous %d", ts.Requests("!"), ts.Requests("reader"), ts.Requests(""))
	}
}

// TestTokenAuthNotary: notary-server with token auth accepts the TokenServer's
// tokens: the CLI (Init) and the library (Publish) sign through it, and a read
// without a token is refused with a Bearer challenge naming the realm.
func TestTokenAuthNotary(t *testing.T) {
	ts := NewTokenServer(t)
	n := StartNotary(t, NotaryTokenAuth(ts))
	key := NewKey(t, "alice")
	n.Init(t, "docker.io/library/cli")
	n.AddDelegation(t, "docker.io/library/cli", Releases, key)
	img := Image(t, "notary-token", 1, 64)
	n.SignImage(t, "docker.io/library/cli", "v1", img, Releases)
	d, _ := img.Digest()
	n.Publish(t, "docker.io/library/lib", key, map[string]Target{"v1": {Digest: d, Size: 100}})

	resp, err := n.tls.RoundTrip(mustGet(t, n.URL()+"/v2/docker.io/library/lib/_trust/tuf/root.json"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
		t.Errorf("a read without a token: %s %q", resp.Status, resp.Header.Get("WWW-Authenticate"))
	}
}

func mustGet(t *testing.T, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}
