package scan

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

func TestCredentials(t *testing.T) {
	c := newTestCredentials(t)
	now := time.Now()
	c.now = func() time.Time { return now }
	g := Grant{Repository: "docker.io/library/app", Digest: digest.FromString("m"), Expires: now.Add(time.Minute), Report: now.Add(-time.Hour).UTC()}
	v := c.Mint(g)
	got, ok, err := c.Check(v)
	if !ok || err != nil || got.Repository != g.Repository || got.Digest != g.Digest || !got.Report.Equal(g.Report) {
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
		"forged":       forged,
		"another key":  newTestCredentials(t).Mint(g),
		"no signature": "Bearer " + credentialPrefix + strings.Split(payload, ".")[0],
		"too long":     v + strings.Repeat("A", maxCredential),
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

func newTestCredentials(t testing.TB) *Credentials {
	key, err := LoadKey(filepath.Join(t.TempDir(), "key"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCredentials(key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The key file is made once and read back by every process that shares it.
func TestLoadKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "key")
	a, err := LoadKey(path)
	if err != nil || len(a) != 32 {
		t.Fatalf("LoadKey: %d bytes, %v", len(a), err)
	}
	b, err := LoadKey(path)
	if err != nil || string(a) != string(b) {
		t.Fatalf("LoadKey again: a different key (%v)", err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", fi.Mode())
	}
	if err := os.WriteFile(path, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKey(path); err == nil {
		t.Fatal("a short key was accepted")
	}
}

func FuzzCheckCredential(f *testing.F) {
	c := newTestCredentials(f)
	f.Add(c.Mint(Grant{Repository: "docker.io/library/app", Digest: digest.FromString("m"), Expires: time.Now().Add(time.Hour)}))
	f.Add("Bearer tpscan.e30.AAAA")
	f.Fuzz(func(t *testing.T, s string) {
		g, ok, err := c.Check(s)
		if ok && err == nil && g.Digest.Validate() != nil {
			t.Fatalf("accepted a grant with an invalid digest: %+v", g)
		}
	})
}
