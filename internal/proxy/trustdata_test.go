package proxy_test

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// trustDataPath is where notary's read API serves file of gun.
func trustDataPath(gun, file string) string { return "/v2/" + gun + "/_trust/tuf/" + file }

// TestTrustDataServedAsSigned: trustproxy serves notary's read API from the
// trust data it verified, byte for byte as notary-server signed it, under
// every name a notary client asks for (role, role by its current version,
// by sha256 and by sha512); HEAD gets the length. An older version (the
// first root, before the snapshot key went to the server) is not served.
func TestTrustDataServedAsSigned(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "trust data v1")
	p := w.start(t, "")
	p.mustPull(t, "library/app:v1")
	rec := w.Notary.Record(t, gun)
	served := 0
	for file, want := range rec.Files {
		status, h, body := p.get(t, http.MethodGet, trustDataPath(gun, file))
		if file == "1.root.json" && rec.Version("root") > 1 {
			if status != http.StatusNotFound {
				t.Errorf("%s, an older root: %d, want 404", file, status)
			}
			continue
		}
		if status != http.StatusOK || !bytes.Equal(body, want) || h.Get("Content-Type") != "application/json" {
			t.Errorf("%s: %d %s %.200s, want notary-server's %d bytes", file, status, h.Get("Content-Type"), body, len(want))
		}
		served++
	}
	if served < 15 {
		t.Fatalf("only %d names tried: %v", served, rec.Files)
	}
	status, h, body := p.get(t, http.MethodHead, trustDataPath(gun, "targets/releases.json"))
	if status != http.StatusOK || len(body) != 0 || h.Get("Content-Length") != strconv.Itoa(len(rec.Files["targets/releases.json"])) {
		t.Fatalf("HEAD targets/releases.json: %d %v", status, h)
	}
	p.wantDecision(t, gun, "targets/releases.json", "served", "verified")
}

// TestTrustDataRefusals: what a hostile or careless client asks of the
// read API gets a clear 4xx with a reason, and costs no request to the
// Notary server: path spellings, role names out of the grammar or not in
// the verified data, a hash that is not hex or not the verified version's,
// an older root version, a repository with no rule or no trust data,
// writes. Refusals are decisions like any other.
func TestTrustDataRefusals(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "trust data refusals v1")
	w.Registry.Push(t, "library/plain", "v1", testenv.Image(t, "trust data plain", 1, 1024))
	p := start(t, strings.Replace(w.config(t, t.TempDir(), ""), `"docker.io/**"`, `"docker.io/library/*"`, 1))
	if status, _, body := p.get(t, http.MethodGet, trustDataPath(gun, "timestamp.json")); status != http.StatusOK {
		t.Fatalf("timestamp.json: %d %s", status, body)
	}
	asked := w.Notary.Requests("")
	for _, c := range []struct {
		path   string
		status int
		code   string
		reason string
	}{
		{trustDataPath(gun, "bogus.json"), 404, "METADATA_NOT_FOUND", "not_signed"},
		{trustDataPath(gun, "targets/nobody.json"), 404, "METADATA_NOT_FOUND", "not_signed"},
		{trustDataPath(gun, "targets/"+strings.Repeat("a", 300)+".json"), 404, "METADATA_NOT_FOUND", "not_signed"},
		{trustDataPath(gun, "root"), 404, "METADATA_NOT_FOUND", "not_signed"},
		{trustDataPath(gun, "snapshot.xyz.json"), 404, "METADATA_NOT_FOUND", "not_signed"},
		{trustDataPath(gun, "snapshot."+strings.Repeat("0", 64)+".json"), 404, "METADATA_NOT_FOUND", "not_signed"},
		{trustDataPath(gun, "1.root.json"), 404, "METADATA_NOT_FOUND", "not_signed"},
		{trustDataPath(gun, "99.targets.json"), 404, "METADATA_NOT_FOUND", "not_signed"},
		{trustDataPath(gun, "01.targets.json"), 404, "METADATA_NOT_FOUND", "not_signed"},
		{trustDataPath(gun, "targets/../root.json"), 400, "NAME_INVALID", ""},
		{trustDataPath(gun, "targets//releases.json"), 400, "NAME_INVALID", ""},
		{"/v2/docker.io/library/app/_trust/tuf/targets%2Freleases.json", 400, "NAME_INVALID", ""},
		{trustDataPath("docker.io/library/plain", "root.json"), 404, "METADATA_NOT_FOUND", "no_trust_data"},
		{trustDataPath("docker.io/other/app", "root.json"), 404, "METADATA_NOT_FOUND", "no_rule"},
		{trustDataPath("docker.io/Library/app", "root.json"), 400, "NAME_INVALID", ""},
	} {
		status, _, body := p.get(t, http.MethodGet, c.path)
		if status != c.status || !strings.Contains(string(body), `"code":"`+c.code+`"`) || (c.reason != "" && !strings.Contains(string(body), "("+c.reason+")")) {
			t.Errorf("GET %.120s: %d %.300s, want %d %s naming %q", c.path, status, body, c.status, c.code, c.reason)
		}
	}
	// The Notary server was asked only about the repository without trust
	// data (once), never for a file name a client made up.
	if n := w.Notary.Requests("") - asked; n > 2 {
		t.Errorf("the refusals cost %d requests to the Notary server", n)
	}
	p.wantDecision(t, gun, "bogus.json", "denied", proxy.Reason(trust.NotSigned))
	p.wantDecision(t, "docker.io/other/app", "root.json", "denied", proxy.Reason(trust.NoRule))
	for _, method := range []string{http.MethodPut, http.MethodPost, http.MethodDelete} {
		status, _, body := p.get(t, method, trustDataPath(gun, "root.json"))
		wantDenied(t, status, body, proxy.ReasonReadOnly)
		if !strings.Contains(string(body), gun+" refused") {
			t.Errorf("%s: the refusal does not name the repository: %s", method, body)
		}
	}
}

// TestTrustDataOnEveryReplica: a replica whose trust view came from
// another replica through Redis (a shared verdict: it fetched no metadata
// itself) serves the trust data as the first one does.
func TestTrustDataOnEveryReplica(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "trust data replicas v1")
	d := testenv.NewDeployment(t, testenv.StartRedis(t, ""))
	a := w.replica(t, d, t.TempDir(), time.Hour)
	b := w.replica(t, d, t.TempDir(), time.Hour)
	a.mustPull(t, "library/app:v1")
	rec := w.Notary.Record(t, gun)
	for _, file := range []string{"timestamp.json", "root.json", "targets/releases.json"} {
		status, _, body := b.get(t, http.MethodGet, trustDataPath(gun, file))
		if status != http.StatusOK || !bytes.Equal(body, rec.Files[file]) {
			t.Fatalf("replica b, %s: %d %.300s", file, status, body)
		}
	}
}
