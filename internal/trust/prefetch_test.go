package trust

import (
	"fmt"
	"net/http"
	"path"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/theupdateframework/notary/tuf/data"

	"github.com/trustproxy/trustproxy/config"
)

// TestFirstUpdateFetchesRolesTogether: the first update of a GUN asks for
// timestamp, snapshot and targets at once after root, and for the
// delegation as soon as targets lists it; it sends no more requests than
// notary alone does (one per role).
func TestFirstUpdateFetchesRolesTogether(t *testing.T) {
	f := newFixture(t)
	f.delegate("targets/releases")
	f.tag("targets/releases", "v1", []byte("manifest v1"))
	f.publish()
	c := watchConcurrency(f, func(string) bool { return true })
	v, _ := newVerifier(t, f, tofu())
	snap, err := v.snapshot(t.Context(), testGUN)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := snap.Resolve("v1"); err != nil {
		t.Fatal(err)
	}
	if most, total := c.result(); most < 3 || total != 5 {
		t.Errorf("%d requests, at most %d at once; want 5 (root, timestamp, snapshot, targets, one delegation), timestamp, snapshot and targets together", total, most)
	}
}

// TestPrefetchedRoleUsedOnlyWhenItMatches: a server that answers the
// request by role name with an older, validly signed targets file (and the
// request by checksum with the current one) cannot make the update use the
// older file: it does not hash to the checksum the verified snapshot gives.
func TestPrefetchedRoleUsedOnlyWhenItMatches(t *testing.T) {
	f := newFixture(t)
	f.tag("targets", "v1", []byte("manifest v1"))
	f.publish()
	old := f.meta[data.CanonicalTargetsRole]
	f.tag("targets", "v2", []byte("manifest v2"))
	f.publish()
	byName := 0
	f.srv.SetOverride(func(w http.ResponseWriter, r *http.Request, role string) bool {
		if strings.HasSuffix(r.URL.Path, "/targets.json") {
			byName++
			w.Write(old)
			return true
		}
		return false
	})
	v, _ := newVerifier(t, f, tofu())
	snap, err := v.snapshot(t.Context(), testGUN)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := snap.Resolve("v2"); err != nil {
		t.Errorf("v2, signed in the current targets: %v", err)
	}
	if byName != 1 || f.srv.Count("targets") != 2 {
		t.Errorf("targets asked for %d times, %d of them by name; want the prefetch by name, then the file by checksum", f.srv.Count("targets"), byName)
	}
}

// FuzzDelegationNames: whatever a Notary server sends as a parent's
// targets, the names prefetched are clean delegations directly under that
// parent, never a consistent name, and parsing never panics.
func FuzzDelegationNames(f *testing.F) {
	f.Add([]byte(`{"signed":{"delegations":{"roles":[{"name":"targets/releases"},{"name":"targets/a.`+strings.Repeat("ab", 32)+`"},{"name":"root"},{"name":"targets/../../escape"},{"name":"targets/releases/x"}]}}}`), "targets")
	f.Add([]byte(`{"signed":{"delegations":{"roles":null}}}`), "targets/releases")
	f.Add([]byte(`[]`), "targets")
	f.Fuzz(func(t *testing.T, raw []byte, parent string) {
		for _, n := range delegationNames(raw, parent) {
			if !data.IsDelegation(data.RoleName(n)) || path.Dir(n) != parent || checksumTail.MatchString(n) {
				t.Fatalf("prefetch of %q under %q", n, parent)
			}
		}
	})
}

// TestRefusedRootPrefetchesNothing: a Notary server whose root is refused
// (pinned to another certificate) gets the one request for root, however
// many large delegations its targets would name: nothing is prefetched
// before root has loaded.
func TestRefusedRootPrefetchesNothing(t *testing.T) {
	f := newFixture(t)
	f.publish()
	var names []string
	for i := range 64 {
		names = append(names, fmt.Sprintf(`{"name":"targets/d%d"}`, i))
	}
	targets := []byte(`{"signed":{"delegations":{"roles":[` + strings.Join(names, ",") + `]}}}`)
	var mu sync.Mutex
	var asked []string
	f.srv.SetOverride(func(w http.ResponseWriter, r *http.Request, role string) bool {
		mu.Lock()
		asked = append(asked, role)
		mu.Unlock()
		if role == "targets" {
			w.Write(targets)
			return true
		}
		return false
	})
	v, _ := newVerifier(t, f, opts{pinning: config.Pinning{Certs: map[string][]string{testGUN: {strings.Repeat("ab", 32)}}}})
	_, err := v.snapshot(t.Context(), testGUN)
	wantReason(t, err, NotPinned)
	time.Sleep(100 * time.Millisecond) // time for any prefetch to arrive
	mu.Lock()
	defer mu.Unlock()
	if len(asked) != 1 || asked[0] != "root" {
		t.Errorf("a refused root led to requests for %v, want root only", asked)
	}
}

// TestSiblingDelegationsFetchedTogether: when notary asks for the first
// delegation of a verified targets file, the others it lists are asked for
// at the same time.
func TestSiblingDelegationsFetchedTogether(t *testing.T) {
	f := newFixture(t)
	for _, r := range []string{"targets/a", "targets/b", "targets/c"} {
		f.delegate(r)
		f.tag(r, "v1", []byte("manifest v1"))
	}
	f.publish()
	c := watchConcurrency(f, func(role string) bool { return strings.HasPrefix(role, "targets/") })
	v, _ := newVerifier(t, f, tofu())
	if _, err := v.snapshot(t.Context(), testGUN); err != nil {
		t.Fatal(err)
	}
	if most, delegations := c.result(); most < 3 || delegations != 3 {
		t.Errorf("3 delegations: %d requests, at most %d at once; want 3, all at once", delegations, most)
	}
}

// concurrency counts the requests for the roles it watches and the most in
// flight at once; each is answered 30 ms late, as by a server some way off.
type concurrency struct {
	mu                    sync.Mutex
	inFlight, most, total int
}

func watchConcurrency(f *fixture, watch func(role string) bool) *concurrency {
	c := &concurrency{}
	f.srv.SetOverride(func(w http.ResponseWriter, r *http.Request, role string) bool {
		if !watch(role) {
			return false
		}
		c.mu.Lock()
		c.inFlight++
		c.total++
		c.most = max(c.most, c.inFlight)
		c.mu.Unlock()
		time.Sleep(30 * time.Millisecond)
		c.mu.Lock()
		c.inFlight--
		c.mu.Unlock()
		return false
	})
	return c
}

func (c *concurrency) result() (most, total int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.most, c.total
}
