package proxy_test

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"

	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// conformancePkg is the OCI distribution-spec conformance suite. Its version
// is pinned by the tool directive in go.mod, so `go mod download` fetches it
// and `go test -c` builds the same suite on every machine.
const conformancePkg = "github.com/opencontainers/distribution-spec/conformance"

// TestOCIConformancePull runs the OCI distribution-spec conformance suite's
// pull workflow (THREATS.md T41) against trustproxy in front of a real
// registry and notary-server, with signed content of each manifest kind: a
// Docker schema2 image, an OCI image, an OCI index and a Docker manifest
// list. The suite is told not to push or delete and is given the signed
// tags, manifests and blobs to read; every read must pass, and so must its
// requests for a made-up tag and digest, which the spec answers with 404.
func TestOCIConformancePull(t *testing.T) {
	bin := buildConformance(t)
	w := newWorld(t)
	const repo = "library/conformance"
	w.initRepo(t, "docker.io/"+repo, w.alice)

	var tags, manifests, blobs []string
	add := func(m partial.WithRawManifest) {
		d, err := partial.Digest(m)
		if err != nil {
			t.Fatal(err)
		}
		manifests = append(manifests, d.String())
		if img, ok := m.(v1.Image); ok {
			for _, b := range imageBlobs(t, img) {
				if !slices.Contains(blobs, b) { // the list's two images share their layer
					blobs = append(blobs, b)
				}
			}
		}
	}
	for tag, img := range map[string]v1.Image{"v1": testenv.Image(t, "conformance v1", 2, 4096), "oci": testenv.OCIImage(t, "linux", "amd64", 2048)} {
		w.Registry.Push(t, repo, tag, img)
		w.Notary.SignImage(t, "docker.io/"+repo, tag, img, testenv.Releases)
		tags = append(tags, tag)
		add(img)
	}
	amd, arm := testenv.OCIImage(t, "linux", "amd64", 2048), testenv.OCIImage(t, "linux", "arm64", 2048)
	lamd, larm := testenv.ImageFor(t, "conformance list", "linux/amd64", 1, 2048), testenv.ImageFor(t, "conformance list", "linux/arm64/v8", 1, 2048)
	for tag, idx := range map[string]v1.ImageIndex{"multi": testenv.OCIIndex(t, amd, arm), "list": testenv.Index(t, lamd, larm)} {
		w.Registry.PushIndex(t, repo, tag, idx)
		w.Notary.SignImage(t, "docker.io/"+repo, tag, idx, testenv.Releases)
		tags = append(tags, tag)
		add(idx)
	}
	for _, img := range []v1.Image{amd, arm, lamd, larm} {
		add(img)
	}
	p := w.start(t, "")

	out := runConformance(t, bin, map[string]string{
		"OCI_REGISTRY": p.host,
		"OCI_TLS":      "disabled",
		"OCI_REPO1":    repo,
		"OCI_REPO2":    repo,
		// The pull workflow only (the suite's legacy OCI_TEST_PULL=1 with
		// OCI_TEST_PUSH=0): a read-only mirror gets no pushes or deletes,
		// and trustproxy serves no referrers API. Tag listing is read too.
		"OCI_API_PULL":             "true",
		"OCI_API_PUSH":             "false",
		"OCI_API_BLOBS_DELETE":     "false",
		"OCI_API_MANIFESTS_DELETE": "false",
		"OCI_API_TAGS_DELETE":      "false",
		"OCI_API_REFERRER":         "false",
		"OCI_RO_DATA_TAGS":         strings.Join(tags, " "),
		"OCI_RO_DATA_MANIFESTS":    strings.Join(manifests, " "),
		"OCI_RO_DATA_BLOBS":        strings.Join(blobs, " "),
	})
	res := parseConformance(out)
	t.Logf("conformance: %s, %d passed, %d failed, %d errors, %d skipped, %d disabled",
		res.result, res.counts["Pass"], res.counts["FAIL"], res.counts["Error"], res.counts["Skip"], res.counts["Disabled"])
	// Each tag and manifest is read by GET and HEAD, each blob by GET and
	// HEAD; then ping, two tag listings, two missing manifests and the
	// malformed digest.
	wantPass := 2*len(tags) + 2*len(manifests) + 2*len(blobs) + 6
	if res.result != "PASS" || res.counts["FAIL"] != 0 || res.counts["Error"] != 0 || res.counts["Pass"] < wantPass {
		t.Errorf("conformance result %q, %d passed (want at least %d), %d failed, %d errors; failing steps:\n%s\nfull output:\n%s",
			res.result, res.counts["Pass"], wantPass, res.counts["FAIL"], res.counts["Error"], strings.Join(res.failed, "\n"), out)
	}
	for _, step := range []string{"missing-manifest/by-tag", "missing-manifest/by-digest"} {
		if res.steps[step] != "Pass" {
			t.Errorf("step %s: %q, want Pass", step, res.steps[step])
		}
	}
	// The 404s are still trust refusals: logged and counted as denied.
	if n := p.decisions(t, "denied", string(trust.NotSigned)); n < 2 {
		t.Errorf("trustproxy_decisions_total{denied,not_signed} = %v after the missing-manifest steps, want at least 2", n)
	}
}

// buildConformance compiles the conformance suite with `go test -c`, as its
// maintainers' legacy entry point runs it, and returns the binary's path.
func buildConformance(t *testing.T) string {
	t.Helper()
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("building the OCI conformance suite needs the go command on PATH: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "conformance.test")
	cmd := exec.CommandContext(t.Context(), goCmd, "test", "-c", "-o", bin, conformancePkg)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go test -c %s: %v\n%s", conformancePkg, err, out)
	}
	return bin
}

// runConformance runs the suite with env (and no OCI_* variable of the
// caller's) in a fresh folder, where it finds no oci-conformance.yaml and
// writes its reports, and returns what it printed.
func runConformance(t *testing.T, bin string, env map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.CommandContext(t.Context(), bin, "-test.run=^TestLegacy$")
	cmd.Dir = dir
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OCI_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	env["OCI_RESULTS_DIR"] = filepath.Join(dir, "results")
	env["OCI_LOG"] = "warn"
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// It exits non-zero when a step fails, and this version also panics
	// after printing its report whenever pushing is off (ReportResultsYAML
	// reads the test data of the skipped blob-push steps, which it never
	// made); the printed report is complete, and it says what failed.
	if err := cmd.Run(); err != nil {
		t.Logf("conformance suite: %v", err)
	}
	return out.String()
}

// conformanceResult is what the suite's report says.
type conformanceResult struct {
	result string            // PASS or FAIL
	counts map[string]int    // by status: Pass, FAIL, Error, Skip, Disabled
	steps  map[string]string // the status of each step, by name without the root's
	failed []string          // the lines of failing steps and their errors
}

var (
	conformanceStep  = regexp.MustCompile(`^\s*OCI Conformance Test/(.+): (Pass|FAIL|Error|Skip|Disabled|Unknown)$`)
	conformanceCount = regexp.MustCompile(`^\s+(Pass|FAIL|Error|Skip|Disabled)\.*:\s+(\d+)$`)
)

// parseConformance reads the suite's report: a line per step
// ("OCI Conformance Test/missing-manifest/by-tag: Pass", errors below a
// failing step as " - ..."), then "OCI Conformance Result: PASS" and a count
// per status.
func parseConformance(out string) conformanceResult {
	r := conformanceResult{counts: map[string]int{}, steps: map[string]string{}}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	failing := false
	for sc.Scan() {
		line := sc.Text()
		if m := conformanceStep.FindStringSubmatch(line); m != nil {
			r.steps[m[1]] = m[2]
			failing = m[2] == "FAIL" || m[2] == "Error"
			if failing {
				r.failed = append(r.failed, line)
			}
		} else if v, ok := strings.CutPrefix(line, "OCI Conformance Result: "); ok {
			r.result = strings.ToUpper(strings.TrimSpace(v))
		} else if m := conformanceCount.FindStringSubmatch(line); m != nil {
			r.counts[m[1]], _ = strconv.Atoi(m[2])
		} else if failing && strings.HasPrefix(strings.TrimSpace(line), "- ") {
			r.failed = append(r.failed, line)
		}
	}
	return r
}

// imageBlobs are the digests of img's config and layers.
func imageBlobs(t *testing.T, img v1.Image) []string {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	out := []string{m.Config.Digest.String()}
	for _, l := range m.Layers {
		out = append(out, l.Digest.String())
	}
	return out
}
