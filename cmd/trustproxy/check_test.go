package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/internal/scan"
	"github.com/trustproxy/trustproxy/internal/testenv"
)

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
	times := regexp.MustCompile(`\d{4}-\d\d-\d\dT[0-9:.]+Z`)
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
		{"enforce", "library/App:v1", exitError(2)}, // no decision: not a reference
	} {
		for _, format := range []string{"--json", ""} {
			args := []string{"check", "--config", config(c.mode), c.image}
			if format != "" {
				args = slices.Insert(args, 1, format)
			}
			var out, stderr bytes.Buffer
			err := run(t.Context(), args, &out, &stderr)
			if err != c.exit {
				t.Errorf("check %s %s (%s): %v, want %v\n%s", format, c.image, c.mode, err, c.exit, out.String())
			}
			if c.exit == exitError(2) && !strings.Contains(stderr.String(), "trustproxy check: image") {
				t.Errorf("check %s: stderr %q does not say why", c.image, stderr.String())
			}
			fmt.Fprintf(&got, "$ trustproxy check %s%s  # %s, exit %v\n%s\n", format+strings.Repeat(" ", min(len(format), 1)), names.Replace(c.image), c.mode, err,
				times.ReplaceAllString(names.Replace(out.String()), "<time>"))
		}
	}
	testenv.Golden(t, filepath.Join("testdata", "check.golden"), []byte(got.String()))
}

// TestCheckScan: check --scan has the image scanned now (the scanner pulls
// it from the running serve, which shares the data directory) and decides
// on that report.
func TestCheckScan(t *testing.T) {
	env := testenv.New(t)
	alice := testenv.NewKey(t, "alice")
	scanner := testenv.StartScanner(t)
	const gun = "docker.io/library/app"
	root := env.Notary.Init(t, gun)
	env.Notary.AddDelegation(t, gun, testenv.Releases, alice)
	vulnerable, clean := testenv.Image(t, "check scan v1", 1, 1024), testenv.Image(t, "check scan v2", 1, 1024)
	d1 := env.Registry.Push(t, "library/app", "v1", vulnerable)
	env.Registry.Push(t, "library/app", "v2", clean)
	env.Notary.SignImage(t, gun, "v1", vulnerable, testenv.Releases)
	env.Notary.SignImage(t, gun, "v2", clean, testenv.Releases)
	scanner.SetReport(digest.Digest(d1.String()), []scan.Vulnerability{{ID: "CVE-2024-3094", Package: "xz-utils", Version: "5.6.0", Severity: "Critical"}})

	addr := testenv.FreeAddr(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "trustproxy.yaml")
	yaml := fmt.Sprintf(`listen: %s
data_dir: %s
upstreams: [{name: docker.io, url: %q, notary: {url: %q, ca_file: %q}}]
trust:
  pinning: {certs: {%s: [%s]}}
  signers: [{name: alice, public_key: %q}]
  rules: [{repositories: "docker.io/**", signers: [alice], scan: {missing: block}}]
scan:
  registry_url: http://%s
  scanners: [{name: test-adapter, url: %s}]
`, addr, filepath.Join(dir, "data"), env.Registry.URL(), env.Notary.URL(), env.Notary.CAFile(), gun, root, alice.CertFile, addr, scanner.URL())
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"serve", "--config", cfg}, io.Discard, io.Discard) }()
	t.Cleanup(func() { cancel(); <-done })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get("http://" + addr + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("serve did not start")
		}
	}
	check := func(image string) (map[string]any, error) {
		var out bytes.Buffer
		err := run(t.Context(), []string{"check", "--json", "--config", cfg, "--scan", image}, &out, io.Discard)
		var v map[string]any
		if jerr := json.Unmarshal(out.Bytes(), &v); jerr != nil {
			t.Fatalf("check output %q: %v (%v)", out.String(), jerr, err)
		}
		return v, err
	}
	v, err := check("library/app:v1")
	scanOut, _ := v["scan"].(map[string]any)
	if err != exitError(1) || v["reason"] != "vulnerable" || scanOut["passed"] != false ||
		!strings.Contains(fmt.Sprint(v["message"]), "CVE-2024-3094 Critical in xz-utils 5.6.0") {
		t.Fatalf("check --scan of the vulnerable image: %v %v", v, err)
	}
	v, err = check("library/app:v2")
	scanOut, _ = v["scan"].(map[string]any)
	if err != nil || v["verdict"] != "served" || scanOut["passed"] != true || scanOut["source"] != "test-adapter" {
		t.Fatalf("check --scan of the clean image: %v %v", v, err)
	}
}

// TestCheckSignatureSources: under a rule whose sources are cosign and
// Notation, check resolves the tag through the upstream and decides as a
// pull would: a cosign signature by the pinned key and a Notation
// signature under the pinned CA are served, each naming its source and
// signer; a cosign signature by another key and an unsigned image are
// refused with their reasons (exit 1).
func TestCheckSignatureSources(t *testing.T) {
	env := testenv.New(t)
	ci, other := testenv.NewCosignKey(t, "ci"), testenv.NewCosignKey(t, "other")
	acme := testenv.NewNotationCA(t, "acme")
	release := acme.Key(t, "release", 0)
	push := func(tag string) digest.Digest {
		return digest.Digest(env.Registry.Push(t, "library/app", tag, testenv.Image(t, "check "+tag, 1, 1024)).String())
	}
	env.Registry.CosignSign(t, "library/app", push("cosign"), ci)
	env.Registry.NotationSign(t, "library/app", push("notation"), release)
	env.Registry.CosignSign(t, "library/app", push("other"), other)
	push("unsigned")

	dir := t.TempDir()
	cfg := filepath.Join(dir, "trustproxy.yaml")
	yaml := fmt.Sprintf(`data_dir: %s
upstreams: [{name: docker.io, url: %q}]
trust:
  signers:
    - {name: ci, cosign_key: %q}
    - {name: acme, notation_ca: %q, notation_identities: [%q]}
  rules:
    - {repositories: "docker.io/**", sources: [cosign, notation], signers: [ci, acme], allow_no_tlog: true}
`, filepath.Join(dir, "data"), env.Registry.URL(), ci.PubFile, acme.PEMFile, release.Identity())
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		tag, verdict, reason, source, signer string
		exit                                 error
	}{
		{"cosign", "served", "verified", "cosign", "ci", nil},
		{"notation", "served", "verified", "notation", "acme", nil},
		{"other", "denied", "untrusted_signer", "", "", exitError(1)},
		{"unsigned", "denied", "not_signed", "", "", exitError(1)},
	} {
		var out, stderr bytes.Buffer
		err := run(t.Context(), []string{"check", "--json", "--config", cfg, "library/app:" + c.tag}, &out, &stderr)
		if err != c.exit {
			t.Errorf("check %s: %v, want %v\n%s%s", c.tag, err, c.exit, out.String(), stderr.String())
			continue
		}
		var got struct {
			Verdict, Reason, Source, Message string
			Signers                          []string
		}
		if err := json.Unmarshal(out.Bytes(), &got); err != nil {
			t.Fatalf("check %s: %v in %s", c.tag, err, out.String())
		}
		if got.Verdict != c.verdict || got.Reason != c.reason || got.Source != c.source || (c.signer != "" && !slices.Contains(got.Signers, c.signer)) {
			t.Errorf("check %s: %+v, want %s (%s) by %s %s", c.tag, got, c.verdict, c.reason, c.source, c.signer)
		}
		if c.verdict == "denied" && !strings.Contains(got.Message, "refused ("+c.reason+")") {
			t.Errorf("check %s: message %q gives no reason", c.tag, got.Message)
		}
	}
}
