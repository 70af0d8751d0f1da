package trust

// Attacks by a hostile Notary server (it holds the snapshot and timestamp
// keys, as notary-server does) and faults of the trust cache. Each test
// failed before the check it exercises existed.

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/theupdateframework/notary/tuf/data"
	"github.com/theupdateframework/notary/tuf/testutils"
	"github.com/trustproxy/trustproxy/config"
)

// rolledBack is a repository whose tag v1 the owner once signed in targets
// (old) and now signs in targets/releases (current).
func rolledBack(t *testing.T) (f *fixture, old, current data.FileMeta) {
	f = newFixture(t)
	f.delegate("targets/releases")
	old = f.tag("targets", "v1", []byte("old manifest the owner signed long ago"))
	current = f.tag("targets/releases", "v1", []byte("current manifest"))
	f.publish()
	return f, old, current
}

func resolveV1(t *testing.T, v *testVerifier) (Target, error) {
	t.Helper()
	snap, err := v.snapshot(t.Context(), testGUN)
	if err != nil {
		return Target{}, err
	}
	return snap.Resolve("v1")
}

// TestRoleRemovalRefused (TUF 5.5.5): with only its snapshot and timestamp
// keys, the server publishes a snapshot that leaves targets/releases out.
// notary skips the role and v1 would resolve through targets to the old
// digest; the repository is refused instead.
func TestRoleRemovalRefused(t *testing.T) {
	f, old, current := rolledBack(t)
	v, _ := newVerifier(t, f, opts{rule: config.Rule{TOFU: true}, ttl: time.Nanosecond})
	if got, err := resolveV1(t, v); err != nil || got.Digest != targetDigest(current) {
		t.Fatalf("before the attack v1 = %+v, %v", got, err)
	}

	s := f.swizzle()
	must(t, s.MutateSnapshot(func(sn *data.Snapshot) { delete(sn.Meta, "targets/releases") }))
	must(t, s.OffsetMetadataVersion(data.CanonicalSnapshotRole, 1))
	must(t, s.UpdateTimestampHash())
	must(t, s.OffsetMetadataVersion(data.CanonicalTimestampRole, 1))

	got, err := resolveV1(t, v)
	if err == nil {
		t.Fatalf("v1 resolved to %s (old digest %s) after the server removed targets/releases", got.Digest, targetDigest(old))
	}
	r := wantReason(t, err, Rollback)
	if !strings.Contains(r.Detail, "leaves out targets/releases") {
		t.Errorf("refusal %q does not name the removed role", r.Detail)
	}
	// A fresh verifier, which never saw the old snapshot, refuses too: the
	// rule searches targets/releases and targets still delegates it.
	v2, _ := newVerifier(t, f, tofu())
	_, err = resolveV1(t, v2)
	wantReason(t, err, InvalidMetadata)
}

// TestInvalidDelegationRefused: the snapshot lists targets/releases, but the
// version it names does not verify. notary skips it; trustproxy refuses.
func TestInvalidDelegationRefused(t *testing.T) {
	for _, tt := range []struct {
		name   string
		swizzl func(s *testutils.MetadataSwizzler) error
	}{
		{"bad signatures", func(s *testutils.MetadataSwizzler) error { return s.InvalidateMetadataSignatures("targets/releases") }},
		{"signed by another key", func(s *testutils.MetadataSwizzler) error { return s.SignMetadataWithInvalidKey("targets/releases") }},
		{"threshold raised", func(s *testutils.MetadataSwizzler) error {
			return s.MutateTargets(func(tg *data.Targets) { tg.Delegations.Roles[0].Threshold = 2 })
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f, old, current := rolledBack(t)
			v, _ := newVerifier(t, f, opts{rule: config.Rule{TOFU: true}, ttl: time.Nanosecond})
			if got, err := resolveV1(t, v); err != nil || got.Digest != targetDigest(current) {
				t.Fatalf("before the attack v1 = %+v, %v", got, err)
			}
			s := f.swizzle()
			must(t, tt.swizzl(s))
			must(t, s.UpdateSnapshotHashes())
			must(t, s.UpdateTimestampHash())
			for _, v := range []*testVerifier{v, func() *testVerifier { v, _ := newVerifier(t, f, tofu()); return v }()} {
				got, err := resolveV1(t, v)
				if err == nil {
					t.Fatalf("v1 resolved to %s (old digest %s)", got.Digest, targetDigest(old))
				}
				wantReason(t, err, InvalidMetadata)
			}
		})
	}
}

// TestOwnerRemovedDelegationAccepted: when the owner removes the delegation
// (signing targets with the targets key), tags resolve through targets.
func TestOwnerRemovedDelegationAccepted(t *testing.T) {
	f, old, _ := rolledBack(t)
	v, _ := newVerifier(t, f, opts{rule: config.Rule{TOFU: true}, ttl: time.Nanosecond})
	if _, err := resolveV1(t, v); err != nil {
		t.Fatal(err)
	}
	must(t, f.repo.DeleteDelegation("targets/releases"))
	f.publish()
	if got, err := resolveV1(t, v); err != nil || got.Digest != targetDigest(old) || got.Role != "targets" {
		t.Fatalf("after the owner removed targets/releases v1 = %+v, %v; want targets' %s", got, err, targetDigest(old))
	}
}

// TestFreezeCountsAsUnreachable: a server that stops giving a timestamp
// (404, errors) leaves trustproxy on its cache: that is "unreachable" in
// the snapshot, the log and the metric, and refused after max_staleness,
// though the cached timestamp is valid for days.
func TestFreezeCountsAsUnreachable(t *testing.T) {
	for _, status := range []int{http.StatusNotFound, http.StatusInternalServerError, http.StatusFound} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			f := newFixture(t)
			f.tag("targets", "v1", []byte("v1"))
			f.publish()
			dir := t.TempDir()
			v, logs := newVerifier(t, f, opts{rule: config.Rule{TOFU: true, MaxStaleness: 2 * time.Second}, dataDir: dir, ttl: time.Nanosecond})
			if _, err := v.snapshot(t.Context(), testGUN); err != nil {
				t.Fatal(err)
			}
			var frozen atomic.Bool
			frozen.Store(true)
			f.srv.SetOverride(func(w http.ResponseWriter, r *http.Request, role string) bool {
				if role != "timestamp" || !frozen.Load() {
					return false
				}
				w.Header().Set("Location", "/elsewhere")
				w.WriteHeader(status)
				return true
			})
			snap, err := v.snapshot(t.Context(), testGUN)
			if err != nil {
				t.Fatalf("within max_staleness: %v", err)
			}
			if snap.Unreachable == "" || snap.Refreshed.IsZero() || time.Since(snap.Refreshed) > time.Minute {
				t.Errorf("snapshot Unreachable %q Refreshed %v: want the reason and the last fresh time", snap.Unreachable, snap.Refreshed)
			}
			if n := testutil.ToFloat64(v.v.refreshes.WithLabelValues("unreachable")); n != 1 {
				t.Errorf("trustproxy_trust_refresh_total{result=unreachable} = %v, want 1", n)
			}
			if !strings.Contains(logs.String(), "notary unreachable, using cached metadata") {
				t.Errorf("no warning logged:\n%s", logs)
			}
			time.Sleep(2100 * time.Millisecond)
			_, err = v.snapshot(t.Context(), testGUN)
			r := wantReason(t, err, TrustUnavailable)
			if !strings.Contains(r.Detail, "max_staleness") {
				t.Errorf("refusal %q does not name max_staleness", r.Detail)
			}
			// A restart keeps the record of the last fresh timestamp.
			v2, _ := newVerifier(t, f, opts{rule: config.Rule{TOFU: true, MaxStaleness: 2 * time.Second}, dataDir: dir})
			_, err = v2.snapshot(t.Context(), testGUN)
			wantReason(t, err, TrustUnavailable)
			// The server answers again: served.
			frozen.Store(false)
			if _, err := v.snapshot(t.Context(), testGUN); err != nil {
				t.Fatalf("after the server answered again: %v", err)
			}
		})
	}
}

// TestPinningChangeKeepsRootFloor: the root was rotated to v2 (its old key
// retired); the operator then changes the pinning and restarts, pinning
// both root certificates. A server holding the retired key hands back root
// v1 with fresh, higher-versioned metadata signed under it: refused, since
// the proxy has seen root v2.
func TestPinningChangeKeepsRootFloor(t *testing.T) {
	f := newFixture(t)
	f.tag("targets", "v1", []byte("v1"))
	f.publish()
	oldMeta, oldRootID := testutils.CopyRepoMetadata(f.meta), f.rootID()
	dir := t.TempDir()
	v, _ := newVerifier(t, f, opts{rule: config.Rule{TOFU: true}, dataDir: dir, ttl: time.Nanosecond})
	if _, err := v.snapshot(t.Context(), testGUN); err != nil {
		t.Fatal(err)
	}

	newRoot, err := testutils.CreateKey(f.cs, f.gun, data.CanonicalRootRole, data.ECDSAKey)
	must(t, err)
	must(t, f.repo.ReplaceBaseKeys(data.CanonicalRootRole, newRoot))
	f.publish()
	if _, err := v.snapshot(t.Context(), testGUN); err != nil {
		t.Fatalf("after the root rotation: %v", err)
	}

	// The retired root's world, every other role pushed past the floors.
	s := testutils.NewMetadataSwizzler(f.gun, oldMeta, f.cs)
	must(t, s.OffsetMetadataVersion(data.CanonicalTargetsRole, 10))
	must(t, s.UpdateSnapshotHashes(data.CanonicalTargetsRole))
	must(t, s.OffsetMetadataVersion(data.CanonicalSnapshotRole, 10))
	must(t, s.UpdateTimestampHash())
	must(t, s.OffsetMetadataVersion(data.CanonicalTimestampRole, 10))
	f.srv.ServeFrom(s.MetadataCache)

	pins := config.Pinning{Certs: map[string][]string{testGUN: {oldRootID, f.rootID()}}}
	v2, _ := newVerifier(t, f, opts{dataDir: dir, pinning: pins})
	_, err = v2.snapshot(t.Context(), testGUN)
	wantReason(t, err, Rollback)
}

// TestFailedCacheWriteFailsClosed: when the cache cannot store what the
// server sent, notary only logs it and no version floor is kept; the pull
// is refused instead.
func TestFailedCacheWriteFailsClosed(t *testing.T) {
	f := newFixture(t)
	f.tag("targets", "v1", []byte("v1"))
	f.publish()
	dir := t.TempDir()
	v, _ := newVerifier(t, f, opts{rule: config.Rule{TOFU: true}, dataDir: dir, ttl: time.Nanosecond})
	if _, err := v.snapshot(t.Context(), testGUN); err != nil {
		t.Fatal(err)
	}
	// A directory where the timestamp file belongs: no write can replace it.
	ts := cacheFile(t, dir, "timestamp")
	must(t, os.Remove(ts))
	must(t, os.MkdirAll(filepath.Join(ts, "x"), 0o700))
	s := f.swizzle()
	must(t, s.OffsetMetadataVersion(data.CanonicalTimestampRole, 1))
	_, err := v.snapshot(t.Context(), testGUN)
	r := wantReason(t, err, InvalidMetadata)
	if !strings.Contains(r.Error(), "timestamp") {
		t.Errorf("refusal %q does not name the file", r.Error())
	}
}

// TestNothingWrittenForUnknownRepository: repositories without trust data
// (whatever their names spell) leave nothing in the trust cache.
func TestNothingWrittenForUnknownRepository(t *testing.T) {
	f := newFixture(t)
	f.tag("targets", "v1", []byte("v1"))
	f.publish()
	dir := t.TempDir()
	v, _ := newVerifier(t, f, opts{rule: config.Rule{Repositories: "**", TOFU: true}, dataDir: dir})
	for _, gun := range []string{"example.com/library/app/pinning", "example.com/library/app/metadata/timestamp.json",
		"example.com/library/app/metadata/targets", "example.com/made-up"} {
		_, err := v.snapshot(t.Context(), gun)
		if reason(t, err) != NoTrustData {
			t.Errorf("%s: %v, want no_trust_data", gun, err)
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "trust")); len(entries) != 0 {
		t.Fatalf("the trust cache holds %d entries for repositories without trust data", len(entries))
	}
	if _, err := v.snapshot(t.Context(), testGUN); err != nil {
		t.Fatal(err)
	}
}

// TestNotaryRealmRefused: a Notary server whose challenge names a token
// realm off the allow-list gets nothing sent to that realm.
func TestNotaryRealmRefused(t *testing.T) {
	var conns atomic.Int64
	capture := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"token":"t"}`)
	}))
	capture.Config.ConnState = func(net.Conn, http.ConnState) { conns.Add(1) }
	capture.Start()
	t.Cleanup(capture.Close)
	_, port, _ := net.SplitHostPort(capture.Listener.Addr().String())

	f := newFixture(t)
	f.tag("targets", "v1", []byte("v1"))
	f.publish()
	f.srv.SetOverride(func(w http.ResponseWriter, r *http.Request, role string) bool {
		w.Header().Set("WWW-Authenticate", `Bearer realm="http://localhost:`+port+`/token",service="notary"`)
		w.WriteHeader(http.StatusUnauthorized)
		return true
	})
	v, _ := newVerifier(t, f, opts{rule: config.Rule{TOFU: true}, notary: config.Endpoint{Username: "reader", Password: "s3cret"}})
	_, err := v.snapshot(t.Context(), testGUN)
	r := wantReason(t, err, TrustUnavailable)
	if !strings.Contains(r.Error(), "token_realms") {
		t.Errorf("refusal %q does not say how to allow a realm", r.Error())
	}
	if n := conns.Load(); n != 0 {
		t.Fatalf("the unlisted realm saw %d connection events", n)
	}
}

// FuzzSnapshotRoles: the cached snapshot is read before each update; any
// bytes give an error or delegation names, never a panic or other roles.
func FuzzSnapshotRoles(f *testing.F) {
	f.Add([]byte(`{"signed":{"meta":{"root":{},"targets":{},"targets/releases":{"length":1}}}}`))
	f.Add([]byte(`{"signed":{"meta":null}}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		roles, err := snapshotRoles(b)
		for _, r := range roles {
			if err != nil || !data.IsDelegation(r) {
				t.Fatalf("snapshotRoles(%q) = %v, %v", b, roles, err)
			}
		}
	})
}

// TestLongDelegationNameStored: any delegate may add a child role whose
// name is as long as notary allows; storing it must not refuse the
// repository.
func TestLongDelegationNameStored(t *testing.T) {
	f, _, current := rolledBack(t)
	v, _ := newVerifier(t, f, opts{rule: config.Rule{TOFU: true}, ttl: time.Nanosecond})
	if _, err := resolveV1(t, v); err != nil {
		t.Fatal(err)
	}
	long := "targets/releases/" + strings.Repeat("a", 238)
	if !data.IsDelegation(data.RoleName(long)) {
		t.Fatalf("notary does not accept %s", long)
	}
	f.delegate(long)
	f.tag(long, "other", []byte("x"))
	f.publish()
	if got, err := resolveV1(t, v); err != nil || got.Digest != targetDigest(current) {
		t.Fatalf("with a %d-character delegation: v1 = %+v, %v", len(long), got, err)
	}
}

// TestStuckTokenRealmBounded: the Notary server's own origin (always an
// allowed realm) answers token requests with headers and never a body. The
// update ends within its bounds, and once the server behaves again the
// repository is served: nothing stays stuck.
func TestStuckTokenRealmBounded(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	f := newFixture(t)
	f.tag("targets", "v1", []byte("v1"))
	f.publish()
	var hostile atomic.Bool
	hostile.Store(true)
	f.srv.SetOverride(func(w http.ResponseWriter, r *http.Request, role string) bool {
		switch {
		case role == "" && r.URL.Path == "/v2/token" && !hostile.Load():
			fmt.Fprint(w, `{"token":"t"}`)
		case role == "" && r.URL.Path == "/v2/token":
			w.WriteHeader(http.StatusOK)
			fmt.Fprint(w, `{"tok`)
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
		case role == "" || strings.HasPrefix(r.Header.Get("Authorization"), "Bearer "):
			return false
		default:
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+f.srv.URL+`/v2/token",service="notary"`)
			w.WriteHeader(http.StatusUnauthorized)
		}
		return true
	})
	v, _ := newVerifier(t, f, opts{rule: config.Rule{TOFU: true}, ttl: time.Nanosecond,
		limits: config.Limits{UpstreamTimeout: time.Second}, notary: config.Endpoint{Username: "u", Password: "p"}})
	start := time.Now()
	_, err := v.snapshot(t.Context(), testGUN)
	wantReason(t, err, TrustUnavailable)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the update took %v with a 1s upstream timeout", d)
	}
	hostile.Store(false)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := v.snapshot(ctx, testGUN); err != nil {
		t.Fatalf("after the server behaved again: %v", err)
	}
}
