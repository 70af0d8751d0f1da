package proxy_test

import (
	"bytes"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/theupdateframework/notary/client"
	"github.com/theupdateframework/notary/trustpinning"
	"github.com/theupdateframework/notary/tuf/data"

	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// trustDataPath is where notary's read API serves file of gun.
func trustDataPath(gun, file string) string { return "/v2/" + gun + "/_trust/tuf/" + file }

// TestTrustDataServedAsSigned: trustproxy serves notary's read API from the
// trust data it verified, byte for byte as notary-server signed it, under
// every name a notary client asks for (role, role by its current version,
// by sha256 and by sha512, an older root by its version); HEAD gets the
// length.
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
	asked, upstream := w.Notary.Requests(""), w.Registry.Requests("", "")
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
		{trustDataPath(gun, "99.root.json"), 404, "METADATA_NOT_FOUND", "not_signed"},
		{trustDataPath(gun, "99.targets.json"), 404, "METADATA_NOT_FOUND", "not_signed"},
		{trustDataPath(gun, "01.targets.json"), 404, "METADATA_NOT_FOUND", "not_signed"},
		{trustDataPath(gun, "targets/../root.json"), 400, "NAME_INVALID", ""},
		{trustDataPath(gun, "targets//releases.json"), 400, "NAME_INVALID", ""},
		{"/v2/docker.io/library/app/_trust/tuf/targets%2Freleases.json", 400, "NAME_INVALID", ""},
		{"/v2/docker.io/library/app/_trust/tuf/targets/%2e%2e/root.json", 400, "NAME_INVALID", ""},
		{"/v2/docker.io/library/app/_trust/tuf/%2e%2e%2froot.json", 400, "NAME_INVALID", ""},
		{trustDataPath(gun, "timestamp.json%00"), 404, "METADATA_NOT_FOUND", "not_signed"},
		{trustDataPath(gun, strings.Repeat("targets/x", 2000)+".json"), 404, "METADATA_NOT_FOUND", "not_signed"},
		{trustDataPath("docker.io/"+strings.Repeat("a/", 3000)+"app", "root.json"), 400, "NAME_INVALID", ""},
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
	if n := w.Registry.Requests("", "") - upstream; n != 0 {
		t.Errorf("the refusals cost %d requests to the upstream registry", n)
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

// TestTrustDataOlderRoots: a notary client whose cached root is two
// rotations behind asks trustproxy for the intermediate root, and gets it
// once trustproxy checked that it chains to the root it verified: the
// client then walks the rotations and sees the tag signed after them. A
// Notary server offering an intermediate root of its own making (validly
// self-signed for the repository, but not a link of the chain) gets it
// refused with the reason, and the client never sees it.
func TestTrustDataOlderRoots(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "v1", "older roots v1")
	p := start(t, strings.Replace(w.config(t, t.TempDir(), ""), "refresh_ttl: 1h", "refresh_ttl: 1ns", 1))
	p.mustPull(t, "library/app:v1")
	first := w.Notary.Record(t, gun).Version("root")

	// A DCT client that trusts the first root it sees, through trustproxy.
	clientDir := t.TempDir()
	listTags := func() ([]string, error) {
		repo, err := client.NewFileCachedRepository(clientDir, data.GUN(gun), p.srv.URL, http.DefaultTransport, nil, trustpinning.TrustPinConfig{})
		if err != nil {
			return nil, err
		}
		targets, err := repo.ListTargets()
		var tags []string
		for _, tr := range targets {
			tags = append(tags, tr.Name)
		}
		return tags, err
	}
	if tags, err := listTags(); err != nil || !slices.Contains(tags, "v1") {
		t.Fatalf("the client through trustproxy: %v %v", tags, err)
	}

	w.Notary.RotateRoot(t, gun)
	w.Notary.RotateTargetsKey(t, gun)
	w.pushSigned(t, "library/app", "v2", "older roots v2")
	p.mustPull(t, "library/app:v2")
	rec := w.Notary.Record(t, gun)
	if rec.Version("root") < first+2 {
		t.Fatalf("root went from version %d to %d, want two rotations", first, rec.Version("root"))
	}
	intermediate := strconv.Itoa(first+1) + ".root.json"

	// A hostile server: the intermediate root replaced by one of its own.
	forger := testenv.NewTUFRepo(t, gun)
	forger.Publish(t)
	s := forger.Swizzle()
	must(t, s.OffsetMetadataVersion(data.CanonicalRootRole, first))
	forged, err := s.MetadataCache.GetSized(data.CanonicalRootRole.String(), -1)
	must(t, err)
	hostile := rec
	hostile.Files = maps.Clone(rec.Files)
	hostile.Files[intermediate] = forged
	w.Notary.Replay(gun, hostile)
	status, _, body := p.get(t, http.MethodGet, trustDataPath(gun, intermediate))
	if status != http.StatusNotFound || !strings.Contains(string(body), "(invalid_metadata)") || !strings.Contains(string(body), "investigate the server") {
		t.Fatalf("a made-up intermediate root: %d %s", status, body)
	}
	if _, err := listTags(); err == nil {
		t.Fatal("the client walked a made-up intermediate root")
	}
	p.wantDecision(t, gun, intermediate, "denied", proxy.Reason(trust.InvalidMetadata))

	w.Notary.Live(gun)
	status, _, body = p.get(t, http.MethodGet, trustDataPath(gun, intermediate))
	if status != http.StatusOK || !bytes.Equal(body, rec.Files[intermediate]) {
		t.Fatalf("%s: %d %.300s, want notary-server's", intermediate, status, body)
	}
	tags, err := listTags()
	if err != nil || !slices.Contains(tags, "v2") {
		t.Fatalf("the client with a root two rotations old: %v %v", tags, err)
	}
	// Served from trustproxy's own copy, with the server down.
	asked := w.Notary.Requests(intermediate)
	w.Notary.SetDown(true)
	status, _, _ = p.get(t, http.MethodGet, trustDataPath(gun, intermediate))
	if status != http.StatusOK || w.Notary.Requests(intermediate) != asked {
		t.Fatalf("%s with the server down: %d, %d more requests", intermediate, status, w.Notary.Requests(intermediate)-asked)
	}
}
