package proxy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
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
// gate for its digest, and for nothing else: another digest, the tag,
// another repository, tags/list, and after its expiry it is refused.
func TestScanCredentialOnlyForItsDigest(t *testing.T) {
	w := newScanWorld(t)
	w.credentialTTL = "2s"
	signed := w.signedImage(t, "v1")
	other := w.signedImage(t, "v2")
	w.initRepo(t, "docker.io/library/other", w.alice)
	w.pushSigned(t, "library/other", "v1", "other")
	w.scanner.SetReport(signed, []scan.Vulnerability{xz})
	p := w.start(t, "{missing: wait, wait: 20s}", "")
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, scan.ReasonVulnerable)
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
	forged := auth[:len(auth)-2] + "AA"
	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/manifests/"+signed.String(), "Authorization", forged)
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

	report := func(d digest.Digest, vulns ...scan.Vulnerability) []byte {
		b, _ := json.Marshal(scan.Report{GeneratedAt: time.Now(), Artifact: scan.Artifact{Repository: "library/app", Digest: d.String()},
			Scanner: scan.ScannerInfo{Name: "ci"}, Severity: "Unknown", Vulnerabilities: vulns})
		return b
	}
	post := func(token string, d string, body []byte) int {
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
	for name, c := range map[string]struct {
		token string
		body  []byte
		want  int
	}{
		"no token":    {"", report(signed), http.StatusUnauthorized},
		"wrong token": {"ci-token-0123456789abcdeX", report(signed), http.StatusUnauthorized},
		"malformed":   {w.token, []byte(`{"vulnerabilities": [{"id": 7}]}`), http.StatusBadRequest},
		"mismatched":  {w.token, report(digest.FromString("another image")), http.StatusBadRequest},
		"oversized":   {w.token, bytes.Repeat([]byte(" "), scan.MaxReportBytes+1), http.StatusRequestEntityTooLarge},
	} {
		if got := post(c.token, signed.String(), c.body); got != c.want {
			t.Errorf("%s: %d, want %d", name, got, c.want)
		}
	}
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantDenied(t, status, body, scan.ReasonMissing) // nothing refused was stored
	if got := post(w.token, signed.String(), report(signed)); got != http.StatusCreated {
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
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nowhere := "http://" + l.Addr().String()
	l.Close()
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
