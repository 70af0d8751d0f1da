package proxy_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/internal/cosign"
	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/testenv"
	"github.com/trustproxy/trustproxy/internal/trust"
)

const bundleType = "application/vnd.dev.sigstore.bundle.v0.3+json"

// referrersOf asks p for the referrers of dgst in library/app (query: "" or
// "?artifactType=..."): the status, the headers and the index.
func (p *instance) referrersOf(t *testing.T, dgst v1.Hash, query string) (int, http.Header, ocispec.Index, []byte) {
	t.Helper()
	status, h, body := p.get(t, http.MethodGet, "/v2/library/app/referrers/"+dgst.String()+query)
	var idx ocispec.Index
	if status == http.StatusOK {
		if err := json.Unmarshal(body, &idx); err != nil {
			t.Fatalf("referrers of %s: %v in %s", dgst, err, body)
		}
		if h.Get("Content-Type") != ocispec.MediaTypeImageIndex || idx.SchemaVersion != 2 || idx.MediaType != ocispec.MediaTypeImageIndex || idx.Manifests == nil {
			t.Fatalf("referrers of %s: %s %s, want an OCI index", dgst, h.Get("Content-Type"), body)
		}
	}
	return status, h, idx, body
}

// putArtifact pushes to library/app at the upstream a manifest of config
// type cfgType (artifactType at, when not "") with one layer of type
// layerType holding content, whose subject is subject; it returns the
// manifest's digest and the layer's.
func (w *world) putArtifact(t *testing.T, subject v1.Hash, at, cfgType, layerType string, content []byte) (v1.Hash, v1.Hash) {
	t.Helper()
	ctx := t.Context()
	repo, err := name.NewRepository(w.Registry.Host()+"/library/app", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Head(repo.Digest(subject.String()), remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	blob := func(b []byte, mt string) ocispec.Descriptor {
		if err := remote.WriteLayer(repo, static.NewLayer(b, types.MediaType(mt)), remote.WithContext(ctx)); err != nil {
			t.Fatal(err)
		}
		return ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))}
	}
	cfg := blob([]byte("{}"), cfgType)
	layer := blob(content, layerType)
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: at, Config: cfg, Layers: []ocispec.Descriptor{layer},
		Subject: &ocispec.Descriptor{MediaType: string(desc.MediaType), Digest: digest.Digest(subject.String()), Size: desc.Size}}
	m.SchemaVersion = 2
	b, _ := json.Marshal(m)
	d := digest.FromBytes(b)
	if err := remote.Put(repo.Digest(d.String()), rawManifest{b: b}, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	return v1.Hash{Algorithm: "sha256", Hex: d.Encoded()}, v1.Hash{Algorithm: "sha256", Hex: layer.Digest.Encoded()}
}

// rawManifest is a manifest of media type mt (an OCI image manifest when
// "") with the bytes b.
type rawManifest struct {
	b  []byte
	mt types.MediaType
}

func (r rawManifest) RawManifest() ([]byte, error) { return r.b, nil }
func (r rawManifest) MediaType() (types.MediaType, error) {
	if r.mt == "" {
		return types.OCIManifestSchema1, nil
	}
	return r.mt, nil
}

// TestReferrersCosign: under a cosign rule, the referrers of a verified
// digest are listed (the upstream has no referrers API: trustproxy reads
// the referrers tag), filtered by artifactType; go-containerregistry's
// client finds the signature through trustproxy and fetches it and its
// bundle; cosign's own verifier, pointed at trustproxy as the registry,
// verifies the image; the referrers of an unsigned digest are refused as
// its manifest is.
func TestReferrersCosign(t *testing.T) {
	w := newWorld(t)
	ci := testenv.NewCosignKey(t, "ci")
	signed := w.pushCosigned(t, "v1", "referrers-v1", ci)
	unsigned := w.pushCosigned(t, "unsigned", "referrers-unsigned", nil)
	p := start(t, w.cosignConfig(t, t.TempDir(), ci, cosignRule, ""))

	status, h, idx, body := p.referrersOf(t, signed, "")
	if status != http.StatusOK || len(idx.Manifests) != 1 || idx.Manifests[0].ArtifactType != bundleType {
		t.Fatalf("referrers of the signed image: %d %s", status, body)
	}
	if h.Get("OCI-Filters-Applied") != "" {
		t.Errorf("OCI-Filters-Applied %q without a filter", h.Get("OCI-Filters-Applied"))
	}
	if d := p.decision(t, gun, signed.String()); d["kind"] != "referrers" || d["verdict"] != "served" || d["subject"] != signed.String() {
		t.Errorf("decision %v, want referrers served", d)
	}
	sig := idx.Manifests[0].Digest

	status, h, idx, body = p.referrersOf(t, signed, "?artifactType="+url.QueryEscape(bundleType))
	if status != http.StatusOK || len(idx.Manifests) != 1 || h.Get("OCI-Filters-Applied") != "artifactType" {
		t.Fatalf("referrers filtered by the bundle type: %d %v %s", status, h, body)
	}
	status, h, idx, body = p.referrersOf(t, signed, "?artifactType=application/vnd.cncf.notary.signature")
	if status != http.StatusOK || len(idx.Manifests) != 0 || h.Get("OCI-Filters-Applied") != "artifactType" {
		t.Fatalf("referrers filtered by another type: %d %v %s", status, h, body)
	}

	// The same refusal as the unsigned manifest's, logged.
	mStatus, _, mBody := p.get(t, http.MethodGet, "/v2/library/app/manifests/"+unsigned.String())
	wantRefused(t, mStatus, mBody, http.StatusNotFound, "MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned))
	status, _, _, body = p.referrersOf(t, unsigned, "")
	wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned))
	if d := p.decision(t, gun, unsigned.String()); d["kind"] != "referrers" || d["verdict"] != "denied" {
		t.Errorf("decision %v, want referrers denied", d)
	}

	// go-containerregistry: referrers, then the signature and its bundle.
	subject, err := name.NewDigest(p.host+"/library/app@"+signed.String(), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	ri, err := remote.Referrers(subject, remote.WithContext(t.Context()))
	if err != nil {
		t.Fatal(err)
	}
	im, err := ri.IndexManifest()
	if err != nil || len(im.Manifests) != 1 || im.Manifests[0].Digest.String() != sig.String() {
		t.Fatalf("remote.Referrers: %v %+v", err, im)
	}
	sigRef := subject.Context().Digest(sig.String())
	desc, err := remote.Get(sigRef, remote.WithContext(t.Context()))
	if err != nil {
		t.Fatalf("remote.Get of the signature: %v", err)
	}
	if d := p.decision(t, gun, sig.String()); d["verdict"] != "served" || d["source"] != "referrer" || d["subject"] != signed.String() {
		t.Errorf("decision %v, want the signature served as a referrer of %s", d, signed)
	}
	img, err := desc.Image()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers %v %v", layers, err)
	}
	rc, err := layers[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	ld, _ := layers[0].Digest()
	if err != nil || digest.FromBytes(b).String() != ld.String() {
		t.Fatalf("bundle through trustproxy: %v, %d bytes", err, len(b))
	}

	// cosign's verifier with trustproxy as the registry.
	pem, err := os.ReadFile(ci.PubFile)
	if err != nil {
		t.Fatal(err)
	}
	k, err := cosign.ParseSigner("ci", pem)
	if err != nil {
		t.Fatal(err)
	}
	v, err := cosign.New(cosign.Options{Signers: []cosign.Signer{k}, AllowNoTlog: true})
	if err != nil {
		t.Fatal(err)
	}
	cv, err := v.Verify(t.Context(), cosign.Upstream{Repo: subject.Context(), Client: http.DefaultClient}, digest.Digest(signed.String()))
	if err != nil || cv.Signer != "ci" {
		t.Fatalf("cosign verify behind trustproxy: %+v %v", cv, err)
	}
	if _, err := v.Verify(t.Context(), cosign.Upstream{Repo: subject.Context(), Client: http.DefaultClient}, digest.Digest(unsigned.String())); err == nil {
		t.Fatal("cosign verified the unsigned image behind trustproxy")
	}
}

// TestReferrersNotary: under the default Notary rule, an artifact attached
// to a signed image is listed and served with its blob; a runnable image
// pushed with the signed digest as its subject, and an artifact whose layer
// is an image layer, are not served by digest, nor are their layers; the
// referrers tag and cosign's legacy .sig tag are refused as any unsigned
// tag; the referrers of an unsigned digest are refused.
func TestReferrersNotary(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	signed := w.pushSigned(t, "library/app", "v1", "referrers-notary")
	unsigned := w.Registry.Push(t, "library/app", "unsigned", testenv.Image(t, "referrers-notary-unsigned", 1, 4096))
	const sbomType = "application/spdx+json"
	art, artLayer := w.putArtifact(t, signed, sbomType, "application/vnd.oci.empty.v1+json", sbomType, []byte(`{"spdxVersion":"SPDX-2.3"}`))

	// The attack: a runnable image claiming the signed digest as its subject.
	sd, err := remote.Head(mustRef(t, w.Registry.Host()+"/library/app@"+signed.String()), remote.WithContext(t.Context()))
	if err != nil {
		t.Fatal(err)
	}
	runnable := mutate.ConfigMediaType(mutate.MediaType(testenv.Image(t, "referrers-evil", 1, 4096), types.OCIManifestSchema1), types.OCIConfigJSON)
	evil := mutate.Subject(runnable, *sd).(v1.Image)
	evilRef := mustRef(t, w.Registry.Host()+"/library/app@"+mustDigest(t, evil))
	if err := remote.Write(evilRef, evil, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	evilLayers, _ := evil.Layers()
	evilLayer, _ := evilLayers[0].Digest()
	// An artifact in name whose layer a runtime would unpack.
	sneaky, sneakyLayer := w.putArtifact(t, signed, "application/x-sneaky", "application/vnd.oci.empty.v1+json",
		string(types.OCILayer), []byte("not really a tar"))

	p := w.start(t, "")
	status, _, idx, body := p.referrersOf(t, signed, "")
	if status != http.StatusOK {
		t.Fatalf("referrers: %d %s", status, body)
	}
	listed := map[string]bool{}
	for _, m := range idx.Manifests {
		listed[m.Digest.String()] = true
	}
	if !listed[art.String()] || listed[mustDigest(t, evil)] {
		t.Errorf("listed %v: want the artifact %s, not the image %s", listed, art, mustDigest(t, evil))
	}
	status, _, idx, _ = p.referrersOf(t, signed, "?artifactType="+url.QueryEscape(sbomType))
	if status != http.StatusOK || len(idx.Manifests) != 1 || idx.Manifests[0].Digest.String() != art.String() {
		t.Fatalf("filtered: %d %+v", status, idx.Manifests)
	}
	if status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/"+art.String(), "Accept", ocispec.MediaTypeImageManifest); status != http.StatusOK {
		t.Fatalf("the artifact: %d %s", status, body)
	}
	if status, _, body := p.get(t, http.MethodGet, "/v2/library/app/blobs/"+artLayer.String()); status != http.StatusOK || string(body) != `{"spdxVersion":"SPDX-2.3"}` {
		t.Fatalf("the artifact's blob: %d %s", status, body)
	}

	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/manifests/"+mustDigest(t, evil))
	wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned))
	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/blobs/"+evilLayer.String())
	wantRefused(t, status, body, http.StatusNotFound, "BLOB_UNKNOWN", proxy.ReasonNotReferenced)
	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/manifests/"+sneaky.String())
	wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned))
	if !strings.Contains(string(body), "runnable image") {
		t.Errorf("refusal %s does not say why it is no referrer", body)
	}
	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/blobs/"+sneakyLayer.String())
	wantRefused(t, status, body, http.StatusNotFound, "BLOB_UNKNOWN", proxy.ReasonNotReferenced)
	if _, err := p.pull(t, "library/app@"+mustDigest(t, evil)); err == nil {
		t.Fatal("the image with a signed subject was pulled")
	}

	// Tags that clients without the referrers API fall back to.
	tag := strings.Replace(signed.String(), ":", "-", 1)
	for _, tg := range []string{tag, tag + ".sig"} {
		status, _, body = p.get(t, http.MethodGet, "/v2/library/app/manifests/"+tg)
		wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned))
	}

	status, _, _, body = p.referrersOf(t, unsigned, "")
	wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned))
	// An artifact of an unsigned image is no more readable than it.
	unsArt, unsLayer := w.putArtifact(t, unsigned, sbomType, "application/vnd.oci.empty.v1+json", sbomType, []byte(`{"spdxVersion":"SPDX-2.2"}`))
	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/manifests/"+unsArt.String())
	wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned))
	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/blobs/"+unsLayer.String())
	wantRefused(t, status, body, http.StatusNotFound, "BLOB_UNKNOWN", proxy.ReasonNotReferenced)

	// Whoever pushes the referrers tag lists, for the signed image, the
	// artifact of the unsigned one: listed, and still refused by digest.
	repo, err := name.NewRepository(w.Registry.Host()+"/library/app", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	cur, err := remote.Get(repo.Tag(tag), remote.WithContext(t.Context()))
	if err != nil {
		t.Fatal(err)
	}
	var planted ocispec.Index
	if err := json.Unmarshal(cur.Manifest, &planted); err != nil {
		t.Fatal(err)
	}
	ud, err := remote.Head(repo.Digest(unsArt.String()), remote.WithContext(t.Context()))
	if err != nil {
		t.Fatal(err)
	}
	planted.Manifests = append(planted.Manifests, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: sbomType,
		Digest: digest.Digest(unsArt.String()), Size: ud.Size})
	pb, _ := json.Marshal(planted)
	if err := remote.Put(repo.Tag(tag), rawManifest{b: pb, mt: types.OCIImageIndex}, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	status, _, idx, body = p.referrersOf(t, signed, "")
	if status != http.StatusOK || len(idx.Manifests) != len(planted.Manifests)-1 {
		// evil is in the tag's index and not listed (a runnable image).
		t.Fatalf("referrers after the plant: %d %s", status, body)
	}
	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/manifests/"+unsArt.String())
	wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned))
	if !strings.Contains(string(body), "listed as a referrer of "+signed.String()) {
		t.Errorf("refusal %s does not say the listed subject differs", body)
	}
}

// TestReferrersAcrossReplicas: a client lists the referrers of a signed
// image on one replica and fetches the artifact and its blob on another,
// which never listed them: served, from the storage they share (the
// listing replica stored the artifact).
func TestReferrersAcrossReplicas(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	signed := w.pushSigned(t, "library/app", "v1", "referrers-replicas")
	const sbomType = "application/spdx+json"
	art, artLayer := w.putArtifact(t, signed, sbomType, "application/vnd.oci.empty.v1+json", sbomType, []byte(`{"spdxVersion":"SPDX-2.3"}`))
	a, b := twoReplicas(t, w, w.Registry.URL(), func(own string) string { return own })

	// Before any list, neither replica reads it from the upstream.
	status, _, body := b.get(t, http.MethodGet, "/v2/library/app/manifests/"+art.String(), "Accept", ocispec.MediaTypeImageManifest)
	wantRefused(t, status, body, http.StatusNotFound, "MANIFEST_UNKNOWN", proxy.Reason(trust.NotSigned))

	status, _, idx, body := a.referrersOf(t, signed, "")
	if status != http.StatusOK || len(idx.Manifests) != 1 || idx.Manifests[0].Digest.String() != art.String() {
		t.Fatalf("referrers on a: %d %s", status, body)
	}
	if status, _, body := b.get(t, http.MethodGet, "/v2/library/app/manifests/"+art.String(), "Accept", ocispec.MediaTypeImageManifest); status != http.StatusOK {
		t.Fatalf("the artifact on b: %d %s", status, body)
	}
	if d := b.decision(t, gun, art.String()); d["source"] != "referrer" || d["subject"] != signed.String() {
		t.Errorf("decision on b %v", d)
	}
	if status, _, body := b.get(t, http.MethodGet, "/v2/library/app/blobs/"+artLayer.String()); status != http.StatusOK || string(body) != `{"spdxVersion":"SPDX-2.3"}` {
		t.Fatalf("the artifact's blob on b: %d %s", status, body)
	}
}

func mustRef(t *testing.T, s string) name.Digest {
	t.Helper()
	r, err := name.NewDigest(s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestReferrersHostileUpstream: an upstream whose referrers API answers an
// index of 100,000 entries (some 12 MB, streamed) is refused
// (invalid_manifest) after at most the bounded read, quickly.
func TestReferrersHostileUpstream(t *testing.T) {
	w := newWorld(t)
	w.initRepo(t, gun, w.alice)
	signed := w.pushSigned(t, "library/app", "v1", "referrers-hostile")
	up, _ := url.Parse(w.Registry.URL())
	rp := httputil.NewSingleHostReverseProxy(up)
	front := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/referrers/") {
			rp.ServeHTTP(rw, r)
			return
		}
		rw.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
		fmt.Fprint(rw, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`)
		for i := range 100_000 {
			if i > 0 {
				fmt.Fprint(rw, ",")
			}
			if _, err := fmt.Fprintf(rw, `{"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/x-flood","digest":"%s","size":100}`,
				digest.FromString(fmt.Sprint(i))); err != nil {
				return // trustproxy stopped reading
			}
		}
		fmt.Fprint(rw, "]}")
	}))
	t.Cleanup(front.Close)
	p := start(t, strings.Replace(w.config(t, t.TempDir(), ""), w.Registry.URL(), front.URL, 1))

	begin := time.Now()
	status, _, _, body := p.referrersOf(t, signed, "")
	wantDenied(t, status, body, proxy.ReasonInvalidManifest)
	if !strings.Contains(string(body), "referrers") {
		t.Errorf("refusal %s does not say it is the referrers index", body)
	}
	if took := time.Since(begin); took > 10*time.Second {
		t.Errorf("refused after %v", took)
	}
	if d := p.decision(t, gun, signed.String()); d["kind"] != "referrers" || d["verdict"] != "denied" || d["reason"] != string(proxy.ReasonInvalidManifest) {
		t.Errorf("decision %v", d)
	}
}
