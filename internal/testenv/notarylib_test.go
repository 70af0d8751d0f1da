package testenv

import (
	"bytes"
	"crypto/tls"
	"encoding/hex"
	"net/http"
	"slices"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/theupdateframework/notary/client"
	"github.com/theupdateframework/notary/trustpinning"
	"github.com/theupdateframework/notary/tuf/data"
)

func TestPublishWithLibrary(t *testing.T) {
	n := StartNotary(t)
	alice := NewKey(t, "alice")
	target := func(s string) Target {
		h, size, err := v1.SHA256(bytes.NewReader([]byte(s)))
		if err != nil {
			t.Fatal(err)
		}
		return Target{Digest: h, Size: size}
	}
	signed := map[string]map[string]Target{
		"docker.io/library/a": {"v1": target("manifest a")},
		"docker.io/library/b": {"latest": target("manifest of b")},
		"docker.io/library/c": {"v1": target("c v1"), "v2": target("c version 2")},
	}
	ids := map[string]string{}

	// Parallel subtests, each with its own t to fail; the group returns when both are done.
	concurrent := []string{"docker.io/library/a", "docker.io/library/b"}
	got := make([]string, len(concurrent))
	start := time.Now()
	t.Run("concurrent", func(t *testing.T) {
		for i, gun := range concurrent {
			t.Run(gun, func(t *testing.T) {
				t.Parallel()
				got[i] = n.Publish(t, gun, alice, signed[gun])
			})
		}
	})
	for i, gun := range concurrent {
		ids[gun] = got[i]
	}
	t.Logf("two concurrent Publish calls: %s", time.Since(start).Round(time.Millisecond))
	if t.Failed() {
		t.FailNow()
	}
	start = time.Now()
	ids["docker.io/library/c"] = n.Publish(t, "docker.io/library/c", alice, signed["docker.io/library/c"])
	t.Logf("one Publish (root key already made): %s", time.Since(start).Round(time.Millisecond))

	if ids["docker.io/library/a"] == ids["docker.io/library/b"] {
		t.Errorf("a and b share root certificate ID %s, want one per GUN", ids["docker.io/library/a"])
	}

	rt := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: n.CAPool()}}
	defer rt.CloseIdleConnections()
	for gun, tags := range signed {
		pin := trustpinning.TrustPinConfig{Certs: map[string][]string{gun: {ids[gun]}}, DisableTOFU: true}
		repo, err := client.NewFileCachedRepository(t.TempDir(), data.GUN(gun), n.URL(), rt, nil, pin)
		if err != nil {
			t.Fatalf("notary repository %s: %v", gun, err)
		}
		for tag, want := range tags {
			got, err := repo.GetTargetByName(tag, data.RoleName(Releases))
			if err != nil {
				t.Errorf("look up %s:%s: %v", gun, tag, err)
				continue
			}
			if h := hex.EncodeToString(got.Hashes["sha256"]); h != want.Digest.Hex || got.Length != want.Size {
				t.Errorf("%s:%s: sha256 %s length %d, want %s %d", gun, tag, h, got.Length, want.Digest.Hex, want.Size)
			}
			if got.Role != data.RoleName(Releases) {
				t.Errorf("%s:%s: signed in role %s, want %s", gun, tag, got.Role, Releases)
			}
		}
		roles, err := repo.GetDelegationRoles()
		if err != nil {
			t.Fatalf("delegations of %s: %v", gun, err)
		}
		// The library lists delegation keys by canonical ID: over the public key alone.
		if len(roles) != 1 || roles[0].Name != data.RoleName(Releases) || !slices.Equal(roles[0].KeyIDs, []string{alice.PublicID}) ||
			!slices.Equal(roles[0].Paths, []string{""}) {
			t.Errorf("delegations of %s: %+v, want %s held by %s (%s), all paths", gun, roles, Releases, alice.Name, alice.PublicID)
		}
	}
}
