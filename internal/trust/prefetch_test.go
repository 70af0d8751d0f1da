package trust

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/theupdateframework/notary/tuf/data"
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
	var mu sync.Mutex
	inFlight, most, total := 0, 0, 0
	f.srv.setOverride(func(w http.ResponseWriter, r *http.Request, role string) bool {
		mu.Lock()
		inFlight++
		total++
		most = max(most, inFlight)
		mu.Unlock()
		time.Sleep(30 * time.Millisecond) // a server some way off
		mu.Lock()
		inFlight--
		mu.Unlock()
		return false
	})
	v, _ := newVerifier(t, f, tofu())
	snap, err := v.snapshot(t.Context(), testGUN)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := snap.Resolve("v1"); err != nil {
		t.Fatal(err)
	}
	if most < 3 {
		t.Errorf("at most %d requests were in flight at once, want timestamp, snapshot and targets together", most)
	}
	if total != 5 {
		t.Errorf("%d requests for root, timestamp, snapshot, targets and one delegation, want 5", total)
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
	f.srv.setOverride(func(w http.ResponseWriter, r *http.Request, role string) bool {
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
	if byName != 1 || f.srv.count("targets") != 2 {
		t.Errorf("targets asked for %d times, %d of them by name; want the prefetch by name, then the file by checksum", f.srv.count("targets"), byName)
	}
}

// FuzzDelegationNames: whatever a Notary server sends as targets, the
// names prefetched are delegations under targets/, never a consistent
// name, and parsing never panics.
func FuzzDelegationNames(f *testing.F) {
	f.Add([]byte(`{"signed":{"delegations":{"roles":[{"name":"targets/releases"},{"name":"targets/a.` + strings.Repeat("ab", 32) + `"},{"name":"root"}]}}}`))
	f.Add([]byte(`{"signed":{"delegations":{"roles":null}}}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		for _, n := range delegationNames(raw) {
			if !strings.HasPrefix(n, "targets/") || checksumTail.MatchString(n) {
				t.Fatalf("prefetch of %q", n)
			}
		}
	})
}
