package testenv

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// CredentialHelper is a docker credential helper, docker-credential-NAME, written as a
// shell script into a folder put first on PATH (so t may not be parallel): the fake of
// an outside party. It speaks the helper protocol's get: the server URL on stdin, JSON
// {ServerURL, Username, Secret} on stdout, or "credentials not found in native
// keychain" and exit 1 for a host it does not know. Each get is counted.
type CredentialHelper struct {
	Name  string
	calls string // a file with a line per get
}

// Cred is a username and password.
type Cred struct{ Username, Secret string }

// NewCredentialHelper writes docker-credential-name answering for each host of creds.
func NewCredentialHelper(t *testing.T, name string, creds map[string]Cred) *CredentialHelper {
	t.Helper()
	dir := t.TempDir()
	h := &CredentialHelper{Name: name, calls: filepath.Join(dir, "calls")}
	var cases strings.Builder
	for host, c := range creds {
		out, _ := json.Marshal(map[string]string{"ServerURL": host, "Username": c.Username, "Secret": c.Secret})
		fmt.Fprintf(&cases, "  %s) printf '%%s' %s ;;\n", shellQuote(host), shellQuote(string(out)))
	}
	script := fmt.Sprintf(`#!/bin/sh
[ "$1" = get ] || { echo "testenv helper: only get"; exit 1; }
read -r host
echo "$host" >> %s
case "$host" in
%s  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
`, shellQuote(h.calls), cases.String())
	if err := os.WriteFile(filepath.Join(dir, "docker-credential-"+name), []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return h
}

// Calls counts the gets the helper has answered (or refused).
func (h *CredentialHelper) Calls() int {
	b, _ := os.ReadFile(h.calls)
	return strings.Count(string(b), "\n")
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// DockerConfig writes a docker CLI config.json into a fresh folder and returns its
// path: auths (host -> credentials, as docker login writes them, base64 user:password),
// credHelpers (host -> helper name) and credsStore ("" for none).
func DockerConfig(t testing.TB, auths map[string]Cred, credHelpers map[string]string, credsStore string) string {
	t.Helper()
	cf := map[string]any{}
	if len(auths) > 0 {
		a := map[string]any{}
		for host, c := range auths {
			a[host] = map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(c.Username + ":" + c.Secret))}
		}
		cf["auths"] = a
	}
	if len(credHelpers) > 0 {
		cf["credHelpers"] = credHelpers
	}
	if credsStore != "" {
		cf["credsStore"] = credsStore
	}
	b, _ := json.MarshalIndent(cf, "", "  ")
	p := filepath.Join(t.TempDir(), "config.json")
	writeFile(t, p, b)
	return p
}
