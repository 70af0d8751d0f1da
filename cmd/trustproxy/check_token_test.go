package main

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

// TestCheckShowsNoCredentials: `trustproxy check` in front of a registry and
// a notary-server with token auth (check asks the Notary server; the
// registry only under a scan policy), with a distinctive password from a
// password_file, right and then wrong: neither its output nor its log shows
// the password, its Basic form or a token.
func TestCheckShowsNoCredentials(t *testing.T) {
	const user, pass = "check-ci", "Kx9-hunter2-check-secret"
	ts := testenv.NewTokenServer(t)
	ts.AddUser(user, pass)
	reg := testenv.NewRegistry(t, testenv.TokenAuth(ts))
	notary := testenv.StartNotary(t, testenv.NotaryTokenAuth(ts))
	alice := testenv.NewKey(t, "alice")
	const gun = "docker.io/library/app"
	root := notary.Init(t, gun)
	notary.AddDelegation(t, gun, testenv.Releases, alice)
	img := testenv.Image(t, "check token v1", 1, 1024)
	reg.Push(t, "library/app", "v1", img)
	notary.SignImage(t, gun, "v1", img, testenv.Releases)

	dir := t.TempDir()
	run1 := func(name, password string) (string, error) {
		pw := filepath.Join(dir, name+".password")
		cfg := filepath.Join(dir, name+".yaml")
		creds := fmt.Sprintf("username: %s, password_file: %s, token_realms: [%s]", user, pw, ts.Origin())
		yaml := fmt.Sprintf(`data_dir: %s
upstreams: [{name: docker.io, url: %q, %s, notary: {url: %q, ca_file: %q, %s}}]
trust:
  pinning: {certs: {%s: [%s]}}
  signers: [{name: alice, public_key: %q}]
  rules: [{repositories: "docker.io/**", signers: [alice]}]
`, filepath.Join(dir, "data-"+name), reg.URL(), creds, notary.URL(), notary.CAFile(), creds, gun, root, alice.CertFile)
		for p, b := range map[string]string{pw: password + "\n", cfg: yaml} {
			if err := os.WriteFile(p, []byte(b), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		var out bytes.Buffer
		err := run(t.Context(), []string{"check", "--config", cfg, "library/app:v1"}, &out, &out)
		return out.String(), err
	}
	ok, err := run1("right", pass)
	if err != nil || !strings.Contains(ok, "app:v1 served (verified)") {
		t.Fatalf("check with the right password: %v\n%s", err, ok)
	}
	wrong, err := run1("wrong", "wrong-"+pass)
	if err == nil || !strings.Contains(wrong, "401") {
		t.Fatalf("check with a wrong password: %v\n%s", err, wrong)
	}
	secrets := []string{pass, base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))}
	secrets = append(secrets, ts.Tokens()...)
	for _, out := range []string{ok, wrong} {
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Fatalf("check shows a secret (%.12s...):\n%s", s, out)
			}
		}
	}
	if len(ts.Tokens()) == 0 || ts.Requests("!") == 0 {
		t.Fatalf("too little exercised: %d tokens, %d refused", len(ts.Tokens()), ts.Requests("!"))
	}
}
