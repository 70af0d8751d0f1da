package cache

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/theupdateframework/notary/storage"
)

func meta(v int) []byte {
	return fmt.Appendf(nil, `{"signed":{"_type":"Timestamp","version":%d},"signatures":[]}`, v)
}

func TestSetMonotonic(t *testing.T) {
	tests := []struct {
		name    string
		stored  []byte // nil: nothing stored
		offered []byte
		wantErr any // nil, *RollbackError or *CorruptError
		want    []byte
	}{
		{name: "first write", offered: meta(3), want: meta(3)},
		{name: "newer", stored: meta(3), offered: meta(4), want: meta(4)},
		{name: "same version", stored: meta(3), offered: meta(3), want: meta(3)},
		{name: "older refused", stored: meta(3), offered: meta(2), wantErr: new(*RollbackError), want: meta(3)},
		{name: "corrupt stored", stored: []byte("{not json"), offered: meta(9), wantErr: new(*CorruptError), want: []byte("{not json")},
		{name: "stored without version", stored: []byte(`{"signed":{}}`), offered: meta(9), wantErr: new(*CorruptError), want: []byte(`{"signed":{}}`)},
		{name: "offered corrupt", stored: meta(1), offered: []byte("garbage"), wantErr: new(*CorruptError), want: meta(1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := NewMetadataStore(t.TempDir(), nil)
			if err != nil {
				t.Fatal(err)
			}
			s := m.For("docker.io/library/app", "")
			if tt.stored != nil {
				plant(t, s, "timestamp", tt.stored)
			}
			err = s.Set("timestamp", tt.offered)
			switch want := tt.wantErr.(type) {
			case nil:
				if err != nil {
					t.Fatalf("Set: %v", err)
				}
			case **RollbackError:
				if !errors.As(err, want) {
					t.Fatalf("Set: %v, want *RollbackError", err)
				}
			case **CorruptError:
				if !errors.As(err, want) {
					t.Fatalf("Set: %v, want *CorruptError", err)
				}
			}
			got, _ := os.ReadFile(file(t, s, "timestamp"))
			if diff := cmp.Diff(string(tt.want), string(got)); diff != "" {
				t.Errorf("stored (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSetMultiAllOrNothing(t *testing.T) {
	m, _ := NewMetadataStore(t.TempDir(), nil)
	s := m.For("example.com/a", "")
	if err := s.SetMulti(map[string][]byte{"snapshot": meta(5), "targets/releases": meta(5)}); err != nil {
		t.Fatal(err)
	}
	err := s.SetMulti(map[string][]byte{"snapshot": meta(6), "targets/releases": meta(4)})
	if !errors.As(err, new(*RollbackError)) {
		t.Fatalf("SetMulti: %v, want *RollbackError", err)
	}
	for _, role := range []string{"snapshot", "targets/releases"} {
		b, err := s.GetSized(role, storage.NoSizeLimit)
		if err != nil {
			t.Fatal(err)
		}
		if v, _ := Version(b); v != 5 {
			t.Errorf("%s version %d after refused SetMulti, want 5", role, v)
		}
	}
}

func TestGetSized(t *testing.T) {
	tests := []struct {
		name    string
		stored  []byte
		wantErr any
	}{
		{name: "missing", wantErr: new(storage.ErrMetaNotFound)},
		{name: "valid", stored: meta(1)},
		{name: "truncated", stored: meta(1)[:10], wantErr: new(*CorruptError)},
		{name: "empty", stored: []byte{}, wantErr: new(*CorruptError)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, _ := NewMetadataStore(t.TempDir(), nil)
			s := m.For("example.com/a", "")
			if tt.stored != nil {
				plant(t, s, "root", tt.stored)
				must(t, os.WriteFile(filepath.Join(s.Location(), "pinning"), nil, 0o600))
			}
			b, err := s.GetSized("root", storage.NoSizeLimit)
			if tt.wantErr == nil {
				if err != nil || string(b) != string(tt.stored) {
					t.Fatalf("GetSized = %q, %v", b, err)
				}
				return
			}
			if !errors.As(err, tt.wantErr) {
				t.Fatalf("GetSized: %v, want %T", err, tt.wantErr)
			}
		})
	}
}

func TestFloorSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	m1, _ := NewMetadataStore(dir, nil)
	s1 := m1.For("example.com/a", "")
	if err := s1.Set("timestamp", meta(7)); err != nil {
		t.Fatal(err)
	}
	m2, _ := NewMetadataStore(dir, nil) // a restart, or a second instance on the same data_dir
	s2 := m2.For("example.com/a", "")
	if err := s2.Set("timestamp", meta(6)); !errors.As(err, new(*RollbackError)) {
		t.Fatalf("Set older after reopen: %v, want *RollbackError", err)
	}
}

// TestNamesNeverAlias: GUN and role names that a path-joined layout would
// map onto each other's files (a delegation targets/metadata/timestamp of
// GUN X and the timestamp of GUN X/metadata/targets; a repository named
// like a file of another) each keep their own state.
func TestNamesNeverAlias(t *testing.T) {
	m, _ := NewMetadataStore(t.TempDir(), nil)
	x := m.For("docker.io/library/app", "")
	must(t, x.Set("targets/metadata/timestamp", meta(9)))
	must(t, x.Set("timestamp", meta(3)))
	for _, gun := range []string{
		"docker.io/library/app/metadata/targets",
		"docker.io/library/app/metadata",
		"docker.io/library/app/pinning",
		"docker.io/library/app/metadata/timestamp.json",
		"docker.io/library/app/..",
		"docker.io/library",
	} {
		if _, err := m.For(gun, "").GetSized("timestamp", storage.NoSizeLimit); !errors.As(err, new(storage.ErrMetaNotFound)) {
			t.Errorf("GUN %s sees a timestamp: %v", gun, err)
		}
	}
	// Within one GUN, role names cannot reach each other's files either.
	for _, role := range []string{"targets/../timestamp", "timestamp.json", "Timestamp", "timestamp/", "../timestamp", "%74imestamp"} {
		if _, err := x.GetSized(role, storage.NoSizeLimit); !errors.As(err, new(storage.ErrMetaNotFound)) {
			t.Errorf("role %q reads another role's file: %v", role, err)
		}
	}
	b, err := x.GetSized("timestamp", storage.NoSizeLimit)
	if v, _ := Version(b); err != nil || v != 3 {
		t.Fatalf("timestamp of X: version %d, %v; want 3", v, err)
	}
}

// TestNothingWrittenUntilTrustData: asking about a GUN creates nothing; its
// directory appears with the first metadata stored.
func TestNothingWrittenUntilTrustData(t *testing.T) {
	dir := t.TempDir()
	m, _ := NewMetadataStore(dir, nil)
	s := m.For("docker.io/library/nothing-here", "tofu false\n")
	for _, role := range []string{"root", "timestamp", "snapshot"} {
		if _, err := s.GetSized(role, storage.NoSizeLimit); !errors.As(err, new(storage.ErrMetaNotFound)) {
			t.Fatalf("GetSized(%s) on an empty store: %v", role, err)
		}
	}
	if r, err := s.Refreshed(); err != nil || !r.IsZero() {
		t.Fatalf("Refreshed = %v, %v", r, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("reads left %d entries in %s", len(entries), dir)
	}
	must(t, s.Set("root", meta(1)))
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("after the first write %d entries, want 1", len(entries))
	}
	b, _ := os.ReadFile(filepath.Join(s.Location(), "gun"))
	if string(b) != "docker.io/library/nothing-here\n" {
		t.Errorf("gun file holds %q", b)
	}
}

// TestFailedWriteIsReported: a write that cannot be made is an error, never
// a silent no-op (notary ignores it, so the caller must see it).
func TestFailedWriteIsReported(t *testing.T) {
	m, _ := NewMetadataStore(t.TempDir(), nil)
	s := m.For("docker.io/library/app", "")
	must(t, s.Set("root", meta(1)))
	// A directory where the timestamp file belongs: the rename fails, even as root.
	must(t, os.MkdirAll(file(t, s, "timestamp"), 0o700))
	if err := s.Set("timestamp", meta(1)); err == nil {
		t.Fatal("Set succeeded over a directory")
	}
	// The GUN's directory is a file: nothing can be written.
	other := m.For("docker.io/library/other", "")
	must(t, os.WriteFile(other.Location(), []byte("x"), 0o600))
	if err := other.Set("root", meta(1)); err == nil {
		t.Fatal("Set succeeded with the GUN's directory a file")
	}
	if err := other.MarkRefreshed(time.Now()); err == nil {
		t.Fatal("MarkRefreshed succeeded with the GUN's directory a file")
	}
	if _, err := other.GetSized("timestamp", storage.NoSizeLimit); err == nil || errors.As(err, new(storage.ErrMetaNotFound)) {
		t.Fatalf("GetSized with the GUN's directory a file: %v, want an error that is not ErrMetaNotFound", err)
	}
}

// TestPinningChangeKeepsRootFloor: a root accepted under other pinning is
// hidden from notary, but a lower root version is still refused.
func TestPinningChangeKeepsRootFloor(t *testing.T) {
	m, _ := NewMetadataStore(t.TempDir(), nil)
	before := m.For("docker.io/library/app", "tofu true\n")
	must(t, before.Set("root", meta(2)))
	if _, err := before.GetSized("root", storage.NoSizeLimit); err != nil {
		t.Fatal(err)
	}
	after := m.For("docker.io/library/app", "tofu false\ncerts ...\n")
	if _, err := after.GetSized("root", storage.NoSizeLimit); !errors.As(err, new(storage.ErrMetaNotFound)) {
		t.Fatalf("root under new pinning: %v, want ErrMetaNotFound", err)
	}
	if err := after.Set("root", meta(1)); !errors.As(err, new(*RollbackError)) {
		t.Fatalf("Set root v1 after v2 under new pinning: %v, want *RollbackError", err)
	}
	must(t, after.Set("root", meta(2)))
	if _, err := after.GetSized("root", storage.NoSizeLimit); err != nil {
		t.Fatalf("root stored under the new pinning: %v", err)
	}
	if _, err := before.GetSized("root", storage.NoSizeLimit); !errors.As(err, new(storage.ErrMetaNotFound)) {
		t.Fatalf("root under the old pinning after re-pinning: %v", err)
	}
}

func TestRefreshedRecordsTheLast(t *testing.T) {
	m, _ := NewMetadataStore(t.TempDir(), nil)
	s := m.For("docker.io/library/app", "")
	now := time.Now().Truncate(time.Millisecond)
	must(t, s.MarkRefreshed(now.Add(time.Hour))) // a clock that ran ahead
	must(t, s.MarkRefreshed(now))
	if got, err := s.Refreshed(); err != nil || !got.Equal(now) {
		t.Fatalf("Refreshed = %v, %v; want %v", got, err, now)
	}
	must(t, os.WriteFile(filepath.Join(s.Location(), "refreshed"), []byte("yesterday"), 0o600))
	if _, err := s.Refreshed(); !errors.As(err, new(*CorruptError)) {
		t.Fatalf("Refreshed of a damaged record: %v, want *CorruptError", err)
	}
}

func TestEscapeRole(t *testing.T) {
	seen := map[string]string{}
	for _, role := range []string{"root", "targets", "targets/releases", "targets%2Freleases", "targets/a.b", "targets/a_b",
		"targets/A", "targets/a", "..", ".", "", "targets/ä"} {
		e := escapeRole(role)
		if strings.ContainsAny(e, "/.") {
			t.Errorf("escapeRole(%q) = %q holds a separator or dot", role, e)
		}
		if prev, dup := seen[e]; dup {
			t.Errorf("escapeRole(%q) = escapeRole(%q) = %q", role, prev, e)
		}
		seen[e] = role
	}
}

// TestLongRoleNames: role names as long as notary allows are stored, each
// in a file of its own.
func TestLongRoleNames(t *testing.T) {
	m, _ := NewMetadataStore(t.TempDir(), nil)
	s := m.For("docker.io/library/app", "")
	a := "targets/releases/" + strings.Repeat("a", 238)
	b := "targets/releases/" + strings.Repeat("a", 237) + "b"
	must(t, s.Set(a, meta(4)))
	must(t, s.Set(b, meta(7)))
	for role, want := range map[string]int{a: 4, b: 7} {
		got, err := s.GetSized(role, storage.NoSizeLimit)
		if v, _ := Version(got); err != nil || v != want {
			t.Errorf("%s…: version %d, %v; want %d", role[:30], v, err, want)
		}
		if p := file(t, s, role); len(filepath.Base(p)) > 255 || strings.ContainsAny(filepath.Base(p), "/") {
			t.Errorf("file name %q", filepath.Base(p))
		}
	}
	if _, err := s.File(""); err == nil {
		t.Error("an empty role name has a file")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func file(t *testing.T, s *GUNStore, role string) string {
	t.Helper()
	p, err := s.File(role)
	must(t, err)
	return p
}

// plant writes b as role's file directly, as a damaged disk might.
func plant(t *testing.T, s *GUNStore, role string, b []byte) {
	t.Helper()
	must(t, os.MkdirAll(s.Location(), 0o700))
	must(t, os.WriteFile(file(t, s, role), b, 0o600))
}

func FuzzVersion(f *testing.F) {
	f.Add(meta(1))
	f.Add([]byte(`{"signed":{"version":-1}}`))
	f.Add([]byte(`{"signed":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		Version(b)
	})
}

func TestRacingWritersKeepHighestVersion(t *testing.T) {
	dir := t.TempDir()
	done := make(chan struct{})
	for w := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			m, _ := NewMetadataStore(dir, nil) // separate instances, as separate processes would be
			s := m.For("example.com/a", "")
			for v := range 50 {
				s.Set("timestamp", meta(v*4+w))
			}
		}()
	}
	for range 4 {
		<-done
	}
	m, _ := NewMetadataStore(dir, nil)
	s := m.For("example.com/a", "")
	b, err := s.GetSized("timestamp", storage.NoSizeLimit)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := Version(b); v != 49*4+3 {
		t.Errorf("stored version %d after racing writers, want %d", v, 49*4+3)
	}
}

// FuzzEscapeRole: role names come from signed metadata; their file names
// never hold a separator or a dot, and two names never share one.
func FuzzEscapeRole(f *testing.F) {
	f.Add("targets/releases", "targets%2Freleases")
	f.Add("..", "%2E%2E")
	f.Fuzz(func(t *testing.T, a, b string) {
		ea, eb := escapeRole(a), escapeRole(b)
		if strings.ContainsAny(ea, "/.\\\x00") {
			t.Fatalf("escapeRole(%q) = %q", a, ea)
		}
		if a != b && ea == eb {
			t.Fatalf("escapeRole(%q) == escapeRole(%q) == %q", a, b, ea)
		}
	})
}

// root is a root of version v whose timestamp, snapshot and targets keys
// are ts, sn and tg.
func root(v int, ts, sn, tg string) []byte {
	return fmt.Appendf(nil, `{"signed":{"_type":"Root","version":%d,"roles":{"root":{"keyids":["r"]},"timestamp":{"keyids":[%q]},"snapshot":{"keyids":[%q]},"targets":{"keyids":[%q]}}},"signatures":[]}`, v, ts, sn, tg)
}

// TestRootRotationDropsReplacedRoles (TUF 5.3.11): a newer root that
// replaced the timestamp or snapshot key drops both roles' stored versions,
// and one that replaced the targets key drops targets'; a newer root that
// keeps them, or the same root again, drops nothing.
func TestRootRotationDropsReplacedRoles(t *testing.T) {
	tests := []struct {
		name        string
		next        []byte
		wantDropped []string
	}{
		{name: "timestamp key replaced", next: root(2, "ts2", "sn", "tg"), wantDropped: []string{"timestamp", "snapshot"}},
		{name: "snapshot key replaced", next: root(2, "ts", "sn2", "tg"), wantDropped: []string{"timestamp", "snapshot"}},
		{name: "targets key replaced", next: root(2, "ts", "sn", "tg2"), wantDropped: []string{"targets"}},
		{name: "root key only", next: root(2, "ts", "sn", "tg")},
		{name: "same root again", next: root(1, "ts2", "sn", "tg")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, _ := NewMetadataStore(t.TempDir(), nil)
			s := m.For("example.com/a", "")
			must(t, s.Set("root", root(1, "ts", "sn", "tg")))
			must(t, s.SetMulti(map[string][]byte{"timestamp": meta(1000), "snapshot": meta(1000), "targets": meta(1000), "targets/releases": meta(1000)}))
			must(t, s.RaiseFloor(map[string]int{"root": 1, "timestamp": 1001}, keys("ts", "sn", "tg")))
			if err := s.Set("root", tt.next); err != nil && !strings.Contains(tt.name, "same root") {
				t.Fatal(err)
			}
			for _, role := range []string{"timestamp", "snapshot", "targets", "targets/releases"} {
				err := s.Set(role, meta(1))
				dropped := slices.Contains(tt.wantDropped, role)
				if dropped && err != nil {
					t.Errorf("%s: version 1 refused after its key was replaced: %v", role, err)
				}
				if !dropped && !errors.As(err, new(*RollbackError)) {
					t.Errorf("%s: version 1 accepted (%v), though its key was not replaced", role, err)
				}
			}
		})
	}
}

// keys is a view's key IDs of the timestamp, snapshot and targets roles.
func keys(ts, sn, tg string) map[string][]string {
	return map[string][]string{"timestamp": {ts}, "snapshot": {sn}, "targets": {tg}}
}

// TestRaiseFloor: a floor raised from another replica's view refuses
// older writes under the same keys; a view older than what the store holds
// raises nothing; after a verified rotation of a role's keys the floor of
// its old keys no longer binds, also on a replica that never had a root of
// its own before the rotation.
func TestRaiseFloor(t *testing.T) {
	m, _ := NewMetadataStore(t.TempDir(), nil)
	s := m.For("example.com/a", "")
	must(t, s.Set("root", root(1, "ts", "sn", "tg")))
	must(t, s.Set("timestamp", meta(5)))
	if err := s.RaiseFloor(map[string]int{"root": 1, "timestamp": 4, "snapshot": 9}, keys("ts", "sn", "tg")); !errors.As(err, new(*RollbackError)) {
		t.Fatalf("a view below the stored timestamp: %v, want *RollbackError", err)
	}
	must(t, s.Set("snapshot", meta(2))) // the refused view raised nothing
	must(t, s.RaiseFloor(map[string]int{"root": 1, "timestamp": 7, "snapshot": 9}, keys("ts", "sn", "tg")))
	for role, v := range map[string]int{"timestamp": 6, "snapshot": 8} {
		if err := s.Set(role, meta(v)); !errors.As(err, new(*RollbackError)) {
			t.Errorf("%s v%d below the raised floor: %v, want *RollbackError", role, v, err)
		}
	}
	must(t, s.Set("timestamp", meta(7)))
	reopened, _ := NewMetadataStore(m.dir, nil)
	if err := reopened.For("example.com/a", "").Set("snapshot", meta(8)); !errors.As(err, new(*RollbackError)) {
		t.Errorf("the raised floor did not survive a restart: %v", err)
	}

	// A replica that took a view before a rotation, with no root of its own.
	fresh := m.For("example.com/b", "")
	must(t, fresh.RaiseFloor(map[string]int{"root": 1, "timestamp": 1001, "snapshot": 9}, keys("ts", "sn", "tg")))
	must(t, fresh.Set("root", root(2, "ts2", "sn", "tg"))) // the owner rotated the timestamp key
	must(t, fresh.Set("timestamp", meta(1)))
	// A view from before the rotation is refused; the new keys' view is taken.
	if err := fresh.RaiseFloor(map[string]int{"root": 1, "timestamp": 1001}, keys("ts", "sn", "tg")); !errors.As(err, new(*RollbackError)) {
		t.Errorf("a view of the root before the rotation: %v, want *RollbackError", err)
	}
	must(t, fresh.RaiseFloor(map[string]int{"root": 2, "timestamp": 3}, keys("ts2", "sn", "tg")))
	// Under the old root again (the server rolled the rotation back), the
	// floor of the newer root binds whatever the keys.
	old := m.For("example.com/c", "")
	must(t, old.RaiseFloor(map[string]int{"root": 2, "timestamp": 3}, keys("ts2", "sn", "tg")))
	must(t, old.Set("root", root(2, "ts2", "sn", "tg")))
	if err := old.Set("timestamp", meta(2)); !errors.As(err, new(*RollbackError)) {
		t.Errorf("timestamp below the floor of the same keys: %v", err)
	}
}
