package proxy_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// TestDecisionMatrix: the verdict and reason of every request kind, over
// each trust outcome, under an enforce rule, an audit rule and no rule, on
// the real notary-server and registry. A served or audited request gets its
// content; a denied one gets 404 (a reference the verified trust view does
// not hold) or 403 with the reason; the decision log says the same, naming
// the rule that decided.
func TestDecisionMatrix(t *testing.T) {
	w := newWorld(t)
	type repo struct {
		signer         *testenv.Key // nil: no trust data
		signed, layer  string       // a signed tag, and a layer of it
		unsignedDigest string       // a manifest pushed but not signed
		unrefLayer     string       // a layer of that unsigned manifest
	}
	repos := map[string]*repo{}
	for _, ns := range []string{"library", "audit", "norule"} {
		for name, signer := range map[string]*testenv.Key{"good": w.alice, "rogue": w.mallory, "nodata": nil} {
			path := ns + "/" + name
			r := &repo{signer: signer}
			img := testenv.Image(t, path+" signed", 1, 1024)
			other := testenv.Image(t, path+" unsigned", 1, 1024)
			if signer != nil {
				w.initRepo(t, "docker.io/"+path, signer)
				w.Registry.Push(t, path, "v1", img)
				w.Notary.SignImage(t, "docker.io/"+path, "v1", img, testenv.Releases)
			} else {
				w.Registry.Push(t, path, "v1", img)
			}
			r.signed, r.layer = "v1", firstLayer(t, img).String()
			r.unsignedDigest, r.unrefLayer = w.Registry.Push(t, path, "v2", other).String(), firstLayer(t, other).String()
			repos[path] = r
		}
	}
	cfg := strings.Replace(w.config(t, t.TempDir(), ""),
		"  rules:\n    - repositories: \"docker.io/**\"\n      signers: [alice]\n",
		"  rules:\n    - repositories: \"docker.io/library/*\"\n      signers: [alice]\n"+
			"    - repositories: \"docker.io/audit/*\"\n      signers: [alice]\n      mode: audit\n", 1)
	p := start(t, cfg)

	type want struct {
		verdict string
		reason  proxy.Reason
		status  int    // of a denied request
		code    string // of a denied request
	}
	served := want{verdict: "served", reason: "verified"}
	denied := func(r proxy.Reason) want { return want{"denied", r, http.StatusForbidden, "DENIED"} }
	unknown := func(code string, r proxy.Reason) want { return want{"denied", r, http.StatusNotFound, code} }
	audit := func(r proxy.Reason) want { return want{verdict: "audit", reason: r} }
	for _, c := range []struct {
		repo, request          string
		enforce, audit, norule want
	}{
		{"good", "signed tag", served, served, denied(proxy.Reason(trust.NoRule))},
		{"good", "unsigned tag", unknown("MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned)), audit(proxy.Reason(trust.NotSigned)), denied(proxy.Reason(trust.NoRule))},
		{"good", "unsigned digest", unknown("MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned)), audit(proxy.Reason(trust.NotSigned)), denied(proxy.Reason(trust.NoRule))},
		{"good", "layer of signed", served, served, denied(proxy.Reason(trust.NoRule))},
		{"good", "unreferenced layer", unknown("BLOB_UNKNOWN", proxy.ReasonNotReferenced), audit(proxy.ReasonNotReferenced), denied(proxy.Reason(trust.NoRule))},
		{"good", "tags", served, served, denied(proxy.Reason(trust.NoRule))},
		{"rogue", "signed tag", denied(proxy.Reason(trust.UntrustedSigner)), audit(proxy.Reason(trust.UntrustedSigner)), denied(proxy.Reason(trust.NoRule))},
		{"rogue", "layer of signed", unknown("BLOB_UNKNOWN", proxy.ReasonNotReferenced), audit(proxy.ReasonNotReferenced), denied(proxy.Reason(trust.NoRule))},
		{"rogue", "tags", served, served, denied(proxy.Reason(trust.NoRule))},
		{"nodata", "signed tag", denied(proxy.Reason(trust.NoTrustData)), audit(proxy.Reason(trust.NoTrustData)), denied(proxy.Reason(trust.NoRule))},
		{"nodata", "layer of signed", denied(proxy.Reason(trust.NoTrustData)), audit(proxy.Reason(trust.NoTrustData)), denied(proxy.Reason(trust.NoRule))},
		{"nodata", "tags", denied(proxy.Reason(trust.NoTrustData)), audit(proxy.Reason(trust.NoTrustData)), denied(proxy.Reason(trust.NoRule))},
	} {
		for ns, want := range map[string]want{"library": c.enforce, "audit": c.audit, "norule": c.norule} {
			path := ns + "/" + c.repo
			r := repos[path]
			var url, ref string
			switch c.request {
			case "signed tag":
				url, ref = "/manifests/"+r.signed, r.signed
			case "unsigned tag":
				url, ref = "/manifests/v2", "v2"
			case "unsigned digest":
				url, ref = "/manifests/"+r.unsignedDigest, r.unsignedDigest
			case "layer of signed":
				url, ref = "/blobs/"+r.layer, r.layer
			case "unreferenced layer":
				url, ref = "/blobs/"+r.unrefLayer, r.unrefLayer
			case "tags":
				url, ref = "/tags/list", ""
			}
			if c.request == "layer of signed" && want.verdict != "denied" {
				p.get(t, http.MethodGet, "/v2/"+path+"/manifests/"+r.signed) // a client asks for the manifest first
			}
			status, _, body := p.get(t, http.MethodGet, "/v2/"+path+url)
			name := path + " " + c.request
			if want.verdict == "denied" {
				wantRefused(t, status, body, want.status, want.code, want.reason)
			} else if status != http.StatusOK {
				t.Errorf("%s: %d %s, want 200 (%s)", name, status, body, want.verdict)
				continue
			}
			d := p.decision(t, "docker.io/"+path, ref)
			if d["verdict"] != want.verdict || d["reason"] != string(want.reason) {
				t.Errorf("%s: decision %v %v, want %v %v", name, d["verdict"], d["reason"], want.verdict, want.reason)
			}
			if ns != "norule" && d["rule_repositories"] != "docker.io/"+ns+"/*" {
				t.Errorf("%s: decision names rule %v", name, d["rule_repositories"])
			}
		}
	}
}
