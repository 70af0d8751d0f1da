package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/scan"
	"github.com/trustproxy/trustproxy/internal/testenv"
)

// xz is the finding the scan gate tests plant.
var xz = scan.Vulnerability{ID: "CVE-2024-3094", Package: "xz-utils", Version: "5.6.0", FixVersion: "5.6.1", Severity: "Critical"}

// scanWorld is a world with a scanner adapter that speaks the real API.
type scanWorld struct {
	*world
	scanner       *testenv.Scanner
	token         string // the report token file's content
	tokenFile     string
	credentialTTL string
}

func newScanWorld(t *testing.T) *scanWorld {
	w := &scanWorld{world: newWorld(t), scanner: testenv.StartScanner(t), token: "ci-token-0123456789abcdef", credentialTTL: "1m"}
	w.tokenFile = filepath.Join(t.TempDir(), "report-token")
	if err := os.WriteFile(w.tokenFile, []byte(w.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return w
}

// start runs trustproxy in front of w, every docker.io rule scanned under
// policy (YAML flow mapping), with extra top-level YAML.
func (w *scanWorld) start(t *testing.T, policy, extra string) *instance {
	t.Helper()
	return w.startWith(t, "scan: "+policy, func(url string) string {
		return fmt.Sprintf(`scan:
  registry_url: %s
  scanners: [{name: test-adapter, url: %s}]
  report_token_file: %s
  credential_ttl: %s
  timeout: 20s
%s`, url, w.scanner.URL(), w.tokenFile, w.credentialTTL, extra)
	})
}

// startWith runs trustproxy in front of w with ruleLines added to its
// docker.io rule (e.g. "scan: {missing: block}") and the top-level YAML
// that extra returns for trustproxy's own URL (the scan section).
func (w *scanWorld) startWith(t *testing.T, ruleLines string, extra func(url string) string) *instance {
	t.Helper()
	dataDir := t.TempDir()
	return startAt(t, func(url string) string {
		cfg := w.config(t, dataDir, extra(url))
		return strings.Replace(cfg, "      signers: [alice]\n", "      signers: [alice]\n      "+strings.ReplaceAll(ruleLines, "\n", "\n      ")+"\n", 1)
	})
}

// scanners is a scan section: registry_url, then the scanners by name and URL.
func scanners(registryURL string, nameURL ...string) string {
	var list []string
	for i := 0; i+1 < len(nameURL); i += 2 {
		list = append(list, fmt.Sprintf("{name: %s, url: %s}", nameURL[i], nameURL[i+1]))
	}
	return fmt.Sprintf("scan:\n  registry_url: %s\n  scanners: [%s]\n", registryURL, strings.Join(list, ", "))
}

// signedImage pushes and signs a fresh image as library/app:tag.
func (w *scanWorld) signedImage(t *testing.T, tag string) digest.Digest {
	t.Helper()
	if _, ok := w.roots[gun]; !ok {
		w.initRepo(t, gun, w.alice)
	}
	return digest.Digest(w.pushSigned(t, "library/app", tag, "scan "+tag).String())
}

func TestScanCleanImageServedOnFirstPull(t *testing.T) {
	w := newScanWorld(t)
	signed := w.signedImage(t, "v1")
	w.scanner.SetDelay(200 * time.Millisecond)
	p := w.start(t, "{severity: high, missing: wait, wait: 20s}", "")

	start := time.Now()
	if got := p.mustPull(t, "library/app:v1"); got.String() != signed.String() {
		t.Fatalf("served %s", got)
	}
	t.Logf("first pull of a clean image, with its scan (adapter delay 200ms): %s", time.Since(start))
	d := p.decision(t, gun, "v1")
	if d["verdict"] != "served" || d["scan_passed"] != true || d["scan_source"] != "test-adapter" {
		t.Fatalf("decision %v", d)
	}
	// The adapter pulled the manifest and its config from trustproxy with
	// the scan request's credential.
	pulls := w.scanner.Pulls()
	if len(pulls) != 2 || pulls[0].Status != 200 || pulls[1].Status != 200 || !strings.HasPrefix(pulls[0].Authorization, "Bearer ") {
		t.Fatalf("adapter pulls: %+v", pulls)
	}
	// Pulled again: the stored report decides, no second scan.
	p.mustPull(t, "library/app:v1")
	if n := w.scanner.ScanRequests(signed); n != 1 {
		t.Fatalf("%d scans of one image, want 1", n)
	}
}

func TestScanCriticalFindingRefused(t *testing.T) {
	w := newScanWorld(t)
	signed := w.signedImage(t, "v1")
	w.scanner.SetReport(signed, []scan.Vulnerability{xz,
		{ID: "CVE-2023-0001", Package: "openssl", Version: "3.0.0", Severity: "High"},
		{ID: "CVE-2023-0002", Package: "zlib", Version: "1.2", Severity: "Medium"}})
	p := w.start(t, "{severity: high, missing: wait, wait: 20s}", "")

	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, scan.ReasonVulnerable)
	want := "CVE-2024-3094 Critical in xz-utils 5.6.0, fixed in 5.6.1; 1 more at High or above"
	if !strings.Contains(string(body), want) {
		t.Fatalf("refusal %s does not say %q", body, want)
	}
	p.wantDecision(t, gun, "v1", "denied", scan.ReasonVulnerable)
	if n := p.decisions(t, "denied", scan.ReasonVulnerable); n != 1 {
		t.Fatalf("trustproxy_decisions_total{denied,vulnerable} = %v", n)
	}
}

func TestScanAllowlist(t *testing.T) {
	w := newScanWorld(t)
	signed := w.signedImage(t, "v1")
	w.scanner.SetReport(signed, []scan.Vulnerability{xz})
	entry := func(expires time.Time) string {
		return fmt.Sprintf("{severity: critical, missing: wait, wait: 20s, allowlist: [{id: CVE-2024-3094, expires: %q, reason: not shipped}]}",
			expires.UTC().Format(time.RFC3339))
	}
	p := w.start(t, entry(time.Now().Add(24*time.Hour)), "")
	p.mustPull(t, "library/app:v1")
	p.wantDecision(t, gun, "v1", "served", "verified")

	expired := w.start(t, entry(time.Now().Add(-time.Minute)), "")
	status, _, body := expired.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, scan.ReasonVulnerable)
}

func TestScanStaleReportRescanned(t *testing.T) {
	w := newScanWorld(t)
	signed := w.signedImage(t, "v1")
	p := w.start(t, "{missing: wait, wait: 20s, max_report_age: 1s}", "")
	p.mustPull(t, "library/app:v1")
	time.Sleep(1100 * time.Millisecond)
	w.scanner.SetReport(signed, []scan.Vulnerability{xz}) // found since
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, scan.ReasonVulnerable)
	if n := w.scanner.ScanRequests(signed); n != 2 {
		t.Fatalf("%d scans, want 2 (the report aged out)", n)
	}
}

func TestScanWaitHoldsThenServesOrRefuses(t *testing.T) {
	w := newScanWorld(t)
	w.signedImage(t, "v1")
	w.signedImage(t, "v2")
	w.scanner.SetDelay(3 * time.Second)
	p := w.start(t, "{missing: wait, wait: 300ms}", "")
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, scan.ReasonPending)
	if !strings.Contains(string(body), "scan pending (waited 300ms)") {
		t.Fatalf("refusal %s", body)
	}
	w.scanner.SetDelay(100 * time.Millisecond)
	p.mustPull(t, "library/app:v2") // its scan is done within the wait
}

func TestScanBlockOnMissingReport(t *testing.T) {
	w := newScanWorld(t)
	signed := w.signedImage(t, "v1")
	p := w.start(t, "{missing: block}", "")
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, scan.ReasonMissing)
	// The refusal started a scan: once it is done, the image is served.
	deadline := time.Now().Add(10 * time.Second)
	for {
		status, _, _ = p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
		if status == http.StatusOK || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if status != http.StatusOK || w.scanner.ScanRequests(signed) != 1 {
		t.Fatalf("after the scan: %d, %d scans", status, w.scanner.ScanRequests(signed))
	}
}

func TestScanScannerFaultsRefuseAndCacheNothing(t *testing.T) {
	for name, fault := range map[string]testenv.ScannerFault{
		"down": testenv.ScannerDown, "500": testenv.ScannerError500,
		"garbage": testenv.ScannerGarbage, "oversized": testenv.ScannerOversized,
	} {
		t.Run(name, func(t *testing.T) {
			w := newScanWorld(t)
			signed := w.signedImage(t, "v1")
			w.scanner.SetFault(fault)
			p := w.start(t, "{missing: wait, wait: 20s}", "")
			status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
			wantDenied(t, status, body, scan.ReasonUnavailable)
			if !strings.Contains(string(body), "no scanner could scan this image: ") {
				t.Fatalf("refusal %s", body)
			}
			if _, err := os.Stat(filepath.Join(p.dataDir, "scan", "sha256-"+signed.Encoded()+".json")); err == nil {
				t.Fatal("a report was stored for a failed scan")
			}
		})
	}
}

// The scanner's pull credential passes the trust check but skips the scan
// gate for its digest, and for nothing else: another digest (v2, never
// scanned), the tag, another repository, tags/list, and after its expiry
// it is refused. (Once a report arrives that fails the policy it skips
// nothing: TestScanCredentialRefusedAfterFailingReport.)
func TestScanCredentialOnlyForItsDigest(t *testing.T) {
	w := newScanWorld(t)
	w.credentialTTL = "2s"
	signed := w.signedImage(t, "v1")
	other := w.signedImage(t, "v2")
	w.initRepo(t, "docker.io/library/other", w.alice)
	w.pushSigned(t, "library/other", "v1", "other")
	p := w.start(t, "{missing: wait, wait: 20s}", "")
	p.mustPull(t, "library/app:v1") // scanned, clean
	minted := time.Now()
	pulls := w.scanner.Pulls()
	if len(pulls) != 2 || pulls[0].Status != 200 || pulls[1].Status != 200 {
		t.Fatalf("the adapter's pulls with its credential: %+v", pulls)
	}
	auth := pulls[0].Authorization
	if status, _, body := p.get(t, http.MethodGet, "/v2/docker.io/library/app/manifests/"+signed.String(), "Authorization", auth); status != 200 {
		t.Fatalf("the credential's own digest: %d %s", status, body)
	}
	for _, path := range []string{
		"/v2/library/app/manifests/" + other.String(),
		"/v2/library/app/manifests/v1",
		"/v2/library/other/manifests/v1",
		"/v2/library/app/tags/list",
		"/v2/library/app/blobs/" + digest.FromString("not in the image").String(),
	} {
		status, _, body := p.get(t, http.MethodGet, path, "Authorization", auth)
		wantDenied(t, status, body, proxy.ReasonScanCredential)
	}
	// Each refusal is a decision like any other: logged and counted.
	p.wantDecision(t, "docker.io/library/app", other.String(), "denied", proxy.ReasonScanCredential)
	p.wantDecision(t, "docker.io/library/other", "v1", "denied", proxy.ReasonScanCredential)
	p.wantDecision(t, "docker.io/library/app", "", "denied", proxy.ReasonScanCredential)
	if n := p.refusals(t, proxy.ReasonScanCredential); n != 5 {
		t.Fatalf("trustproxy_decisions_total{verdict=denied,reason=scan_credential} = %v, want 5", n)
	}
	forged := auth[:len(auth)-2] + "AA"
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/"+signed.String(), "Authorization", forged)
	wantDenied(t, status, body, proxy.ReasonScanCredential)
	time.Sleep(time.Until(minted.Add(2100 * time.Millisecond)))
	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/manifests/"+signed.String(), "Authorization", auth)
	wantDenied(t, status, body, proxy.ReasonScanCredential)
	if !strings.Contains(string(body), "expired") {
		t.Fatalf("expired credential: %s", body)
	}
}

func TestScanMultiArchChildRefused(t *testing.T) {
	w := newScanWorld(t)
	_, amd, arm := w.pushSignedIndex(t)
	armDigest := digest.Digest(mustDigest(t, arm))
	w.scanner.SetReport(armDigest, []scan.Vulnerability{xz})
	p := w.start(t, "{missing: wait, wait: 20s}", "")

	if status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/multi", "Accept", "application/vnd.oci.image.index.v1+json"); status != 200 {
		t.Fatalf("index: %d %s", status, body)
	}
	p.mustPull(t, "library/app@"+mustDigest(t, amd))
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/"+armDigest.String())
	wantDenied(t, status, body, scan.ReasonVulnerable)
}

func TestScanReportPostedByCI(t *testing.T) {
	w := newScanWorld(t)
	signed := w.signedImage(t, "v1")
	p := w.start(t, "{missing: block}", "")
	w.scanner.SetFault(testenv.ScannerDown) // only CI's report can let it through

	for name, c := range map[string]struct {
		token string
		body  []byte
		want  int
	}{
		"no token":    {"", ciReport(signed), http.StatusUnauthorized},
		"wrong token": {"ci-token-0123456789abcdeX", ciReport(signed), http.StatusUnauthorized},
		"malformed":   {w.token, []byte(`{"vulnerabilities": [{"id": 7}]}`), http.StatusBadRequest},
		"mismatched":  {w.token, ciReport(digest.FromString("another image")), http.StatusBadRequest},
		"oversized":   {w.token, bytes.Repeat([]byte(" "), scan.MaxReportBytes+1), http.StatusRequestEntityTooLarge},
	} {
		if got := postReport(t, p, c.token, signed.String(), c.body); got != c.want {
			t.Errorf("%s: %d, want %d", name, got, c.want)
		}
	}
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, scan.ReasonMissing) // nothing refused was stored
	if got := postReport(t, p, w.token, signed.String(), ciReport(signed)); got != http.StatusCreated {
		t.Fatalf("posting a clean report: %d", got)
	}
	p.mustPull(t, "library/app:v1")
}

func TestScanAuditServesAndLogsWouldDeny(t *testing.T) {
	w := newScanWorld(t)
	signed := w.signedImage(t, "v1")
	w.scanner.SetReport(signed, []scan.Vulnerability{xz})
	p := w.startWith(t, "mode: audit\nscan: {missing: wait, wait: 20s}", func(url string) string { return scanners(url, "test-adapter", w.scanner.URL()) })
	if got := p.mustPull(t, "library/app:v1"); got.String() != signed.String() {
		t.Fatalf("audit mode served %s", got)
	}
	d := p.decision(t, gun, "v1")
	if d["verdict"] != "audit" || d["reason"] != scan.ReasonVulnerable || d["would_deny"] != true {
		t.Fatalf("decision %v", d)
	}
}

// TestScanDockerFirstPullRefused: a real Docker daemon with trustproxy as
// its mirror pulls a signed image with a critical finding: refused on its
// first pull (the daemon then falls back to Docker Hub, unreachable here,
// so the refusal is asserted on trustproxy's side), and a pull that names
// trustproxy shows the CVE.
func TestScanDockerFirstPullRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Docker daemon")
	}
	w := newScanWorld(t)
	signed := w.signedImage(t, "v1")
	w.scanner.SetReport(signed, []scan.Vulnerability{xz})
	clean := w.signedImage(t, "v2")
	p := w.start(t, "{missing: wait, wait: 20s}", "")
	d := testenv.StartDockerd(t, p.srv.URL)
	ctx := t.Context()

	if out, err := d.Pull(ctx, "app:v1"); err == nil {
		t.Fatalf("docker pull app:v1 (critical finding) succeeded:\n%s", out)
	}
	p.wantDecision(t, gun, "v1", "denied", scan.ReasonVulnerable)
	out, err := d.Pull(ctx, p.host+"/library/app:v1")
	if err == nil || !strings.Contains(out, "CVE-2024-3094 Critical in xz-utils 5.6.0, fixed in 5.6.1") {
		t.Fatalf("docker pull %s/library/app:v1: err %v, output:\n%s", p.host, err, out)
	}
	if out, err := d.Pull(ctx, "app:v2"); err != nil {
		t.Fatalf("docker pull app:v2 (clean) through the mirror: %v\n%s", err, out)
	}
	if n := w.scanner.ScanRequests(clean); n != 1 {
		t.Fatalf("%d scans of the clean image", n)
	}
}

// Concurrent first pulls of one image share one scan.
func TestScanConcurrentPullsOneScan(t *testing.T) {
	w := newScanWorld(t)
	signed := w.signedImage(t, "v1")
	w.scanner.SetDelay(300 * time.Millisecond)
	p := w.start(t, "{missing: wait, wait: 20s}", "")
	errs := make(chan error, 10)
	for range 10 {
		go func() { _, err := p.pull(t, "library/app:v1"); errs <- err }()
	}
	for range 10 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := w.scanner.ScanRequests(signed); n != 1 {
		t.Fatalf("10 concurrent pulls made %d scans, want 1", n)
	}
}

// A scan goes to the scanners whose metadata says they consume the
// manifest's media type, and only to them.
func TestScanOnlyScannersThatConsumeTheType(t *testing.T) {
	w := newScanWorld(t)
	signed := w.signedImage(t, "v1") // a docker schema2 manifest
	ociOnly := testenv.StartScanner(t)
	ociOnly.SetConsumes("application/vnd.oci.image.manifest.v1+json")
	ociOnly.SetReport(signed, []scan.Vulnerability{xz})
	p := w.startWith(t, "scan: {missing: wait, wait: 20s}", func(url string) string {
		return scanners(url, "oci-only", ociOnly.URL(), "test-adapter", w.scanner.URL())
	})
	p.mustPull(t, "library/app:v1")
	if ociOnly.ScanRequests(signed) != 0 || w.scanner.ScanRequests(signed) != 1 {
		t.Fatalf("scan requests: oci-only %d, test-adapter %d; want 0 and 1", ociOnly.ScanRequests(signed), w.scanner.ScanRequests(signed))
	}
	if d := p.decision(t, gun, "v1"); d["scan_source"] != "test-adapter" {
		t.Fatalf("decision %v", d)
	}
}

// A scanner that cannot pull what it scans from trustproxy (here:
// registry_url names nothing) fails the scan, and the image is refused.
func TestScanFailsWhenScannerCannotPull(t *testing.T) {
	w := newScanWorld(t)
	w.signedImage(t, "v1")
	nowhere := "http://" + testenv.FreeAddr(t)
	p := w.startWith(t, "scan: {missing: wait, wait: 20s}", func(string) string { return scanners(nowhere, "test-adapter", w.scanner.URL()) })
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, scan.ReasonUnavailable)
	if !strings.Contains(string(body), "pull ") {
		t.Fatalf("refusal %s does not say the scanner's pull failed", body)
	}
}

// A report too old to let an image through still refuses it when it found
// what the policy blocks, even under missing: allow with the scanner down.
func TestScanStaleFindingStillRefuses(t *testing.T) {
	w := newScanWorld(t)
	signed := w.signedImage(t, "v1")
	w.scanner.SetReport(signed, []scan.Vulnerability{xz})
	p := w.start(t, "{missing: allow, max_report_age: 1s}", "")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1") // served (allow) until the report is in
		if status == http.StatusForbidden {
			wantDenied(t, status, body, scan.ReasonVulnerable)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("never refused")
		}
	}
	w.scanner.SetFault(testenv.ScannerDown)
	time.Sleep(1100 * time.Millisecond)
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, scan.ReasonVulnerable)
	if !strings.Contains(string(body), "older than max_report_age") {
		t.Fatalf("refusal %s", body)
	}
}

// With two scanners, one of them down fails the scan: a report from the
// other alone is not the report the policy asked for.
func TestScanOneScannerDownFailsTheScan(t *testing.T) {
	w := newScanWorld(t)
	signed := w.signedImage(t, "v1")
	finds := testenv.StartScanner(t)
	finds.SetReport(signed, []scan.Vulnerability{xz})
	finds.SetFault(testenv.ScannerDown)
	p := w.startWith(t, "scan: {missing: wait, wait: 20s}", func(url string) string { return scanners(url, "finds", finds.URL(), "test-adapter", w.scanner.URL()) })
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, scan.ReasonUnavailable)
}

// Under a scan policy a manifest is not served through the blob route,
// where the gate does not apply.
func TestScanManifestNotServedAsBlob(t *testing.T) {
	w := newScanWorld(t)
	signed := w.signedImage(t, "v1")
	w.scanner.SetReport(signed, []scan.Vulnerability{xz})
	p := w.start(t, "{missing: wait, wait: 20s}", "")
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, scan.ReasonVulnerable)
	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/blobs/"+signed.String())
	wantRefused(t, status, body, http.StatusNotFound, "BLOB_UNKNOWN", proxy.ReasonNotReferenced)
}

// ciReport is a report as CI posts it for d, finding vulns.
func ciReport(d digest.Digest, vulns ...scan.Vulnerability) []byte {
	b, _ := json.Marshal(scan.Report{GeneratedAt: time.Now(), Artifact: scan.Artifact{Repository: "library/app", Digest: d.String()},
		Scanner: scan.ScannerInfo{Name: "ci"}, Severity: "Unknown", Vulnerabilities: vulns})
	return b
}

// postReport posts body as d's report to p's admin API with the bearer
// token (none when ""), and returns the status.
func postReport(t *testing.T, p *instance, token string, d string, body []byte) int {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, p.srv.URL+"/admin/scan/reports/"+d, bytes.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// oldImages pushes n images as library/old:v0... and signs them all in
// one publish: old images nobody has scanned.
func (w *scanWorld) oldImages(t *testing.T, n int) []digest.Digest {
	t.Helper()
	targets := map[string]testenv.Target{}
	var out []digest.Digest
	for i := range n {
		img := testenv.Image(t, fmt.Sprintf("old %d", i), 1, 4096)
		raw, err := img.RawManifest()
		if err != nil {
			t.Fatal(err)
		}
		d := w.Registry.Push(t, "library/old", fmt.Sprintf("v%d", i), img)
		targets[fmt.Sprintf("v%d", i)] = testenv.Target{Digest: d, Size: int64(len(raw))}
		out = append(out, digest.Digest(d.String()))
	}
	w.roots["docker.io/library/old"] = w.Notary.Publish(t, "docker.io/library/old", w.alice, targets)
	return out
}

// answer is what an anonymous client got: a status, or the error that
// ended its request (its context, when it gave up).
type answer struct {
	status int
	body   string
	err    error
}

// fetch GETs path from p under ctx, without failing t: for clients that run
// beside the test and may give up.
func fetch(ctx context.Context, p *instance, path string) answer {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.srv.URL+path, nil)
	if err != nil {
		return answer{err: err}
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		return answer{err: err}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, body: string(b)}
}

// anonymous requests library/old:v0... (one per digest of old) from p,
// each until ctx ends; their answers arrive on the channel returned.
func anonymous(ctx context.Context, p *instance, old []digest.Digest) chan answer {
	answers := make(chan answer, len(old))
	for i := range old {
		go func() { answers <- fetch(ctx, p, fmt.Sprintf("/v2/library/old/manifests/v%d", i)) }()
	}
	return answers
}

// scansOf is how many scan requests the scanner accepted for each of ds.
func (w *scanWorld) scansOf(ds []digest.Digest) map[digest.Digest]int {
	out := map[digest.Digest]int{}
	for _, d := range ds {
		out[d] = w.scanner.ScanRequests(d)
	}
	return out
}

// startedSince lists the digests of ds whose scans the scanner accepted
// since base was taken.
func (w *scanWorld) startedSince(ds []digest.Digest, base map[digest.Digest]int) []digest.Digest {
	var out []digest.Digest
	for _, d := range ds {
		if w.scanner.ScanRequests(d) > base[d] {
			out = append(out, d)
		}
	}
	return out
}

// queued reads trustproxy_scan_queue_length, or -1 when p has no such gauge.
func (p *instance) queued(t *testing.T) float64 {
	t.Helper()
	mfs, err := p.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "trustproxy_scan_queue_length" && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return -1
}

// eventually polls cond until it holds, failing t after a minute: for the
// state of clients running beside the test, not for timing.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
	}
}

// T48: anonymous requests for many old, unscanned images whose scans are
// slow do not make a new image's request under missing: wait fail early.
// When their clients have left, their scans yield their slots to it; when
// their clients wait, it queues, and the first slot that frees goes to its
// repository, which has no scan running, not to the old images' queue.
func TestScanQueueFairUnderAnonymousLoad(t *testing.T) {
	w := newScanWorld(t)
	fresh := w.signedImage(t, "v1") // library/app: the new image, scanned at once
	old := w.oldImages(t, 16)       // library/old: their scans end only when the test says
	for _, d := range old {
		w.scanner.Hold(d)
	}
	const policy = "{missing: wait, wait: 20s}"

	// newImage asks for library/app:v1 and checks that it is served.
	newImage := func(t *testing.T, p *instance, a answer, waited time.Duration) {
		t.Helper()
		if a.err != nil || a.status != http.StatusOK {
			t.Fatalf("the new image under missing: wait, with 16 anonymous requests for old images before it: %d %s %v (after %s)",
				a.status, a.body, a.err, waited.Round(time.Millisecond))
		}
		d := p.decision(t, gun, "v1")
		if d["verdict"] != "served" || d["scan_passed"] != true || d["digest"] != fresh.String() {
			t.Fatalf("decision %v", d)
		}
	}

	t.Run("their clients left", func(t *testing.T) {
		p := w.start(t, policy, "")
		base := w.scansOf(old)
		ctx, leave := context.WithCancel(t.Context())
		answers := anonymous(ctx, p, old)
		eventually(t, "8 old scans started, the other 8 requests queued or answered", func() bool {
			return len(w.startedSince(old, base)) == 8 && (p.queued(t) == 8 || len(answers) == 8)
		})
		leave() // the 16 clients give up: nobody waits for the old scans any more
		for range old {
			<-answers
		}
		start := time.Now()
		a := fetch(t.Context(), p, "/v2/library/app/manifests/v1")
		waited := time.Since(start)
		newImage(t, p, a, waited)
		if got := p.counter(t, "trustproxy_scan_slot_events_total", "event", "yielded"); got == 0 {
			t.Errorf("trustproxy_scan_slot_events_total{event=yielded} = 0 after the old scans yielded their slots")
		}
		t.Logf("the new image waited %s; old scans started %d, new image's scans %d; queue after: %v",
			waited.Round(time.Millisecond), len(w.startedSince(old, base)), w.scanner.ScanRequests(fresh), p.queued(t))
	})

	t.Run("their clients wait", func(t *testing.T) {
		p := w.start(t, policy, "")
		base := w.scansOf(old)
		ctx, leave := context.WithCancel(t.Context())
		defer leave()
		answers := anonymous(ctx, p, old)
		eventually(t, "8 old scans started, the other 8 requests queued or answered", func() bool {
			return len(w.startedSince(old, base)) == 8 && (p.queued(t) == 8 || len(answers) == 8)
		})
		start := time.Now()
		got := make(chan answer, 1)
		go func() { got <- fetch(t.Context(), p, "/v2/library/app/manifests/v1") }()
		eventually(t, "the new image's request queued or answered", func() bool { return p.queued(t) == 9 || len(got) == 1 })
		queuedBehind := p.queued(t) - 1
		// One old scan ends: its slot goes to the repository with the
		// fewest scans running (library/app, none), not to the old images'
		// queue, which came first.
		w.scanner.Release(w.startedSince(old, base)[0])
		a := <-got
		waited := time.Since(start)
		newImage(t, p, a, waited)
		if got := p.counter(t, "trustproxy_scan_slot_events_total", "event", "queued"); got < 9 {
			t.Errorf("trustproxy_scan_slot_events_total{event=queued} = %v, want at least 9", got)
		}
		t.Logf("the new image waited %s, queued behind %v requests for old images; old scans started %d",
			waited.Round(time.Millisecond), queuedBehind, len(w.startedSince(old, base)))
	})
}

// T49: a scanner's pull credential stops skipping the scan gate once a
// report that fails the policy arrives during its life (here from CI): its
// pull is refused with the finding.
func TestScanCredentialRefusedAfterFailingReport(t *testing.T) {
	w := newScanWorld(t) // credentials live 1m
	signed := w.signedImage(t, "v1")
	p := w.start(t, "{missing: wait, wait: 20s}", "")
	p.mustPull(t, "library/app:v1") // scanned, clean, served
	pulls := w.scanner.Pulls()
	if len(pulls) == 0 || !strings.HasPrefix(pulls[0].Authorization, "Bearer tpscan.") {
		t.Fatalf("the adapter's pulls: %+v", pulls)
	}
	auth := pulls[0].Authorization
	byDigest := "/v2/docker.io/library/app/manifests/" + signed.String()
	if status, _, body := p.get(t, http.MethodGet, byDigest, "Authorization", auth); status != http.StatusOK {
		t.Fatalf("the credential's own digest, during its life: %d %s", status, body)
	}

	if got := postReport(t, p, w.token, signed.String(), ciReport(signed, xz)); got != http.StatusCreated {
		t.Fatalf("posting CI's report: %d", got)
	}
	status, _, body := p.get(t, http.MethodGet, byDigest, "Authorization", auth)
	wantDenied(t, status, body, scan.ReasonVulnerable)
	for _, want := range []string{"CVE-2024-3094 Critical in xz-utils 5.6.0, fixed in 5.6.1", "scan credential"} {
		if !strings.Contains(string(body), want) {
			t.Fatalf("refusal %s does not say %q", body, want)
		}
	}
	if d := p.decision(t, gun, signed.String()); d["verdict"] != "denied" || d["reason"] != scan.ReasonVulnerable ||
		!strings.Contains(fmt.Sprint(d["message"]), "scan credential") {
		t.Fatalf("decision %v", d)
	}
	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, scan.ReasonVulnerable)
}

// TestScanReportPostedDuringScanStands: CI posts a failing report while a
// scanner's scan of the image runs; the scan then reports it clean. The
// newer report, CI's, stands: the image stays refused.
func TestScanReportPostedDuringScanStands(t *testing.T) {
	w := newScanWorld(t)
	signed := w.signedImage(t, "v1")
	w.scanner.SetDelay(time.Second)
	p := w.start(t, "{missing: wait, wait: 20s}", "")
	done := make(chan int)
	go func() {
		status, _, _ := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
		done <- status
	}()
	for w.scanner.ScanRequests(signed) == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	if got := postReport(t, p, w.token, signed.String(), ciReport(signed, xz)); got != http.StatusCreated {
		t.Fatalf("posting CI's report: %d", got)
	}
	if status := <-done; status == http.StatusOK {
		t.Fatal("the request that waited for the scan was served, though CI's newer report finds a critical CVE")
	}
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, scan.ReasonVulnerable)
}

// TestScanAfterCosignAndNotation: under a rule whose sources are cosign and
// Notation, the scan gate judges what a signature verified, after it: a
// clean cosign-signed image is served with its scan, a vulnerable
// cosign-signed one and a vulnerable Notation-signed one are refused
// (vulnerable), and an unsigned one is refused (not_signed) without being
// scanned.
func TestScanAfterCosignAndNotation(t *testing.T) {
	w := newScanWorld(t)
	ci := testenv.NewCosignKey(t, "ci")
	acme := testenv.NewNotationCA(t, "acme")
	release := acme.Key(t, "release", 0)
	clean := digest.Digest(w.pushCosigned(t, "clean", "scan cosign clean", ci).String())
	vulnerable := digest.Digest(w.pushCosigned(t, "vulnerable", "scan cosign vulnerable", ci).String())
	notationVulnerable := digest.Digest(w.pushNotationSigned(t, "notation", "scan notation vulnerable", release).String())
	unsigned := digest.Digest(w.pushCosigned(t, "unsigned", "scan unsigned", nil).String())
	w.scanner.SetReport(vulnerable, []scan.Vulnerability{xz})
	w.scanner.SetReport(notationVulnerable, []scan.Vulnerability{xz})

	rule := `    - repositories: "docker.io/**"
      sources: [cosign, notation]
      signers: [ci, acme]
      allow_no_tlog: true
      scan: {severity: high, missing: wait, wait: 20s}
`
	dataDir := t.TempDir()
	p := startAt(t, func(url string) string {
		cfg := w.cosignConfig(t, dataDir, ci, rule, fmt.Sprintf(`scan:
  registry_url: %s
  scanners: [{name: test-adapter, url: %s}]
  report_token_file: %s
  timeout: 20s
`, url, w.scanner.URL(), w.tokenFile))
		return strings.Replace(cfg, "  rules:\n", "    - name: acme\n      notation_ca: "+acme.PEMFile+
			"\n      notation_identities: ['"+release.Identity()+"']\n  rules:\n", 1)
	})

	if got := p.mustPull(t, "library/app:clean"); got.String() != clean.String() {
		t.Fatalf("served %s, want %s", got, clean)
	}
	if d := p.decision(t, gun, "clean"); d["verdict"] != "served" || d["source"] != "cosign" || d["scan_passed"] != true {
		t.Errorf("decision %v, want served by cosign with its scan", d)
	}
	for _, tag := range []string{"vulnerable", "notation"} {
		status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/"+tag)
		wantDenied(t, status, body, scan.ReasonVulnerable)
		p.wantDecision(t, gun, tag, "denied", scan.ReasonVulnerable)
	}
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/unsigned")
	wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", "not_signed")
	if n := w.scanner.ScanRequests(unsigned); n != 0 {
		t.Errorf("the unsigned image was scanned %d times", n)
	}
}
