package scan

import (
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

func TestCredentials(t *testing.T) {
	c := NewCredentials()
	now := time.Now()
	c.now = func() time.Time { return now }
	g := Grant{Repository: "docker.io/library/app", Digest: digest.FromString("m"), Expires: now.Add(time.Minute)}
	v := c.Mint(g)
	got, ok, err := c.Check(v)
	if !ok || err != nil || got.Repository != g.Repository || got.Digest != g.Digest {
		t.Fatalf("Check(Mint(g)) = %+v %v %v", got, ok, err)
	}
	for _, other := range []string{"", "Basic dXNlcjpwdw==", "Bearer some.jwt.token"} {
		if _, ok, err := c.Check(other); ok || err != nil {
			t.Errorf("Check(%q): ok %v err %v, want not a scan credential", other, ok, err)
		}
	}
	payload := strings.TrimPrefix(v, "Bearer "+credentialPrefix)
	forged := "Bearer " + credentialPrefix + "A" + payload[1:] // one byte of the grant changed
	for name, bad := range map[string]string{
		"forged":          forged,
		"another process": NewCredentials().Mint(g),
		"no signature":    "Bearer " + credentialPrefix + strings.Split(payload, ".")[0],
		"too long":        v + strings.Repeat("A", maxCredential),
	} {
		if _, ok, err := c.Check(bad); !ok || err == nil {
			t.Errorf("%s: ok %v err %v, want a refused scan credential", name, ok, err)
		}
	}
	now = now.Add(2 * time.Minute)
	if _, ok, err := c.Check(v); !ok || err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired: ok %v err %v", ok, err)
	}
}

func FuzzCheckCredential(f *testing.F) {
	c := NewCredentials()
	f.Add(c.Mint(Grant{Repository: "docker.io/library/app", Digest: digest.FromString("m"), Expires: time.Now().Add(time.Hour)}))
	f.Add("Bearer tpscan.e30.AAAA")
	f.Fuzz(func(t *testing.T, s string) {
		g, ok, err := c.Check(s)
		if ok && err == nil && g.Digest.Validate() != nil {
			t.Fatalf("accepted a grant with an invalid digest: %+v", g)
		}
	})
}
