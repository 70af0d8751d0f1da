package proxy_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/sample"
	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// cosignRule is a rule for docker.io/** judged by cosign alone, the
// signer ci trusted, keyed signatures without a tlog entry accepted.
const cosignRule = `    - repositories: "docker.io/**"
      sources: [cosign]
      signers: [ci]
      allow_no_tlog: true
`

// cosignConfig is w's configuration with the signer ci (key) and rule in
// place of the default rule; extra is appended at the top level.
func (w *world) cosignConfig(t *testing.T, dataDir string, key *testenv.CosignKey, rule, extra string) string {
	t.Helper()
	cfg := w.config(t, dataDir, extra)
	cfg = strings.Replace(cfg, "  rules:\n", "    - name: ci\n      cosign_key: "+key.PubFile+"\n  rules:\n", 1)
	return strings.Replace(cfg, "    - repositories: \"docker.io/**\"\n      signers: [alice]\n", rule, 1)
}

// pushCosigned pushes a fresh image as library/app:tag and signs its
// digest with key (nil: unsigned).
func (w *world) pushCosigned(t *testing.T, tag, seed string, key *testenv.CosignKey) v1.Hash {
	t.Helper()
	h := w.Registry.Push(t, "library/app", tag, testenv.Image(t, seed, 2, 8<<10))
	if key != nil {
		w.Registry.CosignSign(t, "library/app", digest.Digest(h.String()), key)
	}
	return h
}

// layerOf is the first layer of the manifest dgst at the upstream.
func (w *world) layerOf(t *testing.T, dgst v1.Hash) v1.Hash {
	t.Helper()
	ref, _ := name.NewDigest(w.Registry.Host()+"/library/app@"+dgst.String(), name.Insecure)
	img, err := remote.Image(ref, remote.WithContext(t.Context()))
	if err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	return m.Layers[0].Digest
}

// TestCosignKeyed: under a cosign-only rule, an image signed by the
// trusted key is served (tag and digest, manifest and blobs, through
// go-containerregistry's client); one signed by an untrusted key, an
// unsigned one, a tag moved upstream to an unsigned digest, and a blob of
// an unverified manifest are refused; tags/list leaves signature tags out.
func TestCosignKeyed(t *testing.T) {
	w := newWorld(t)
	ci, mallory := testenv.NewCosignKey(t, "ci"), testenv.NewCosignKey(t, "mallory")
	signed := w.pushCosigned(t, "v1", "cosign-v1", ci)
	untrusted := w.pushCosigned(t, "evil", "cosign-evil", mallory)
	w.pushCosigned(t, "unsigned", "cosign-unsigned", nil)
	p := start(t, w.cosignConfig(t, t.TempDir(), ci, cosignRule, ""))

	if got := p.mustPull(t, "library/app:v1"); got != signed {
		t.Fatalf("served %s, want %s", got, signed)
	}
	d := p.decision(t, gun, "v1")
	if d["verdict"] != "served" || d["source"] != "cosign" || d["role"] != "cosign" || !slices.Equal(toStrings(d["signers"]), []string{"ci"}) {
		t.Fatalf("decision %v, want served by cosign, signer ci", d)
	}
	if got := p.mustPull(t, "library/app@"+signed.String()); got != signed {
		t.Fatalf("by digest: served %s", got)
	}

	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/evil")
	wantDenied(t, status, body, proxy.Reason(trust.UntrustedSigner))
	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/manifests/"+untrusted.String())
	wantDenied(t, status, body, proxy.Reason(trust.UntrustedSigner))
	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/manifests/unsigned")
	wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned))
	if !strings.Contains(string(body), "cosign") {
		t.Errorf("refusal %s does not say cosign refused", body)
	}

	// A blob of a manifest no source verified is not served.
	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/blobs/"+w.layerOf(t, untrusted).String())
	wantRefused(t, status, body, http.StatusNotFound, "BLOB_UNKNOWN", proxy.ReasonNotReferenced)

	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/tags/list")
	var tags struct{ Tags []string }
	if err := json.Unmarshal(body, &tags); status != http.StatusOK || err != nil {
		t.Fatalf("tags/list: %d %s", status, body)
	}
	if slices.ContainsFunc(tags.Tags, func(s string) bool { return strings.HasPrefix(s, "sha256-") }) || !slices.Contains(tags.Tags, "v1") {
		t.Errorf("tags/list %v: want v1, and no referrers tags", tags.Tags)
	}

	// The upstream moves v1 to an unsigned image: refused, though the old
	// digest still verifies.
	w.pushCosigned(t, "v1", "cosign-v1-moved", nil)
	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned))
	if got := p.mustPull(t, "library/app@"+signed.String()); got != signed {
		t.Fatalf("the signed digest after the move: served %s", got)
	}
}

func toStrings(v any) []string {
	var out []string
	if l, ok := v.([]any); ok {
		for _, s := range l {
			out = append(out, s.(string))
		}
	}
	return out
}

// TestCosignRequireAll: a rule requiring all of notary and cosign refuses
// an image only Notary signed, and one only cosign signed, naming what is
// missing, and serves one both signed.
func TestCosignRequireAll(t *testing.T) {
	w := newWorld(t)
	ci := testenv.NewCosignKey(t, "ci")
	w.initRepo(t, gun, w.alice)
	w.pushSigned(t, "library/app", "notary-only", "all-notary-only")
	w.pushCosigned(t, "cosign-only", "all-cosign-only", ci)
	both := w.pushSigned(t, "library/app", "both", "all-both")
	w.Registry.CosignSign(t, "library/app", digest.Digest(both.String()), ci)
	rule := `    - repositories: "docker.io/**"
      sources: [notary, cosign]
      require: all
      signers: [alice, ci]
      allow_no_tlog: true
`
	p := start(t, w.cosignConfig(t, t.TempDir(), ci, rule, ""))

	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/notary-only")
	wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned))
	if !strings.Contains(string(body), "cosign did not verify") {
		t.Errorf("refusal %s does not name cosign as missing", body)
	}
	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/manifests/cosign-only")
	wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned))
	if !strings.Contains(string(body), "notary did not verify") {
		t.Errorf("refusal %s does not name notary as missing", body)
	}
	if got := p.mustPull(t, "library/app:both"); got != both {
		t.Fatalf("served %s, want %s", got, both)
	}
	d := p.decision(t, gun, "both")
	if d["source"] != "notary+cosign" || !slices.Equal(toStrings(d["signers"]), []string{"alice", "ci"}) {
		t.Fatalf("decision %v, want source notary+cosign, signers alice and ci", d)
	}
}

// TestCosignIndex: a multi-arch index signed at the index serves its
// platform manifests and their blobs; the platform manifests carry no
// signature of their own.
func TestCosignIndex(t *testing.T) {
	w := newWorld(t)
	ci := testenv.NewCosignKey(t, "ci")
	amd := testenv.ImageFor(t, "cosign-multi", "linux/amd64", 1, 4096)
	arm := testenv.ImageFor(t, "cosign-multi", "linux/arm64/v8", 1, 4096)
	idx := w.Registry.PushIndex(t, "library/app", "multi", testenv.Index(t, amd, arm))
	w.Registry.CosignSign(t, "library/app", digest.Digest(idx.String()), ci)
	p := start(t, w.cosignConfig(t, t.TempDir(), ci, cosignRule, ""))

	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/multi", "Accept", ocispec.MediaTypeImageIndex+","+"application/vnd.docker.distribution.manifest.list.v2+json")
	if status != http.StatusOK {
		t.Fatalf("index: %d %s", status, body)
	}
	for _, img := range []v1.Image{amd, arm} {
		h, _ := img.Digest()
		if got := p.mustPull(t, "library/app@"+h.String()); got != h {
			t.Fatalf("platform manifest: served %s, want %s", got, h)
		}
		layers, _ := img.Layers()
		ld, _ := layers[0].Digest()
		status, _, body := p.get(t, http.MethodGet, "/v2/library/app/blobs/"+ld.String())
		if status != http.StatusOK {
			t.Fatalf("layer of a platform manifest: %d %s", status, body)
		}
	}
}

// TestCosignReloadRemovesKey: a configuration without the signer's cosign
// key stops serving its images at once, manifests and blobs, though their
// verdicts had not expired.
func TestCosignReloadRemovesKey(t *testing.T) {
	w := newWorld(t)
	ci, other := testenv.NewCosignKey(t, "ci"), testenv.NewCosignKey(t, "ci")
	signed := w.pushCosigned(t, "v1", "reload-v1", ci)
	dataDir := t.TempDir()
	p := start(t, w.cosignConfig(t, dataDir, ci, cosignRule, ""))
	p.mustPull(t, "library/app:v1")
	layer := w.layerOf(t, signed)

	c, err := config.Load(strings.NewReader(w.cosignConfig(t, dataDir, other, cosignRule, "")), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.proxy.Reconfigure(c); err != nil {
		t.Fatal(err)
	}
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/"+signed.String())
	wantDenied(t, status, body, proxy.Reason(trust.UntrustedSigner))
	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/blobs/"+layer.String())
	wantRefused(t, status, body, http.StatusNotFound, "BLOB_UNKNOWN", proxy.ReasonNotReferenced)
}

// TestCosignAudit: under an audit rule an unsigned image is served and the
// decision says it would have been denied.
func TestCosignAudit(t *testing.T) {
	w := newWorld(t)
	ci := testenv.NewCosignKey(t, "ci")
	unsigned := w.pushCosigned(t, "v1", "audit-v1", nil)
	p := start(t, w.cosignConfig(t, t.TempDir(), ci, cosignRule+"      mode: audit\n", ""))
	if got := p.mustPull(t, "library/app:v1"); got != unsigned {
		t.Fatalf("served %s, want %s", got, unsigned)
	}
	d := p.decision(t, gun, "v1")
	if d["verdict"] != "audit" || d["would_deny"] != true || d["reason"] != string(trust.NotSigned) {
		t.Fatalf("decision %v, want audit, would_deny, not_signed", d)
	}
}

// TestCosignRedisVerifiedSet: verdicts planted on Redis, moved from
// another digest's key, or replayed after they expired do not make a
// manifest or its blobs servable; a signature removed upstream stops
// serving within reverify_ttl.
func TestCosignRedisVerifiedSet(t *testing.T) {
	w := newWorld(t)
	ci := testenv.NewCosignKey(t, "ci")
	signed := w.pushCosigned(t, "v1", "redis-v1", ci)
	unsigned := w.pushCosigned(t, "unsigned", "redis-unsigned", nil)
	rs := testenv.StartRedis(t, "")
	d := testenv.NewDeployment(t, rs)
	cfg := func() string {
		c := w.cosignConfig(t, t.TempDir(), ci, cosignRule, d.YAML())
		return strings.Replace(c, "trust:\n", "trust:\n  cosign:\n    reverify_ttl: 2s\n", 1)
	}
	a := start(t, cfg())
	a.mustPull(t, "library/app:v1")
	attacker := newRedisWriter(t, rs.Addr())
	keys := attacker.keys("trustproxy:verified:*")
	if len(keys) != 1 {
		t.Fatalf("verified set on redis: %v, want one entry", keys)
	}
	genuine := attacker.get(keys[0])
	saved := attacker.save("trustproxy:verified:*")

	// The attacker reads the policy stamp from the genuine entry (the
	// payload is sealed, not secret) and computes the key a replica reads
	// for the unsigned digest.
	var payload map[string]any
	if err := json.Unmarshal(genuine[1+sha256.Size:], &payload); err != nil {
		t.Fatalf("genuine entry: %v", err)
	}
	sum := sha256.Sum256([]byte(gun + "@" + unsigned.String() + "\n" + payload["policy"].(string)))
	target := "trustproxy:verified:" + hex.EncodeToString(sum[:16])
	payload["digest"] = unsigned.String()
	forged, _ := json.Marshal(payload)
	for name, planted := range map[string][]byte{"unsealed": forged, "moved from another digest": genuine} {
		t.Run(name, func(t *testing.T) {
			attacker.set(target, planted)
			c := start(t, cfg())
			status, _, body := c.get(t, http.MethodGet, "/v2/library/app/manifests/"+unsigned.String())
			wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned))
			status, _, body = c.get(t, http.MethodGet, "/v2/library/app/blobs/"+w.layerOf(t, unsigned).String())
			wantRefused(t, status, body, http.StatusNotFound, "BLOB_UNKNOWN", proxy.ReasonNotReferenced)
			if n := c.rejected(t, "verified"); n == 0 {
				t.Error("the planted entry was not counted in trustproxy_redis_rejected_total{kind=verified}")
			}
		})
	}

	// The signature is removed upstream (the referrers tag emptied); the
	// verdict expires; the genuine entry is replayed without expiry.
	w.emptyReferrers(t, signed)
	time.Sleep(2500 * time.Millisecond)
	attacker.restore(saved)
	fresh := start(t, cfg())
	for _, p := range []*instance{a, fresh} {
		status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/"+signed.String())
		wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned))
		status, _, body = p.get(t, http.MethodGet, "/v2/library/app/blobs/"+w.layerOf(t, signed).String())
		wantRefused(t, status, body, http.StatusNotFound, "BLOB_UNKNOWN", proxy.ReasonNotReferenced)
	}
}

// emptyReferrers overwrites dgst's referrers tag with an empty index, as
// removing its cosign signatures does on a registry without the referrers
// API.
func (w *world) emptyReferrers(t *testing.T, dgst v1.Hash) {
	t.Helper()
	ref, err := name.NewTag(w.Registry.Host()+"/library/app:sha256-"+dgst.Hex, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	idx := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)
	if err := remote.Put(ref, rawIndex(idx), remote.WithContext(context.Background())); err != nil {
		t.Fatal(err)
	}
}

type rawIndex []byte

func (r rawIndex) RawManifest() ([]byte, error) { return r, nil }
func (r rawIndex) MediaType() (types.MediaType, error) {
	return types.OCIImageIndex, nil
}

// TestCosignDockerPullThroughMirror: the real Docker daemon, with
// trustproxy as its registry mirror, pulls a cosign-signed image (keyed,
// and keyless by the trusted identity) and is refused an unsigned one, one
// signed keylessly by another identity, and one whose bundle lacks its
// inclusion proof (a refused dockerd falls back to Docker Hub, so the
// refusals are read from trustproxy's decision log). One daemon serves
// every case.
func TestCosignDockerPullThroughMirror(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Docker daemon")
	}
	w := newWorld(t)
	ci := testenv.NewCosignKey(t, "ci")
	ss := testenv.NewTestSigstore(t)
	signed := w.pushCosigned(t, "v1", "docker-cosign-v1", ci)
	w.pushCosigned(t, "v2", "docker-cosign-v2", nil)
	keyless := w.pushKeyless(t, "v3", ss, releaseSubject, releaseIssuer, testenv.Keyless{})
	w.pushKeyless(t, "v4", ss, "mallory@example.test", releaseIssuer, testenv.Keyless{})
	w.pushKeyless(t, "v5", ss, releaseSubject, releaseIssuer, testenv.Keyless{NoInclusionProof: true})
	rule := keylessRule + "      allow_no_tlog: true\n" // keyed signatures offline; keyless ones need their entry all the same
	p := start(t, w.keylessConfig(t, t.TempDir(), ci, ss.RootFile, anchoredRelease, rule, ""))
	d := testenv.StartDockerd(t, p.srv.URL)
	ctx := t.Context()
	for tag, want := range map[string]v1.Hash{"v1": signed, "v3": keyless} {
		if out, err := d.Pull(ctx, "app:"+tag); err != nil {
			t.Fatalf("docker pull app:%s through the mirror: %v\n%s", tag, err, out)
		}
		digests, err := d.RepoDigests(ctx, "app:"+tag)
		if err != nil || !slices.Contains(digests, "app@"+want.String()) {
			t.Fatalf("RepoDigests of app:%s %v (%v), want app@%s", tag, digests, err, want)
		}
	}
	if ds := p.decision(t, gun, "v3"); !slices.Equal(toStrings(ds["signers"]), []string{"release"}) {
		t.Fatalf("decision for v3 %v, want signer release", ds)
	}
	for tag, reason := range map[string]proxy.Reason{"v2": proxy.Reason(trust.NotSigned), "v4": proxy.ReasonIdentityMismatch, "v5": proxy.ReasonNoTlog} {
		if out, err := d.Pull(ctx, "app:"+tag); err == nil {
			t.Fatalf("docker pull app:%s succeeded:\n%s", tag, out)
		}
		p.wantDecision(t, gun, tag, "denied", reason)
	}
}

// BenchmarkColdPullCosignVsNotary pulls a fresh two-layer image through a
// fresh trustproxy (nothing cached: trust data or signatures, manifest and
// blobs come from the upstream), Notary-signed and cosign-signed side by
// side, and reports each one's time per pull and their ratio.
func BenchmarkColdPullCosignVsNotary(b *testing.B) {
	w := &world{Env: testenv.New(b), alice: testenv.NewKey(b, "alice"), roots: map[string]string{}}
	w.roots[gun] = w.Notary.Init(b, gun)
	w.Notary.AddDelegation(b, gun, testenv.Releases, w.alice)
	ci := testenv.NewCosignKey(b, "ci")
	cfgFor := func(cosign bool) string {
		yaml := w.config(b, b.TempDir(), "")
		if cosign {
			yaml = strings.Replace(yaml, "  rules:\n", "    - name: ci\n      cosign_key: "+ci.PubFile+"\n  rules:\n", 1)
			yaml = strings.Replace(yaml, "    - repositories: \"docker.io/**\"\n      signers: [alice]\n", cosignRule, 1)
		}
		return yaml
	}
	var notaryNS, cosignNS time.Duration
	for i := 0; b.Loop(); i++ {
		for _, cosign := range []bool{false, true} {
			tag := fmt.Sprintf("n%d", i)
			if cosign {
				tag = fmt.Sprintf("c%d", i)
			}
			img := testenv.Image(b, "bench-"+tag, 2, 64<<10)
			h := w.Registry.Push(b, "library/app", tag, img)
			if cosign {
				w.Registry.CosignSign(b, "library/app", digest.Digest(h.String()), ci)
			} else {
				w.Notary.SignImage(b, gun, tag, img, testenv.Releases)
			}
			host := start(b, cfgFor(cosign)).host
			begin := time.Now()
			if _, err := sample.Pull(b.Context(), host+"/library/app:"+tag); err != nil {
				b.Fatalf("pull %s: %v", tag, err)
			}
			if cosign {
				cosignNS += time.Since(begin)
			} else {
				notaryNS += time.Since(begin)
			}
		}
	}
	n := float64(b.N)
	b.ReportMetric(float64(notaryNS.Milliseconds())/n, "notary-ms/pull")
	b.ReportMetric(float64(cosignNS.Milliseconds())/n, "cosign-ms/pull")
	b.ReportMetric(float64(cosignNS)/float64(notaryNS), "cosign/notary")
}
