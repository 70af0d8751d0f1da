package proxy_test

// THREATS.md rows about the content and the proxy's own surface (T4,
// T28-T31, T34, T36, T42), played through trustproxy.

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/testenv"
)

// serveManifest makes w's upstream answer GETs of the manifest dgst with
// what body writes.
func (w *tufWorld) serveManifest(dgst string, body func(rw http.ResponseWriter, r *http.Request)) {
	w.reg.SetFault(func(rw http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/manifests/"+dgst) {
			return false
		}
		body(rw, r)
		return true
	})
}

// endless writes chunks of spaces until the client goes away.
func endless(rw http.ResponseWriter, r *http.Request) {
	chunk := bytes.Repeat([]byte(" "), 64<<10)
	for r.Context().Err() == nil {
		if _, err := rw.Write(chunk); err != nil {
			return
		}
	}
}

// TestManifestLengthEnforced (T4): the upstream answers the signed
// manifest's digest with its bytes padded (a valid JSON document, another
// digest), cut short, or followed by a body that never ends, with or
// without a Content-Length. Each is refused as digest_mismatch, read no
// further than the signed length, and nothing is stored.
func TestManifestLengthEnforced(t *testing.T) {
	w := newTUFWorld(t)
	raw, err := w.img.RawManifest()
	must(t, err)
	for name, body := range map[string]func(rw http.ResponseWriter, r *http.Request){
		"padded": func(rw http.ResponseWriter, r *http.Request) {
			rw.Header().Set("Content-Length", strconv.Itoa(len(raw)+2))
			_, _ = rw.Write(append(bytes.Clone(raw), '\n', '\n'))
		},
		"short": func(rw http.ResponseWriter, r *http.Request) {
			rw.Header().Set("Content-Length", strconv.Itoa(len(raw)-1))
			_, _ = rw.Write(raw[:len(raw)-1])
		},
		"endless": func(rw http.ResponseWriter, r *http.Request) {
			_, _ = rw.Write(raw)
			endless(rw, r)
		},
		"endless with a huge Content-Length": func(rw http.ResponseWriter, r *http.Request) {
			rw.Header().Set("Content-Length", strconv.Itoa(1<<40))
			_, _ = rw.Write(raw)
			endless(rw, r)
		},
	} {
		t.Run(name, func(t *testing.T) {
			w.serveManifest(w.signed.String(), body)
			p := w.start(t, "", "")
			begin := time.Now()
			status, body := p.manifestV1(t)
			wantRefusal(t, status, body, proxy.ReasonDigestMismatch)
			if took := time.Since(begin); took > 10*time.Second {
				t.Errorf("refused after %s", took)
			}
			if blobs := p.storedBlobs(t); len(blobs) != 0 {
				t.Fatalf("stored %v", blobs)
			}
		})
	}
}

// TestNSParameterOpensNoConnection (T28): an ns parameter or a path prefix
// naming an address (a Redis, say) selects no upstream: 404, and the
// address sees no connection.
func TestNSParameterOpensNoConnection(t *testing.T) {
	w := newTUFWorld(t)
	target := newCapture(t, func(rw http.ResponseWriter, r *http.Request) { _, _ = rw.Write([]byte("{}")) })
	p := w.start(t, "", "")
	addr := "127.0.0.1:" + target.port()
	dgst := digest.FromString("any").String()
	for _, path := range []string{
		"/v2/library/app/manifests/v1?ns=" + addr,
		"/v2/library/app/manifests/" + dgst + "?ns=" + addr,
		"/v2/library/app/blobs/" + dgst + "?ns=" + addr,
		"/v2/library/app/tags/list?ns=localhost:" + target.port(),
		"/v2/library/app/manifests/v1?ns=http://" + addr,
		"/v2/" + addr + "/library/app/manifests/v1",
		"/v2/localhost:" + target.port() + "/library/app/blobs/" + dgst,
	} {
		status, _, body := p.get(t, http.MethodGet, path)
		if status != http.StatusNotFound && status != http.StatusBadRequest {
			t.Errorf("GET %s: %d %s, want 404 or 400", path, status, body)
		}
	}
	if n := target.conns.Load(); n != 0 {
		t.Fatalf("the address named by ns or the path saw %d connections", n)
	}
}

// TestHostileNamesRefusedBeforeAnyLookup (T29): repository names, tags and
// digests outside the reference grammar, or spelled in non-canonical
// encodings, are refused 400 with NAME_INVALID, TAG_INVALID or
// DIGEST_INVALID before anything is asked: no Notary or upstream request,
// nothing written to the data directory.
func TestHostileNamesRefusedBeforeAnyLookup(t *testing.T) {
	w := newTUFWorld(t)
	dataDir := t.TempDir()
	p := start(t, w.config(t, dataDir, "", ""))
	hex64 := strings.Repeat("a", 64)
	before := files(t, dataDir)
	asked := w.reg.Requests("", "")
	for _, c := range []struct{ path, code string }{
		{"/v2/library/../app/manifests/v1", "NAME_INVALID"},
		{"/v2/library/./app/manifests/v1", "NAME_INVALID"},
		{"/v2/library/%2e%2e/app/manifests/v1", "NAME_INVALID"},
		{"/v2/library%2Fapp/manifests/v1", "NAME_INVALID"},
		{"/v2/library/%61pp/manifests/v1", "NAME_INVALID"},
		{"/v2/library//app/manifests/v1", "NAME_INVALID"},
		{"/v2/Library/App/manifests/v1", "NAME_INVALID"},
		{"/v2/library/app%00/manifests/v1", "NAME_INVALID"},
		{"/v2/library/app./manifests/v1", "NAME_INVALID"},
		{"/v2/-library/app/manifests/v1", "NAME_INVALID"},
		{"/v2/library/app%20/manifests/v1", "NAME_INVALID"},
		{"/v2/library/" + strings.Repeat("a", 256) + "/manifests/v1", "NAME_INVALID"},
		{"/v2/" + strings.Repeat("a/", 200) + "app/manifests/v1", "NAME_INVALID"},
		{"/v2/library/app/manifests/..", "NAME_INVALID"}, // refused as a path
		{"/v2/library/app/manifests/-v1", "TAG_INVALID"},
		{"/v2/library/app/manifests/v1%00", "TAG_INVALID"},
		{"/v2/library/app/manifests/" + strings.Repeat("t", 129), "TAG_INVALID"},
		{"/v2/library/app/manifests/sha256:../../x", "NAME_INVALID"},      // refused as a path
		{"/v2/library/app/blobs/sha256:../../etc/passwd", "NAME_INVALID"}, // refused as a path
		{"/v2/library/app/blobs/sha256:" + hex64[:63], "DIGEST_INVALID"},
		{"/v2/library/app/blobs/sha256:" + strings.ToUpper(hex64), "DIGEST_INVALID"},
		{"/v2/library/app/blobs/sha256:" + hex64 + "00", "DIGEST_INVALID"},
		{"/v2/library/app/blobs/sha256:" + strings.Repeat("a", 64<<10), "DIGEST_INVALID"},
		{"/v2/library/app/blobs/sha256%3A" + hex64, "NAME_INVALID"}, // refused as a path
		{"/v2/library/app/blobs/md5:" + hex64[:32], "DIGEST_INVALID"},
		{"/v2/library/app/blobs/sha512:" + strings.Repeat("a", 128), "DIGEST_INVALID"},
		{"/v2/library/app/blobs/" + hex64, "DIGEST_INVALID"},
		{"/v2/library/app/manifests/sha256:" + hex64[:10], "DIGEST_INVALID"},
	} {
		status, _, body := p.get(t, http.MethodGet, c.path)
		if status != http.StatusBadRequest || !strings.Contains(string(body), `"code":"`+c.code+`"`) {
			t.Errorf("GET %.120s: %d %.200s, want 400 %s", c.path, status, body, c.code)
		}
	}
	if n := w.reg.Requests("", "") - asked; n != 0 {
		t.Errorf("%d upstream requests for hostile names", n)
	}
	if hits := w.Server.Hits(); len(hits) != 0 {
		t.Errorf("the Notary server was asked about hostile names: %v", hits)
	}
	if after := files(t, dataDir); !slicesEqual(before, after) {
		t.Errorf("hostile names wrote to the data directory:\nbefore %q\nafter  %q", before, after)
	}
}

func slicesEqual(a, b []string) bool {
	return strings.Join(a, "\n") == strings.Join(b, "\n")
}

// TestHugeManifestRefusedBoundedMemory (T30): a tag signed with a length
// over limits.manifest_bytes is refused (invalid_manifest, naming the
// limit) without asking the upstream; a tag signed at the limit whose
// upstream streams 200 MB is refused after the signed length, and the
// heap grows by far less than 64 MB.
func TestHugeManifestRefusedBoundedMemory(t *testing.T) {
	w := newTUFWorld(t)
	over := digest.FromString("a manifest over the limit")
	w.addDigest(t, testenv.Releases, "over", v1.Hash{Algorithm: "sha256", Hex: over.Encoded()}, 200<<20)
	atLimit := digest.FromString("a manifest at the limit")
	w.addDigest(t, testenv.Releases, "at-limit", v1.Hash{Algorithm: "sha256", Hex: atLimit.Encoded()}, 4<<20)
	w.Publish(t)
	var sent atomic.Int64
	w.serveManifest(atLimit.String(), func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Content-Length", strconv.Itoa(200<<20))
		chunk := bytes.Repeat([]byte(" "), 64<<10)
		for sent.Load() < 200<<20 {
			if _, err := rw.Write(chunk); err != nil {
				return
			}
			sent.Add(int64(len(chunk)))
		}
	})
	p := w.start(t, "", "")

	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/over")
	wantRefusal(t, status, body, proxy.ReasonInvalidManifest)
	if !strings.Contains(string(body), "limits.manifest_bytes") {
		t.Errorf("refusal %s does not name limits.manifest_bytes", body)
	}
	if n := w.reg.Requests("", "/manifests/"+over.String()); n != 0 {
		t.Errorf("the upstream was asked %d times for a manifest signed over the limit", n)
	}

	peak := watchHeap(t)
	status, _, body = p.get(t, http.MethodGet, "/v2/library/app/manifests/at-limit")
	grew := peak()
	wantRefusal(t, status, body, proxy.ReasonDigestMismatch)
	t.Logf("a 200 MB manifest: %d MiB sent before the proxy hung up, heap grew by %d MiB at most", sent.Load()>>20, grew>>20)
	if grew > 64<<20 {
		t.Errorf("heap grew by %d MiB", grew>>20)
	}
}

// TestAmbiguousSignedManifestRefused (T31): a signed digest whose document
// has both layers and manifests is refused as invalid_manifest and not
// stored; a signed manifest that the upstream sends with another
// Content-Type is served with the media type its verified bytes declare.
func TestAmbiguousSignedManifestRefused(t *testing.T) {
	w := newTUFWorld(t)
	raw, err := w.img.RawManifest()
	must(t, err)
	layer := firstLayer(t, w.img)
	ambiguous := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":2,"digest":"%s"},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":1,"digest":"%s"}],`+
		`"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":%d,"digest":"%s"}]}`,
		digest.FromString("{}"), layer, len(raw), w.signed))
	ad := digest.FromBytes(ambiguous)
	w.addDigest(t, testenv.Releases, "ambiguous", v1.Hash{Algorithm: "sha256", Hex: ad.Encoded()}, int64(len(ambiguous)))
	w.Publish(t)
	w.reg.SetFault(func(rw http.ResponseWriter, r *http.Request) bool {
		switch {
		case strings.HasSuffix(r.URL.Path, "/manifests/"+ad.String()):
			rw.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			_, _ = rw.Write(ambiguous)
		case strings.HasSuffix(r.URL.Path, "/manifests/"+w.signed.String()) && r.Method == http.MethodGet:
			rw.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
			rw.Header().Set("Docker-Content-Digest", w.signed.String())
			_, _ = rw.Write(raw)
		default:
			return false
		}
		return true
	})
	p := w.start(t, "", "")
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/ambiguous")
	wantRefusal(t, status, body, proxy.ReasonInvalidManifest)
	if !strings.Contains(string(body), "ambiguous") {
		t.Errorf("refusal %s does not say the manifest is ambiguous", body)
	}
	if blobs := p.storedBlobs(t); len(blobs) != 0 {
		t.Fatalf("stored %v", blobs)
	}
	status, h, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1")
	if status != http.StatusOK || !bytes.Equal(body, raw) {
		t.Fatalf("the signed manifest sent with an index Content-Type: %d", status)
	}
	if got, want := h.Get("Content-Type"), "application/vnd.docker.distribution.manifest.v2+json"; got != want {
		t.Fatalf("served with Content-Type %s, want the document's own %s", got, want)
	}
}

// TestColdBlobHeadersBeforeBody (T34): the upstream sends a cold layer's
// headers and then holds its body back. The client has trustproxy's
// headers while the upstream still holds the body (so a client's header
// timeout, 30 s in containerd, does not depend on how long the blob takes),
// and then the whole, verified layer.
func TestColdBlobHeadersBeforeBody(t *testing.T) {
	w := newTUFWorld(t)
	img := testenv.Image(t, "cold layer", 1, 4<<20) // spooled: over the 1 MiB held in memory
	w.signImage(t, testenv.Releases, "cold", img)
	w.Publish(t)
	layers, err := img.Layers()
	must(t, err)
	rc, err := layers[0].Compressed()
	must(t, err)
	blob, err := io.ReadAll(rc)
	must(t, err)
	layer := firstLayer(t, img)
	release := make(chan struct{})
	var released atomic.Bool
	var releaseOnce sync.Once
	doRelease := func() {
		releaseOnce.Do(func() {
			released.Store(true)
			close(release)
		})
	}
	w.reg.SetFault(func(rw http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+layer.String()) {
			return false
		}
		rw.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		rw.Header().Set("Docker-Content-Digest", layer.String())
		rw.WriteHeader(http.StatusOK)
		rw.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return true
		}
		_, _ = rw.Write(blob)
		return true
	})
	p := w.start(t, "", "")
	if status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/cold"); status != http.StatusOK {
		t.Fatalf("manifest: %d %s", status, body)
	}
	timer := time.AfterFunc(30*time.Second, doRelease) // the test fails if the headers wait for this
	defer timer.Stop()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, p.srv.URL+"/v2/library/app/blobs/"+layer.String(), nil)
	resp, err := http.DefaultClient.Do(req)
	must(t, err)
	defer resp.Body.Close()
	if released.Load() {
		t.Fatal("trustproxy sent its headers only once the upstream sent the body")
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Length") != strconv.Itoa(len(blob)) {
		t.Fatalf("headers: %d, Content-Length %q", resp.StatusCode, resp.Header.Get("Content-Length"))
	}
	doRelease()
	got, err := io.ReadAll(resp.Body)
	must(t, err)
	if digest.FromBytes(got).String() != layer.String() {
		t.Fatalf("body of %d bytes is not the layer", len(got))
	}
}

// TestEvictedBlobRefetched (T36): a verified layer is removed from storage
// behind trustproxy's back (an eviction, an operator), with and without
// Redis, where distribution's blob descriptor cache still records it. The
// next GET fetches it from the upstream again and serves the whole layer;
// with the upstream gone, it is not a 200 with an empty or short body.
func TestEvictedBlobRefetched(t *testing.T) {
	for _, withRedis := range []bool{false, true} {
		t.Run(map[bool]string{false: "storage only", true: "redis"}[withRedis], func(t *testing.T) {
			w := newTUFWorld(t)
			storage := t.TempDir()
			extra := fmt.Sprintf("storage: {filesystem: {rootdirectory: %s}}\n", storage)
			if withRedis {
				d := testenv.NewDeployment(t, testenv.StartRedis(t, ""))
				storage, extra = d.Storage, d.YAML()
			}
			p := start(t, w.config(t, t.TempDir(), "", extra))
			p.mustPull(t, "library/app:v1")
			layer := firstLayer(t, w.img)
			file := filepath.Join(storage, "docker", "registry", "v2", "blobs", "sha256", layer.Hex[:2], layer.Hex, "data")
			must(t, os.Remove(file))
			gets := w.reg.BlobGets(layer)

			status, n, err := getBlob(t, p, layer)
			if status != http.StatusOK || err != nil {
				t.Fatalf("GET of the evicted layer: %d, %d bytes, %v", status, n, err)
			}
			if n := w.reg.BlobGets(layer) - gets; n != 1 {
				t.Fatalf("the evicted layer was fetched %d times from the upstream, want 1", n)
			}
			if _, err := os.Stat(file); err != nil {
				t.Fatalf("the refetched layer was not stored again: %v", err)
			}
			must(t, os.Remove(file))
			w.reg.Stop()
			if status, n, err := getBlob(t, p, layer); status == http.StatusOK && err == nil {
				t.Fatalf("evicted layer with the upstream gone: a complete 200 of %d bytes", n)
			}
		})
	}
}

// getBlob GETs layer from p and reads the whole body: the status, the
// bytes read, and nil only if they are the layer.
func getBlob(t *testing.T, p *instance, layer v1.Hash) (int, int, error) {
	t.Helper()
	resp, err := http.Get(p.srv.URL + "/v2/library/app/blobs/" + layer.String())
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && digest.FromBytes(body).String() != layer.String() {
		err = fmt.Errorf("the body (Content-Length %q) hashes to %s", resp.Header.Get("Content-Length"), digest.FromBytes(body))
	}
	return resp.StatusCode, len(body), err
}

// TestCredentialsNeverLogged (T42): trustproxy pulls with upstream and
// Notary credentials, then both start refusing them. Neither password,
// nor the Basic authorization built from it, appears in the debug log, in
// a metric or in any error a client is sent.
func TestCredentialsNeverLogged(t *testing.T) {
	w := newTUFWorld(t)
	sum := sha256.Sum256([]byte(t.Name()))
	upPass, notaryPass := "up-"+hex.EncodeToString(sum[:8]), "notary-"+hex.EncodeToString(sum[8:16])
	img := testenv.Image(t, "v2 with credentials", 1, 1024)
	w.signImage(t, testenv.Releases, "v2", img)
	w.Publish(t)
	var refuse atomic.Bool
	w.reg.SetFault(func(rw http.ResponseWriter, r *http.Request) bool {
		if u, pw, ok := r.BasicAuth(); ok && u == "mirror" && pw == upPass && !refuse.Load() {
			return false
		}
		rw.Header().Set("WWW-Authenticate", `Basic realm="registry"`)
		rw.WriteHeader(http.StatusUnauthorized)
		_, _ = rw.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
		return true
	})
	w.Server.SetOverride(func(rw http.ResponseWriter, r *http.Request, role string) bool {
		if u, pw, ok := r.BasicAuth(); ok && u == "reader" && pw == notaryPass && !refuse.Load() {
			return false
		}
		rw.Header().Set("WWW-Authenticate", `Basic realm="notary"`)
		http.Error(rw, "unauthorized", http.StatusUnauthorized)
		return true
	})
	cfg := strings.Replace(w.config(t, t.TempDir(), "", ""),
		"notary: {url: "+w.Server.URL+"}",
		"username: mirror, password: "+upPass+", notary: {url: "+w.Server.URL+", username: reader, password: "+notaryPass+"}", 1)
	p := start(t, cfg)
	p.mustPull(t, "library/app:v1")

	var bodies []string
	refuse.Store(true)
	for _, path := range []string{"/v2/library/app/manifests/v2", "/v2/library/app/blobs/" + firstLayer(t, img).String(),
		"/v2/library/app/manifests/v1", "/v2/library/other/manifests/v1"} {
		status, h, body := p.get(t, http.MethodGet, path)
		bodies = append(bodies, fmt.Sprintf("%s %d %v %s", path, status, h, body))
	}
	mfs, err := p.metrics.Gather()
	must(t, err)
	everything := p.logs.String() + strings.Join(bodies, "\n") + fmt.Sprint(mfs)
	for _, secret := range []string{upPass, notaryPass,
		base64.StdEncoding.EncodeToString([]byte("mirror:" + upPass)), base64.StdEncoding.EncodeToString([]byte("reader:" + notaryPass))} {
		if strings.Contains(everything, secret) {
			t.Fatalf("%q appears in the log, a metric or a client's error:\n%s", secret, strings.Join(bodies, "\n"))
		}
	}
	t.Logf("clients were told:\n%s", strings.Join(bodies, "\n"))
}

// TestCorruptManifestLeavesNothingShared (T3): two replicas share Redis and
// storage; the upstream flips a byte of the signed manifest. Replica A
// refuses it (digest_mismatch) and records nothing: neither A nor B,
// asked for a layer it names, serves or fetches the layer, and nothing is
// stored. Once the upstream is right again, both serve.
func TestCorruptManifestLeavesNothingShared(t *testing.T) {
	w := newTUFWorld(t)
	replica, d := w.replicas(t, time.Nanosecond)
	a, b := replica(), replica()
	w.reg.SetFault(w.reg.CorruptBody(testenv.GetPath("/manifests/" + w.signed.String())))
	status, body := a.manifestV1(t)
	wantRefusal(t, status, body, proxy.ReasonDigestMismatch)
	layer := firstLayer(t, w.img)
	for name, p := range map[string]*instance{"A": a, "B": b} {
		if status, _, body := p.get(t, http.MethodGet, "/v2/library/app/blobs/"+layer.String()); status == http.StatusOK {
			t.Fatalf("replica %s served a layer of a manifest that did not verify: %.200s", name, body)
		}
	}
	if n := w.reg.BlobGets(layer); n != 0 {
		t.Fatalf("the layer was fetched %d times", n)
	}
	if blobs, _ := filepath.Glob(filepath.Join(d.Storage, "docker", "registry", "v2", "blobs", "sha256", "*", "*", "data")); len(blobs) != 0 {
		t.Fatalf("stored %v", blobs)
	}
	w.reg.SetFault(nil)
	for _, p := range []*instance{a, b} {
		if got := p.mustPull(t, "library/app:v1"); got != w.signed {
			t.Fatalf("served %s", got)
		}
	}
}

// TestRedirectedBlobGetsNoCredentialsOrCookies (T27): the upstream wants
// Basic credentials, sets a cookie, and redirects a layer (307) to a
// storage host listed in redirect_hosts: the storage host gets neither
// the credentials nor the cookie, and the layer is served. A redirect
// loop is cut after a few hops and the client told why.
func TestRedirectedBlobGetsNoCredentialsOrCookies(t *testing.T) {
	w := newTUFWorld(t)
	loopImg := testenv.Image(t, "redirect loop", 1, 1024)
	w.signImage(t, testenv.Releases, "loop", loopImg)
	w.Publish(t)
	layer, loopLayer := firstLayer(t, w.img), firstLayer(t, loopImg)
	layers, err := w.img.Layers()
	must(t, err)
	rc, err := layers[0].Compressed()
	must(t, err)
	blob, err := io.ReadAll(rc)
	must(t, err)
	var hops atomic.Int64
	var cookies atomic.Int64
	storageHost := newCapture(t, func(rw http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Cookie") != "" {
			cookies.Add(1)
		}
		if r.URL.Path == "/loop" {
			hops.Add(1)
			http.Redirect(rw, r, "/loop", http.StatusTemporaryRedirect)
			return
		}
		_, _ = rw.Write(blob)
	})
	w.reg.SetFault(func(rw http.ResponseWriter, r *http.Request) bool {
		http.SetCookie(rw, &http.Cookie{Name: "session", Value: "upstream-session-secret"})
		if u, pw, ok := r.BasicAuth(); !ok || u != "mirror" || pw != "s3cret" {
			rw.Header().Set("WWW-Authenticate", `Basic realm="registry"`)
			rw.WriteHeader(http.StatusUnauthorized)
			return true
		}
		switch {
		case strings.HasSuffix(r.URL.Path, "/blobs/"+layer.String()):
			http.Redirect(rw, r, storageHost.URL+"/blob", http.StatusTemporaryRedirect)
		case strings.HasSuffix(r.URL.Path, "/blobs/"+loopLayer.String()):
			http.Redirect(rw, r, storageHost.URL+"/loop", http.StatusTemporaryRedirect)
		default:
			return false
		}
		return true
	})
	host := strings.TrimPrefix(storageHost.URL, "http://")
	cfg := strings.Replace(w.config(t, t.TempDir(), "", ""), "notary: {url: "+w.Server.URL+"}",
		"username: mirror, password: s3cret, redirect_hosts: ["+host+"], notary: {url: "+w.Server.URL+"}", 1)
	p := start(t, cfg)
	if got := p.mustPull(t, "library/app:v1"); got != w.signed {
		t.Fatalf("served %s", got)
	}
	for _, auth := range storageHost.authHeaders() {
		if auth != "" {
			t.Fatalf("the storage host was sent Authorization %q", auth)
		}
	}
	if n := cookies.Load(); n != 0 {
		t.Fatalf("the storage host was sent the upstream's cookie %d times", n)
	}

	if status, _, body := p.get(t, http.MethodGet, "/v2/library/app/manifests/loop"); status != http.StatusOK {
		t.Fatalf("manifest: %d %s", status, body)
	}
	status, _, body := p.get(t, http.MethodGet, "/v2/library/app/blobs/"+loopLayer.String())
	wantError(t, status, body, http.StatusServiceUnavailable, "UNAVAILABLE", "redirects")
	t.Logf("a redirect loop: %d hops followed; the client was told %s", hops.Load(), body)
	if n := hops.Load(); n > 10 {
		t.Fatalf("%d hops of a redirect loop followed", n)
	}
}
