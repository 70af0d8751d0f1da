package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// TestCheckGolden: check decides on a digest (not the tag latest), names the
// rule that decided, and reports audit mode as audit, on the path serve
// takes: the real notary-server and registry, signed platform images under
// a signed index, an unsigned digest.
func TestCheckGolden(t *testing.T) {
	env := testenv.New(t)
	alice := testenv.NewKey(t, "alice")
	const gun = "docker.io/library/app"
	root := env.Notary.Init(t, gun)
	env.Notary.AddDelegation(t, gun, testenv.Releases, alice)
	img := testenv.Image(t, "check v1", 1, 1024)
	signed := env.Registry.Push(t, "library/app", "v1", img)
	env.Notary.SignImage(t, gun, "v1", img, testenv.Releases)
	unsigned := env.Registry.Push(t, "library/app", "v2", testenv.Image(t, "check v2", 1, 1024))

	dir := t.TempDir()
	config := func(mode string) string {
		p := filepath.Join(dir, mode+".yaml")
		yaml := fmt.Sprintf(`data_dir: %s
upstreams: [{name: docker.io, url: %q, notary: {url: %q, ca_file: %q}}]
trust:
  pinning: {certs: {%s: [%s]}}
  signers: [{name: alice, public_key: %q}]
  rules:
    - {repositories: "docker.io/library/other", signers: [alice]}
    - {repositories: "docker.io/**", signers: [alice], mode: %s}
`, filepath.Join(dir, "data-"+mode), env.Registry.URL(), env.Notary.URL(), env.Notary.CAFile(), gun, root, alice.CertFile, mode)
		if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	names := strings.NewReplacer(signed.String(), "<signed v1>", unsigned.String(), "<unsigned v2>")
	times := regexp.MustCompile(`"\d{4}-\d\d-\d\dT[0-9:.]+Z"`)
	var got strings.Builder
	for _, c := range []struct {
		mode, image string
		exit        error
	}{
		{"enforce", "library/app@" + signed.String(), nil},
		{"enforce", "library/app:v1@" + unsigned.String(), exitError(1)}, // the digest decides, not the tag
		{"enforce", "library/app@" + unsigned.String(), exitError(1)},
		{"audit", "library/app@" + unsigned.String(), nil},
		{"audit", "library/app:v2", nil},
		{"enforce", "library/app:v1", nil},
	} {
		var out bytes.Buffer
		err := run(t.Context(), []string{"check", "--config", config(c.mode), c.image}, &out, io.Discard)
		if err != c.exit {
			t.Errorf("check %s (%s): %v, want %v\n%s", c.image, c.mode, err, c.exit, out.String())
		}
		fmt.Fprintf(&got, "$ trustproxy check %s  # %s, exit %v\n%s\n", names.Replace(c.image), c.mode, err, times.ReplaceAllString(names.Replace(out.String()), `"<time>"`))
	}
	golden := filepath.Join("testdata", "check.golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, []byte(got.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got.String()); diff != "" {
		t.Errorf("check output (-want +got):\n%s", diff)
	}
}
