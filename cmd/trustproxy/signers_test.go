package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

// TestSignersNameTheKeysNotaryShows: `trustproxy signers` prints, for a
// signer whose certificate the notary CLI delegated to, the key ID
// targets.json lists and the one `notary key list` shows, and the rules
// that trust it; `signers add` prints the entry for a certificate. Both
// are read off the real notary-server and CLI.
func TestSignersNameTheKeysNotaryShows(t *testing.T) {
	env := testenv.New(t)
	alice := testenv.NewKey(t, "alice")
	const gun = "docker.io/library/app"
	env.Notary.Init(t, gun)
	env.Notary.AddDelegation(t, gun, testenv.Releases, alice)
	rec := env.Notary.Record(t, gun)
	var targets struct {
		Signed struct {
			Delegations struct {
				Roles []struct {
					KeyIDs []string `json:"keyids"`
				} `json:"roles"`
			} `json:"delegations"`
		} `json:"signed"`
	}
	must(t, json.Unmarshal(rec.Files["targets.json"], &targets))
	listed := targets.Signed.Delegations.Roles[0].KeyIDs[0]
	keyList := env.Notary.KeyList(t)

	cfg := filepath.Join(t.TempDir(), "trustproxy.yaml")
	must(t, os.WriteFile(cfg, []byte(fmt.Sprintf(`data_dir: %s
trust:
  signers: [{name: alice, public_key: %s}]
  rules: [{repositories: "docker.io/**", signers: [alice]}]
`, t.TempDir(), alice.CertFile)), 0o600))
	var out bytes.Buffer
	if err := run(t.Context(), []string{"signers", "--config", cfg}, &out, io.Discard); err != nil {
		t.Fatalf("signers: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"certificate key ID (as targets.json lists it): " + listed,
		"rules: 0 (docker.io/**)",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("signers output lacks %q:\n%s", want, out.String())
		}
	}
	bare := strings.TrimSpace(out.String()[strings.Index(out.String(), "shows it):")+len("shows it):"):])[:64]
	if !strings.Contains(keyList, bare) {
		t.Errorf("signers names the bare key %s; notary key list shows:\n%s", bare, keyList)
	}
	out.Reset()
	if err := run(t.Context(), []string{"signers", "add", "alice", alice.CertFile}, &out, io.Discard); err != nil {
		t.Fatalf("signers add: %v", err)
	}
	if !strings.Contains(out.String(), "public_key: "+alice.CertFile) || !strings.Contains(out.String(), listed) {
		t.Errorf("signers add output:\n%s", out.String())
	}
}

// TestSignersGolden: the output of `signers` for a certificate, a public
// key as `docker trust key generate` writes it, key IDs alone, and a
// signer no rule names; and of `signers add` for each kind of file.
func TestSignersGolden(t *testing.T) {
	testdata, err := filepath.Abs(filepath.Join("testdata", "signers"))
	must(t, err)
	cfg := filepath.Join(t.TempDir(), "trustproxy.yaml")
	must(t, os.WriteFile(cfg, []byte(fmt.Sprintf(`data_dir: %s
trust:
  signers:
    - {name: alice, public_key: %[2]s/alice.crt}
    - {name: bob, public_key: %[2]s/bob.pub}
    - {name: carol, key_ids: [%[3]s]}
    - {name: dave, key_ids: [%[3]s]}
  rules:
    - {repositories: "docker.io/library/*", signers: [alice, bob]}
    - {repositories: "docker.io/**", signers: [carol]}
`, t.TempDir(), testdata, strings.Repeat("ab", 32))), 0o600))
	var got bytes.Buffer
	for _, args := range [][]string{
		{"signers", "--config", cfg},
		{"signers", "add", "alice", filepath.Join(testdata, "alice.crt")},
		{"signers", "add", "bob", filepath.Join(testdata, "bob.pub")},
		{"signers", "add", "eve", cfg},
	} {
		var out, stderr bytes.Buffer
		err := run(t.Context(), args, &out, &stderr)
		fmt.Fprintf(&got, "$ trustproxy %s  # %v\n%s%s\n", strings.Join(args[:len(args)-1], " ")+" "+filepath.Base(args[len(args)-1]), err, out.String(), stderr.String())
	}
	testenv.Golden(t, filepath.Join("testdata", "signers.golden"), []byte(strings.NewReplacer(testdata, "<testdata>", filepath.Dir(cfg), "<tmp>").Replace(got.String())))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
