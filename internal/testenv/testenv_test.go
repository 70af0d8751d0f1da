package testenv

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"github.com/theupdateframework/notary/client"
	"github.com/theupdateframework/notary/trustpinning"
	"github.com/theupdateframework/notary/tuf/data"
)

func TestImageIsDeterministicDockerSchema2(t *testing.T) {
	a := Image(t, "a", 2, 1000)
	if err := validate.Image(a); err != nil {
		t.Fatalf("validate: %v", err)
	}
	if mt, _ := a.MediaType(); mt != types.DockerManifestSchema2 {
		t.Errorf("manifest media type %s", mt)
	}
	m, err := a.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.Config.MediaType != types.DockerConfigJSON || len(m.Layers) != 2 || m.Layers[0].MediaType != types.DockerLayer {
		t.Errorf("manifest %+v", m)
	}
	cf, err := a.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" || len(cf.RootFS.DiffIDs) != 2 || len(cf.Config.Cmd) == 0 {
		t.Errorf("config %+v", cf)
	}

	if got, want := digestOf(t, Image(t, "a", 2, 1000)), digestOf(t, a); got != want {
		t.Errorf("same seed: digest %s, then %s", want, got)
	}
	if digestOf(t, Image(t, "b", 2, 1000)) == digestOf(t, a) {
		t.Error("seeds a and b give the same digest")
	}

	idx := Index(t, a, ImageFor(t, "a", "linux/arm64/v8", 1, 10))
	if err := validate.Index(idx); err != nil {
		t.Fatalf("validate index: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if im.MediaType != types.DockerManifestList || len(im.Manifests) != 2 ||
		im.Manifests[0].Platform.String() != "linux/amd64" || im.Manifests[1].Platform.String() != "linux/arm64/v8" {
		t.Errorf("index %+v", im)
	}
}

func digestOf(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestRegistryCountsFaultsAndStops(t *testing.T) {
	reg := NewRegistry(t)
	img := Image(t, "reg", 1, 4096)
	dgst := reg.Push(t, "library/app", "v1", img)
	if dgst != digestOf(t, img) {
		t.Fatalf("push returned %s, image is %s", dgst, digestOf(t, img))
	}
	idx := Index(t, img, ImageFor(t, "reg", "linux/arm64", 1, 10))
	reg.PushIndex(t, "library/multi", "v1", idx)

	m, _ := img.Manifest()
	layer := m.Layers[0].Digest
	manifest := get(t, reg.URL()+"/v2/library/app/manifests/"+dgst.String())
	if sha(manifest) != dgst.Hex || reg.ManifestGets(dgst) != 1 {
		t.Fatalf("manifest sha256:%s, %d GETs", sha(manifest), reg.ManifestGets(dgst))
	}
	blobURL := reg.URL() + "/v2/library/app/blobs/" + layer.String()
	if sha(get(t, blobURL)) != layer.Hex || reg.BlobGets(layer) != 1 {
		t.Fatalf("blob GETs %d", reg.BlobGets(layer))
	}

	reg.SetFault(reg.CorruptBody(GetPath("/blobs/" + layer.String())))
	bad := get(t, blobURL)
	if int64(len(bad)) != m.Layers[0].Size || sha(bad) == layer.Hex {
		t.Errorf("corrupt blob: %d bytes (want %d), sha256:%s", len(bad), m.Layers[0].Size, sha(bad))
	}
	if sha(get(t, reg.URL()+"/v2/library/app/manifests/"+dgst.String())) != dgst.Hex {
		t.Error("CorruptBody changed a request it does not match")
	}

	reg.SetFault(reg.Truncate(GetPath("/blobs/" + layer.String())))
	if resp, err := http.Get(blobURL); err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Error("truncated blob read without error")
		}
	}

	reg.SetFault(Delay(50*time.Millisecond, GetPath("/manifests/v1")))
	start := time.Now()
	get(t, reg.URL()+"/v2/library/app/manifests/v1")
	if time.Since(start) < 50*time.Millisecond {
		t.Error("Delay did not delay")
	}
	reg.SetFault(nil)
	if n := reg.BlobGets(layer); n != 3 {
		t.Errorf("BlobGets = %d, want 3", n)
	}
	// Whole, corrupt (as long), half: the bytes sent, cut bodies included.
	if n, size := reg.BlobBytes(), m.Layers[0].Size; n != 2*size+size/2 {
		t.Errorf("BlobBytes = %d, want %d for a layer of %d bytes sent whole twice and half once", n, 2*size+size/2, size)
	}

	reg.Stop()
	if _, err := http.Get(blobURL); err == nil {
		t.Error("GET after Stop succeeded")
	}
}

func get(t *testing.T, url string) []byte {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	req.Header.Set("Accept", string(types.DockerManifestSchema2)+", "+string(types.DockerManifestList))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return b
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestNotarySignRecordReplayDown(t *testing.T) {
	start := time.Now()
	env := New(t)
	t.Logf("registry and notary-server up in %s", time.Since(start).Round(time.Millisecond))
	reg, n := env.Registry, env.Notary

	img := Image(t, "app-v1", 1, 1024)
	dgst := reg.Push(t, "library/app", "v1", img)
	raw, _ := img.RawManifest()

	const gun = "docker.io/library/app"
	rootID := n.Init(t, gun)
	releases := NewKey(t, "releases")
	n.AddDelegation(t, gun, Releases, releases)
	n.Sign(t, gun, "v1", dgst, int64(len(raw)), Releases)
	t.Logf("init, delegation, sign: %s", time.Since(start).Round(time.Millisecond))

	pin := trustpinning.TrustPinConfig{Certs: map[string][]string{gun: {rootID}}}
	tgt := lookup(t, n, gun, "v1", pin, Releases)
	if hex.EncodeToString(tgt.Hashes["sha256"]) != dgst.Hex || tgt.Length != int64(len(raw)) || tgt.Role != Releases {
		t.Fatalf("v1 = %x, %d bytes, in %s; want %s, %d bytes, in %s",
			tgt.Hashes["sha256"], tgt.Length, tgt.Role, dgst, len(raw), Releases)
	}
	if !hasDelegationKey(t, n, gun, Releases, releases.ID) {
		t.Errorf("targets.json does not list key %s (Key.ID) for %s", releases.ID, Releases)
	}
	if _, err := tryLookup(t, n, gun, "v1", trustpinning.TrustPinConfig{Certs: map[string][]string{gun: {releases.ID}}}); err == nil {
		t.Error("lookup pinned to a wrong root certificate ID succeeded")
	}

	old := n.Record(t, gun)
	img2 := Image(t, "app-v2", 1, 1024)
	reg.Push(t, "library/app", "v2", img2)
	n.SignImage(t, gun, "v2", img2, Targets)
	if got := lookup(t, n, gun, "v2", pin); got.Role != Targets {
		t.Errorf("v2 signed in %s, want %s", got.Role, Targets)
	}
	live := timestampVersion(t, n, gun)
	if live <= old.Version("timestamp") {
		t.Fatalf("live timestamp version %d, recorded %d: signing v2 did not advance it", live, old.Version("timestamp"))
	}

	n.Replay(gun, old)
	if got := timestampVersion(t, n, gun); got != old.Version("timestamp") {
		t.Errorf("replaying: timestamp version %d, want recorded %d (live %d)", got, old.Version("timestamp"), live)
	}
	lookup(t, n, gun, "v1", pin) // the old metadata is complete and valid on its own
	if _, err := tryLookup(t, n, gun, "v2", pin); err == nil {
		t.Error("replaying old metadata, v2 is still found")
	}
	n.Live(gun)
	if got := timestampVersion(t, n, gun); got != live {
		t.Errorf("live again: timestamp version %d, want %d", got, live)
	}

	before := n.Requests("/timestamp.json")
	n.SetDown(true)
	if _, err := frontClient(n).Get(n.URL() + "/_notary_server/health"); err == nil {
		t.Error("down: health answered")
	}
	if _, err := tryLookup(t, n, gun, "v1", pin); err == nil {
		t.Error("down: lookup with an empty cache succeeded")
	}
	n.SetDown(false)
	lookup(t, n, gun, "v1", pin)
	if n.Requests("/timestamp.json") <= before {
		t.Error("front did not count timestamp requests")
	}
	t.Logf("total %s", time.Since(start).Round(time.Millisecond))
}

func frontClient(n *Notary) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: n.CAPool()}}}
}

// tryLookup reads tag from the front with the notary client library and a fresh cache.
func tryLookup(t *testing.T, n *Notary, gun, tag string, pin trustpinning.TrustPinConfig, roles ...data.RoleName) (*client.TargetWithRole, error) {
	t.Helper()
	rt := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: n.CAPool()}}
	defer rt.CloseIdleConnections()
	repo, err := client.NewFileCachedRepository(t.TempDir(), data.GUN(gun), n.URL(), rt, nil, pin)
	if err != nil {
		t.Fatalf("notary repository %s: %v", gun, err)
	}
	return repo.GetTargetByName(tag, roles...)
}

func lookup(t *testing.T, n *Notary, gun, tag string, pin trustpinning.TrustPinConfig, roles ...data.RoleName) *client.TargetWithRole {
	t.Helper()
	tgt, err := tryLookup(t, n, gun, tag, pin, roles...)
	if err != nil {
		t.Fatalf("look up %s:%s: %v", gun, tag, err)
	}
	return tgt
}

func timestampVersion(t *testing.T, n *Notary, gun string) int {
	t.Helper()
	resp, err := frontClient(n).Get(n.URL() + "/v2/" + gun + "/_trust/tuf/timestamp.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	v, err := metaVersion(b)
	if err != nil {
		t.Fatalf("timestamp.json: %v: %s", err, b)
	}
	return v
}

func hasDelegationKey(t *testing.T, n *Notary, gun, role, keyID string) bool {
	t.Helper()
	var targets struct {
		Signed struct {
			Delegations struct {
				Roles []struct {
					Name   string   `json:"name"`
					KeyIDs []string `json:"keyids"`
				} `json:"roles"`
			} `json:"delegations"`
		} `json:"signed"`
	}
	if err := json.Unmarshal(n.fetchMeta(t, gun, "targets.json"), &targets); err != nil {
		t.Fatal(err)
	}
	for _, r := range targets.Signed.Delegations.Roles {
		if r.Name == role {
			return strings.Contains(strings.Join(r.KeyIDs, " "), keyID)
		}
	}
	return false
}
