package gun

import (
	"testing"

	"github.com/distribution/reference"
)

// TestStorageName: every upstream spelling checkHost accepts gives a storage
// name that distribution takes as a repository name and whose path its
// drivers accept, and no two upstreams share one.
func TestStorageName(t *testing.T) {
	seen := map[string]string{}
	for _, tc := range []struct{ upstream, want string }{
		{"docker.io", "docker.io/team/app"},
		{"registry.example.com:5443", "registry.example.com_5443/team/app"},
		{"127.0.0.1:5000", "127.0.0.1_5000/team/app"},
		{"127.0.0.1", "127.0.0.1/team/app"},
		{"[::1]:5000", "ipv6_00000000000000000000000000000001_5000/team/app"},
		{"[fd00::1]", "ipv6_fd000000000000000000000000000001/team/app"},
		{"localhost:5000", "localhost_5000/team/app"},
	} {
		n, err := New(tc.upstream, "team/app")
		if err != nil {
			t.Fatalf("New(%q): %v", tc.upstream, err)
		}
		got := n.StorageName()
		if got != tc.want {
			t.Errorf("StorageName of %s = %q, want %q", n, got, tc.want)
		}
		if _, err := reference.WithName(got); err != nil {
			t.Errorf("storage name %q is not a repository name: %v", got, err)
		}
		for _, r := range got {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-' || r == '/') {
				t.Errorf("storage name %q holds %q, which a storage path cannot", got, r)
			}
		}
		if other, dup := seen[got]; dup {
			t.Errorf("%s and %s share the storage name %q", tc.upstream, other, got)
		}
		seen[got] = tc.upstream
	}
}
