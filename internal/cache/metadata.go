package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"github.com/theupdateframework/notary/storage"
)

// MetadataStore keeps the TUF metadata of every GUN under one directory, as
// <dir>/<gun>/metadata/<role>.json.
type MetadataStore struct {
	dir string
	log *slog.Logger

	mu    sync.Mutex
	locks map[string]*sync.Mutex // per GUN, for writers in this process
}

// NewMetadataStore returns the store rooted at dir, creating dir if needed.
// A nil log discards.
func NewMetadataStore(dir string, log *slog.Logger) (*MetadataStore, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create trust metadata directory: %w", err)
	}
	return &MetadataStore{dir: dir, log: log.With("component", "cache"), locks: map[string]*sync.Mutex{}}, nil
}

// For returns the monotonic metadata store of gun. gun must be a clean
// relative path (e.g. docker.io/library/app).
func (m *MetadataStore) For(gun string) (*GUNStore, error) {
	if !validGUN(gun) {
		return nil, fmt.Errorf("invalid GUN %q for the trust metadata store", gun)
	}
	dir := filepath.Join(m.dir, filepath.FromSlash(gun), "metadata")
	fs, err := storage.NewFileStore(dir, "json")
	if err != nil {
		return nil, fmt.Errorf("open trust metadata of %s: %w", gun, err)
	}
	m.mu.Lock()
	l, ok := m.locks[gun]
	if !ok {
		l = &sync.Mutex{}
		m.locks[gun] = l
	}
	m.mu.Unlock()
	return &GUNStore{fs: fs, dir: dir, mu: l, log: m.log.With("gun", gun)}, nil
}

func validGUN(gun string) bool {
	if gun == "" || strings.ContainsAny(gun, "\\\x00") || path.Clean(gun) != gun || path.IsAbs(gun) {
		return false
	}
	for _, seg := range strings.Split(gun, "/") {
		if seg == "." || seg == ".." {
			return false
		}
	}
	return true
}

// GUNStore is the notary storage.MetadataStore of one GUN. Set and SetMulti
// refuse to lower a role's signed version (*RollbackError); an entry that
// does not parse is reported as a *CorruptError by GetSized and Set.
type GUNStore struct {
	fs  *storage.FilesystemStore
	dir string
	mu  *sync.Mutex
	log *slog.Logger
}

var _ storage.MetadataStore = (*GUNStore)(nil)

// RollbackError is returned when a write would lower a role's version.
type RollbackError struct {
	Path            string
	Stored, Offered int
}

func (e *RollbackError) Error() string {
	return fmt.Sprintf("refusing to replace version %d of %s with older version %d", e.Stored, e.Path, e.Offered)
}

// CorruptError is returned for stored or offered metadata that does not
// parse as signed TUF metadata with a version.
type CorruptError struct {
	Path string
	Err  error
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("trust metadata %s is corrupt (inspect it, then delete it to fetch it again): %v", e.Path, e.Err)
}

func (e *CorruptError) Unwrap() error { return e.Err }

// Version returns the signed.version of TUF metadata.
func Version(b []byte) (int, error) {
	var m struct {
		Signed *struct {
			Version *int `json:"version"`
		} `json:"signed"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return 0, err
	}
	if m.Signed == nil || m.Signed.Version == nil {
		return 0, errors.New("no signed.version")
	}
	return *m.Signed.Version, nil
}

func (s *GUNStore) path(name string) string {
	return filepath.Join(s.dir, filepath.FromSlash(name)+".json")
}

// GetSized returns the stored metadata of role name, at most size bytes
// (storage.NoSizeLimit: notary's maximum). A missing entry is
// storage.ErrMetaNotFound; one that does not parse is a *CorruptError.
func (s *GUNStore) GetSized(name string, size int64) ([]byte, error) {
	b, err := s.fs.GetSized(name, size)
	if err != nil {
		return nil, err
	}
	if _, err := Version(b); err != nil {
		return nil, s.corrupt(name, err)
	}
	return b, nil
}

func (s *GUNStore) corrupt(name string, err error) error {
	e := &CorruptError{Path: s.path(name), Err: err}
	s.log.Error("corrupt trust metadata in cache", "path", e.Path, "err", err)
	return e
}

// Set stores blob as role name unless that would lower its version.
func (s *GUNStore) Set(name string, blob []byte) error {
	return s.SetMulti(map[string][]byte{name: blob})
}

// SetMulti stores every role, or none if any write would lower a version or
// any stored or offered entry is corrupt.
func (s *GUNStore) SetMulti(metas map[string][]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return err
	}
	unlock, err := lockDir(s.dir)
	if err != nil {
		return fmt.Errorf("lock trust metadata %s: %w", s.dir, err)
	}
	defer unlock()
	for name, blob := range metas {
		offered, err := Version(blob)
		if err != nil {
			return &CorruptError{Path: s.path(name) + " (offered)", Err: err}
		}
		stored, err := s.fs.GetSized(name, storage.NoSizeLimit)
		if errors.As(err, new(storage.ErrMetaNotFound)) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", s.path(name), err)
		}
		v, err := Version(stored)
		if err != nil {
			return s.corrupt(name, err)
		}
		if offered < v {
			return &RollbackError{Path: s.path(name), Stored: v, Offered: offered}
		}
	}
	for name, blob := range metas {
		if err := writeAtomic(s.path(name), blob); err != nil {
			return err
		}
	}
	return nil
}

func writeAtomic(p string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return err
	}
	_, werr := f.Write(b)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(f.Name(), p)
	}
	if werr != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", p, werr)
	}
	return nil
}

// Remove deletes role name; a missing entry is not an error.
func (s *GUNStore) Remove(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fs.Remove(name)
}

// RemoveAll deletes every role of the GUN, and with them its rollback floor.
func (s *GUNStore) RemoveAll() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fs.RemoveAll()
}

// Location names the directory, for messages.
func (s *GUNStore) Location() string { return s.dir }

// pinningFile sits beside the metadata directory: it records the trust
// pinning the cached root was accepted under.
func (s *GUNStore) pinningFile() string { return filepath.Join(filepath.Dir(s.dir), "pinning") }

// RepinRoot makes sure the cached root was accepted under the trust pinning
// described by stamp. notary trusts a cached root without asking the pinning
// again, so when the operator's pinning for the GUN changes, the cached root
// is removed: the next update fetches the root and checks it against the new
// pinning. The other roles keep their rollback floors. It reports whether the
// root was removed.
func (s *GUNStore) RepinRoot(stamp string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, err := os.ReadFile(s.pinningFile())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("read %s: %w", s.pinningFile(), err)
	}
	if string(old) == stamp {
		return false, nil
	}
	_, statErr := os.Stat(filepath.Join(s.dir, "root.json"))
	removed := statErr == nil
	if err := s.fs.Remove("root"); err != nil {
		return false, fmt.Errorf("remove the cached root of %s: %w", s.dir, err)
	}
	if err := os.MkdirAll(filepath.Dir(s.pinningFile()), 0o700); err != nil {
		return false, err
	}
	if err := os.WriteFile(s.pinningFile(), []byte(stamp), 0o600); err != nil {
		return false, fmt.Errorf("record the trust pinning of %s: %w", s.dir, err)
	}
	return removed, nil
}
