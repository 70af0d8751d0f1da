package cache

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

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
			s, err := m.For("docker.io/library/app")
			if err != nil {
				t.Fatal(err)
			}
			if tt.stored != nil {
				if err := writeAtomic(s.path("timestamp"), tt.stored); err != nil {
					t.Fatal(err)
				}
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
			got, _ := os.ReadFile(s.path("timestamp"))
			if diff := cmp.Diff(string(tt.want), string(got)); diff != "" {
				t.Errorf("stored (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSetMultiAllOrNothing(t *testing.T) {
	m, _ := NewMetadataStore(t.TempDir(), nil)
	s, _ := m.For("example.com/a")
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
			s, _ := m.For("example.com/a")
			if tt.stored != nil {
				if err := writeAtomic(s.path("root"), tt.stored); err != nil {
					t.Fatal(err)
				}
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
	s1, _ := m1.For("example.com/a")
	if err := s1.Set("timestamp", meta(7)); err != nil {
		t.Fatal(err)
	}
	m2, _ := NewMetadataStore(dir, nil) // a restart, or a second instance on the same data_dir
	s2, _ := m2.For("example.com/a")
	if err := s2.Set("timestamp", meta(6)); !errors.As(err, new(*RollbackError)) {
		t.Fatalf("Set older after reopen: %v, want *RollbackError", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "example.com", "a", "metadata", "timestamp.json")); err != nil {
		t.Fatal(err)
	}
}

func TestForRejectsBadGUN(t *testing.T) {
	m, _ := NewMetadataStore(t.TempDir(), nil)
	for _, gun := range []string{"", "/abs", "a/../b", "..", "a//b", "a/./b", "a\\b", "a/"} {
		if _, err := m.For(gun); err == nil {
			t.Errorf("For(%q) succeeded", gun)
		}
	}
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
			s, _ := m.For("example.com/a")
			for v := range 50 {
				s.Set("timestamp", meta(v*4+w))
			}
		}()
	}
	for range 4 {
		<-done
	}
	m, _ := NewMetadataStore(dir, nil)
	s, _ := m.For("example.com/a")
	b, err := s.GetSized("timestamp", storage.NoSizeLimit)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := Version(b); v != 49*4+3 {
		t.Errorf("stored version %d after racing writers, want %d", v, 49*4+3)
	}
}
