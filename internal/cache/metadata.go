package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/theupdateframework/notary"
	"github.com/theupdateframework/notary/storage"
)

// MetadataStore keeps the TUF metadata of every GUN under one directory.
//
// Keys are never path-joined from names: a GUN's state lives in
// <dir>/<hex sha256 of the GUN>/, and each role in that directory is one
// file named by escapeRole(role) + ".json", an escaping with no path
// separators or dots (a name too long for that: "~" and its SHA-256). So no repository name or delegation name can reach
// into another GUN's state or another role's file, whatever it spells
// (library/app/metadata/timestamp.json, targets/../root, ...). Beside the
// roles: "gun" (the name, for people), "pinning" (the trust pinning the
// cached root was accepted under) and "refreshed" (when the trust server
// last gave a fresh timestamp).
//
// A GUN's directory is made by its first write, and notary writes only
// metadata its trust server returned and that verified: a request for a
// repository without trust data leaves nothing behind.
type MetadataStore struct {
	dir    string
	log    *slog.Logger
	locks  [64]sync.Mutex // writers in this process, striped by GUN
	shared *sharedFloor   // nil: no Redis, the disk floor alone
}

// Share makes sh the shared floor of every GUN: each role is read as the
// newer of the disk's and Redis's genuine entries, and a write that would
// lower Redis's version is refused. An entry on Redis holding more than
// limit bytes of metadata (the largest a role may be) is not read.
// What this replica stores while Redis does not answer is pushed up as
// soon as it answers again (pendingFloors).
func (m *MetadataStore) Share(sh *Shared, limit int64) {
	f := &sharedFloor{Shared: sh, limit: int(limit), pending: &pendingFloors{}}
	m.shared = f
	sh.OnClose(f.pending.close)
	sh.Health.Watch(func(degraded bool) {
		if !degraded {
			go f.push()
		}
	})
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
	m := &MetadataStore{dir: dir, log: log.With("component", "cache")}
	m.warnLegacy()
	return m, nil
}

// warnLegacy says when dir holds the per-name directories of an older
// trustproxy, whose layout let names alias each other; they are not read.
func (m *MetadataStore) warnLegacy() {
	entries, err := os.ReadDir(m.dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !isKeyDir(e.Name()) {
			m.log.Warn("trust metadata directory holds entries of an older layout; they are not read, and version floors start again from the trust servers: delete them",
				"dir", m.dir, "entry", e.Name())
			return
		}
	}
}

func isKeyDir(name string) bool {
	_, err := hex.DecodeString(name)
	return len(name) == 64 && err == nil
}

// For returns the store of gun. pinning describes the trust pinning that
// applies to gun now: a cached root accepted under other pinning is not
// handed to notary (so the root is fetched and checked again) but stays the
// version floor of the next root stored.
func (m *MetadataStore) For(gun, pinning string) *GUNStore {
	sum := sha256.Sum256([]byte(gun))
	return &GUNStore{
		dir:     filepath.Join(m.dir, hex.EncodeToString(sum[:])),
		gun:     gun,
		pinning: pinning,
		mu:      &m.locks[sum[0]%byte(len(m.locks))],
		log:     m.log.With("gun", gun),
		shared:  m.shared,
	}
}

// GUNStore is the notary storage.MetadataStore of one GUN. Set and SetMulti
// refuse to lower a role's signed version (*RollbackError); an entry that
// does not parse is reported as a *CorruptError by GetSized and Set. Every
// other failure to read or write is returned as it is: the caller must fail
// closed on it.
type GUNStore struct {
	dir     string
	gun     string
	pinning string
	mu      *sync.Mutex
	log     *slog.Logger
	shared  *sharedFloor
	dropped atomic.Bool // dropRotated ran
}

var _ storage.MetadataStore = (*GUNStore)(nil)

// RollbackError is returned when a write would lower a role's version.
type RollbackError struct {
	Path            string
	Stored, Offered int
}

func (e *RollbackError) Error() string {
	if strings.HasPrefix(e.Path, "redis ") {
		return fmt.Sprintf("refusing to replace version %d of %s, the newest any replica has seen, with older version %d (if the repository was re-created on purpose, delete that key and each replica's directory of it)",
			e.Stored, strings.TrimPrefix(e.Path, "redis "), e.Offered)
	}
	return fmt.Sprintf("refusing to replace version %d of %s with older version %d (if the repository was re-created on purpose, delete %s to forget its trust state)",
		e.Stored, e.Path, e.Offered, filepath.Dir(e.Path))
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

// maxRoleFile bounds an escaped role name, well inside file name limits;
// a longer one (notary allows 255 characters, and escaping triples some)
// is stored as "~" and its SHA-256, which escapeRole never writes.
const maxRoleFile = 200

// escapeRole makes a role name into a file name: letters other than a-z,
// and every byte but a-z, 0-9, "_" and "-", become %XX. It is injective and
// its result holds no "/" and no ".".
func escapeRole(name string) string {
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// File returns the path of role name's file; an empty name is an error.
func (s *GUNStore) File(name string) (string, error) {
	if name == "" {
		return "", errors.New("empty role name")
	}
	e := escapeRole(name)
	if len(e) > maxRoleFile {
		sum := sha256.Sum256([]byte(name))
		e = "~" + hex.EncodeToString(sum[:])
	}
	return filepath.Join(s.dir, e+".json"), nil
}

// Location names the GUN's directory, for messages.
func (s *GUNStore) Location() string { return s.dir }

// GetSized returns the stored metadata of role name, if it is at most size
// bytes (storage.NoSizeLimit: notary's maximum), as notary's FileStore does.
// A missing entry is storage.ErrMetaNotFound, and so is the root when it was
// accepted under other trust pinning; one larger than size is
// storage.ErrMaliciousServer; one that does not parse is a *CorruptError.
func (s *GUNStore) GetSized(name string, size int64) ([]byte, error) {
	if name == "root" {
		stamp, err := s.readSmall("pinning")
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		if stamp != s.pinning {
			if err == nil {
				s.log.Warn("trust pinning changed: the cached root is checked again against the new pinning, and stays the version floor")
			}
			return s.newerShared(name, size, nil, storage.ErrMetaNotFound{Resource: name})
		}
	}
	b, err := s.read(name, size)
	return s.newerShared(name, size, b, err)
}

// newerShared returns the shared metadata of role name when it is newer
// than what the disk gave (b, err), else b, err: the floor is the highest
// version any replica has stored. Only genuine entries count (sealed with
// the state key), and only those stored under the keys that the disk's root
// gives the role (its epoch). A root is never taken from Redis: notary
// trusts a cached root as given, so Redis's root is a version floor only
// (the compare-and-set refuses to lower it), and a replica's root always
// comes from its own disk or its Notary server, checked against its
// pinning. Shared metadata over size is ignored. A newer shared entry is
// kept on disk too, so that the replica never goes back below it whatever
// Redis holds later. When the disk holds a newer version than Redis
// (written while Redis was unreachable), it is pushed up: the shared floor
// never stays below a replica's.
func (s *GUNStore) newerShared(name string, size int64, b []byte, err error) ([]byte, error) {
	if s.shared == nil || (err != nil && !errors.As(err, new(storage.ErrMetaNotFound))) {
		return b, err
	}
	root, ok := s.diskRoot()
	if !ok && name != "root" {
		return b, err // no root of its own yet: nothing shared is usable
	}
	mine := root.entry(name, nil, 0)
	e, answered := s.shared.get(s.gun, name)
	if ferr := s.unanswered(answered); ferr != nil {
		return nil, ferr
	}
	if e != nil && name != "root" && e.Epoch != mine.Epoch {
		e = nil // stored under other keys for this role: another key generation
	}
	if e != nil && size != storage.NoSizeLimit && int64(len(e.blob)) > size {
		s.log.Warn("shared trust metadata on redis is larger than notary asks for; ignored", "role", name, "bytes", len(e.blob), "limit", size)
		e = nil
	}
	sv := -1
	if e != nil {
		sv = e.Version
	}
	if err == nil {
		if v, _ := Version(b); v > sv {
			// Pushed up only when Redis answered the read: during an
			// outage every read would find Redis "behind".
			if answered {
				if err := s.shared.set(s.gun, map[string]*floorEntry{name: root.entry(name, b, v)}); errors.Is(err, errUnanswered) || errors.Is(err, errNotShared) {
					s.shared.unshared(s, []string{name})
				}
			}
			return b, nil
		} else if v == sv || name == "root" {
			return b, nil
		}
	}
	if e == nil || name == "root" {
		return b, err
	}
	s.keep(name, e)
	return e.blob, nil
}

// FloorUnreadableError is what reads and writes of a GUN's trust metadata
// return while Redis does not answer and this replica holds no timestamp
// floor of its own for the GUN (it never verified it, nor took another
// replica's verified view of it, or it lost its disk): its rollback floor
// is then on Redis alone, and notary, given no floor, would take any
// unexpired metadata a trust server replays. Refused until Redis answers.
type FloorUnreadableError struct {
	GUN string
}

func (e *FloorUnreadableError) Error() string {
	return fmt.Sprintf("redis does not answer and this replica holds no trust data of its own for %s: the versions other replicas have seen are on redis alone", e.GUN)
}

// unanswered returns a *FloorUnreadableError when Redis did not answer
// (answered false) and the replica has no floor of its own for the GUN;
// nil when Redis answered, or the disk's floor stands alone (degraded).
func (s *GUNStore) unanswered(answered bool) error {
	if answered || s.ownFloor() {
		return nil
	}
	return &FloorUnreadableError{GUN: s.gun}
}

// ownFloor says whether the disk holds a timestamp floor of the GUN: the
// timestamp itself, stored only after Redis's floor was read and raised
// with it (or by this replica's verification before), which binds the
// snapshot and targets by hash; or the timestamp's mark RaiseFloor set
// when the replica took another's verified view. A floor file that does
// not read counts: SetMulti refuses on it.
func (s *GUNStore) ownFloor() bool {
	if _, err := s.read("timestamp", storage.NoSizeLimit); !errors.As(err, new(storage.ErrMetaNotFound)) {
		return true
	}
	floor, err := s.readFloor()
	_, marked := floor["timestamp"]
	return err != nil || marked
}

// FloorKnown returns a *FloorUnreadableError when the GUN's rollback floor
// cannot be known now: the replica shares its floor on Redis, Redis is
// down and not to be asked yet, and the disk holds no timestamp floor of
// the GUN (ownFloor). Asked before a trust server is: reads and writes
// during an update return the same error should Redis stop answering then.
func (s *GUNStore) FloorKnown() error {
	if s.shared == nil || !s.shared.Health.Skip() {
		return nil
	}
	return s.unanswered(false)
}

// keep stores a genuine shared entry newer than the disk's copy on disk.
// Failing to is logged, not returned: the disk floor is then what it was.
func (s *GUNStore) keep(name string, e *floorEntry) {
	if err := s.keepNewer(name, e); err != nil {
		s.log.Warn("cannot keep the newer shared trust metadata on disk", "role", name, "err", err)
	}
}

func (s *GUNStore) keepNewer(name string, e *floorEntry) error {
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	p, err := s.File(name)
	if err != nil {
		return err
	}
	if old, err := s.read(name, storage.NoSizeLimit); err == nil {
		if v, _ := Version(old); v >= e.Version {
			return nil
		}
	}
	return writeAtomic(p, e.blob)
}

func (s *GUNStore) read(name string, size int64) ([]byte, error) {
	p, err := s.File(name)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, storage.ErrMetaNotFound{Resource: name}
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if size == storage.NoSizeLimit {
		size = notary.MaxDownloadSize
	}
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() > size {
		return nil, storage.ErrMaliciousServer{}
	}
	b, err := io.ReadAll(io.LimitReader(f, size))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	if _, err := Version(b); err != nil {
		return nil, s.corrupt(p, err)
	}
	return b, nil
}

func (s *GUNStore) corrupt(path string, err error) error {
	e := &CorruptError{Path: path, Err: err}
	s.log.Error("corrupt trust metadata in cache", "path", e.Path, "err", err)
	return e
}

// Set stores blob as role name unless that would lower its version.
func (s *GUNStore) Set(name string, blob []byte) error {
	return s.SetMulti(map[string][]byte{name: blob})
}

// SetMulti stores every role, or none if any write would lower a version
// (below the stored metadata, or the floor RaiseFloor set) or any stored or
// offered entry is corrupt. Storing the root also records the pinning it
// was accepted under; a newer root that replaced the keys of the
// timestamp and snapshot roles (or of targets) drops their stored
// versions: TUF's fast-forward recovery (5.3.11). notary stores a root only
// once it verified it. The GUN's directory is made here.
func (s *GUNStore) SetMulti(metas map[string][]byte) error {
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	root, _ := s.diskRoot()
	var rotated []string
	if b, ok := metas["root"]; ok {
		next, err := parseRoot(b)
		if err != nil {
			return &CorruptError{Path: filepath.Join(s.dir, "root.json") + " (offered)", Err: err}
		}
		if next.Signed.Version > root.Signed.Version {
			rotated = root.rotatedIn(next)
		}
		root = next
	}
	floor, err := s.readFloor()
	if err != nil {
		return err
	}
	paths := make(map[string]string, len(metas))
	entries := make(map[string]*floorEntry, len(metas))
	for name, blob := range metas {
		p, err := s.File(name)
		if err != nil {
			return err
		}
		paths[name] = p
		offered, err := Version(blob)
		if err != nil {
			return &CorruptError{Path: p + " (offered)", Err: err}
		}
		entries[name] = root.entry(name, blob, offered)
		if m, ok := floor[name]; ok && m.binds(root, name) && offered < m.V {
			return &RollbackError{Path: p, Stored: m.V, Offered: offered}
		}
		// The floor is whatever is stored, the root too when its pinning changed.
		stored, err := s.read(name, storage.NoSizeLimit)
		if errors.As(err, new(storage.ErrMetaNotFound)) {
			continue
		}
		if err != nil {
			return err
		}
		if v, _ := Version(stored); offered < v {
			return &RollbackError{Path: p, Stored: v, Offered: offered}
		}
	}
	if s.shared != nil {
		err := s.shared.set(s.gun, entries)
		switch {
		case errors.Is(err, errUnanswered):
			if err = s.unanswered(false); err == nil {
				s.shared.unshared(s, slices.Collect(maps.Keys(metas)))
			}
		case errors.Is(err, errNotShared):
			err = nil
			s.shared.unshared(s, slices.Collect(maps.Keys(metas)))
		}
		if err != nil {
			return err
		}
	}
	if len(rotated) > 0 {
		if err := s.dropRotated(rotated, floor); err != nil {
			return err
		}
	}
	for name, blob := range metas {
		if err := writeAtomic(paths[name], blob); err != nil {
			return err
		}
	}
	if _, ok := metas["root"]; ok {
		return writeAtomic(filepath.Join(s.dir, "pinning"), []byte(s.pinning))
	}
	return nil
}

// dropRotated forgets the stored versions of roles whose keys a verified
// newer root replaced: their new keys start their versions again.
func (s *GUNStore) dropRotated(roles []string, floor map[string]floorMark) error {
	for _, name := range roles {
		p, err := s.File(name)
		if err != nil {
			return err
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		delete(floor, name)
	}
	s.dropped.Store(true)
	s.log.Info("a new root replaced these roles' keys: their stored versions are dropped, as TUF's fast-forward recovery asks", "roles", roles)
	return s.writeFloor(floor)
}

// DroppedRotated says whether a root stored through s replaced keys and
// so dropped stored versions (SetMulti).
func (s *GUNStore) DroppedRotated() bool { return s.dropped.Load() }

// RaiseFloor raises the version floor of each role of versions (role →
// version, as another replica verified them, under a root whose
// timestamp, snapshot and targets roles had the key IDs keys) for the
// writes that follow: a replica that uses another's verification never
// accepts older metadata afterwards. A floor binds only while the root in
// effect gives its role the same keys: after a verified rotation of them,
// the new keys' versions start again. RaiseFloor refuses, raising nothing,
// with a *RollbackError when a version is below what this replica has
// stored or seen under the same keys: the view is older than its own.
func (s *GUNStore) RaiseFloor(versions map[string]int, keys map[string][]string) error {
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	floor, err := s.readFloor()
	if err != nil {
		return err
	}
	var view rootKeys
	view.Signed.Version = versions["root"]
	view.Signed.Roles = map[string]roleKeys{}
	for role, ids := range keys {
		view.Signed.Roles[role] = roleKeys{ids}
	}
	disk, hasDisk := s.diskRoot()
	raised := false
	for name, v := range versions {
		p, err := s.File(name)
		if err != nil {
			return err
		}
		mark := floorMark{V: v, Root: view.Signed.Version, Epoch: view.epochOf(name)}
		have := 0
		if m, ok := floor[name]; ok && m.binds(view, name) {
			have = m.V
		}
		if hasDisk && disk.epochOf(name) == mark.Epoch && disk.Signed.Version <= mark.Root {
			if stored, err := s.read(name, storage.NoSizeLimit); err == nil {
				sv, _ := Version(stored)
				have = max(have, sv)
			} else if !errors.As(err, new(storage.ErrMetaNotFound)) {
				return err
			}
		}
		if hasDisk && name == "root" && disk.Signed.Version > v {
			have = disk.Signed.Version
		}
		if v < have {
			return &RollbackError{Path: p, Stored: have, Offered: v}
		}
		if m, ok := floor[name]; !ok || m.Epoch != mark.Epoch || v > m.V {
			floor[name], raised = mark, true
		}
	}
	if !raised {
		return nil
	}
	return s.writeFloor(floor)
}

// A floorMark is a version floor RaiseFloor set: the version, and the root
// version and the role's keys (epochOf) it was verified under.
type floorMark struct {
	V     int    `json:"v"`
	Root  int    `json:"root"`
	Epoch string `json:"epoch,omitempty"`
}

// binds says whether m holds for role name under root r: when r gives the
// role the keys m was verified under. A mark from a root newer than r binds
// too, whatever its keys: r is older than what this replica once trusted,
// so nothing verified under r may go below it. A mark under other keys of
// an older root does not: those keys were rotated out.
func (m floorMark) binds(r rootKeys, name string) bool {
	return m.Epoch == r.epochOf(name) || m.Root > r.Signed.Version
}

// maxFloorFile bounds the floor file: a version per role.
const maxFloorFile = 1 << 20

// readFloor returns the floors RaiseFloor set, by role.
func (s *GUNStore) readFloor() (map[string]floorMark, error) {
	p := filepath.Join(s.dir, "floor")
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]floorMark{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	floor := map[string]floorMark{}
	b, err := io.ReadAll(io.LimitReader(f, maxFloorFile+1))
	if err == nil && len(b) > maxFloorFile {
		err = errors.New("too large")
	}
	if err == nil {
		err = json.Unmarshal(b, &floor)
	}
	if err != nil {
		return nil, s.corrupt(p, err)
	}
	return floor, nil
}

func (s *GUNStore) writeFloor(floor map[string]floorMark) error {
	b, _ := json.Marshal(floor)
	return writeAtomic(filepath.Join(s.dir, "floor"), b)
}

// rootKeys is what the floor needs of a root: its version and each
// role's key IDs.
type rootKeys struct {
	Signed struct {
		Version int                 `json:"version"`
		Roles   map[string]roleKeys `json:"roles"`
	} `json:"signed"`
}

type roleKeys struct {
	KeyIDs []string `json:"keyids"`
}

func parseRoot(b []byte) (rootKeys, error) {
	var r rootKeys
	if err := json.Unmarshal(b, &r); err != nil {
		return r, err
	}
	if r.Signed.Version < 1 {
		return r, errors.New("no signed.version")
	}
	return r, nil
}

// diskRoot returns the root stored on disk, whatever pinning it was
// accepted under: the root whose keys the stored versions belong to.
func (s *GUNStore) diskRoot() (rootKeys, bool) {
	b, err := s.read("root", storage.NoSizeLimit)
	if err != nil {
		return rootKeys{}, false
	}
	r, err := parseRoot(b)
	return r, err == nil
}

// epochOf names the keys that role name's versions count under in r:
// timestamp and snapshot share one (TUF drops both when either key
// changes), targets has its own; the root and delegations have none (a
// delegation's keys live in its parent, whose versions never restart).
func (r rootKeys) epochOf(name string) string {
	var roles []string
	switch name {
	case "timestamp", "snapshot":
		roles = []string{"timestamp", "snapshot"}
	case "targets":
		roles = []string{"targets"}
	default:
		return ""
	}
	h := sha256.New()
	for _, role := range roles {
		ids := slices.Clone(r.Signed.Roles[role].KeyIDs)
		slices.Sort(ids)
		fmt.Fprintf(h, "%s %q\n", role, ids)
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// rotatedIn lists the roles whose stored versions next, a newer root, no
// longer binds: those whose keys it replaced.
func (r rootKeys) rotatedIn(next rootKeys) []string {
	var out []string
	for _, name := range []string{"timestamp", "snapshot", "targets"} {
		if r.Signed.Version > 0 && r.epochOf(name) != next.epochOf(name) {
			out = append(out, name)
		}
	}
	return out
}

// entry is role name's floor entry for blob at version v, stored under r.
func (r rootKeys) entry(name string, blob []byte, v int) *floorEntry {
	if name == "root" {
		return &floorEntry{Version: v, Root: v, blob: blob}
	}
	return &floorEntry{Version: v, Root: r.Signed.Version, Epoch: r.epochOf(name), blob: blob}
}

// lock takes the GUN's write locks, this process's and the cross-process
// one on its directory, which it makes (with its "gun" file) if need be.
// The func it returns releases both.
func (s *GUNStore) lock() (func(), error) {
	s.mu.Lock()
	unlock, err := s.lockDir()
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	return func() { unlock(); s.mu.Unlock() }, nil
}

func (s *GUNStore) lockDir() (func(), error) {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, fmt.Errorf("create trust metadata directory of %s: %w", s.gun, err)
	}
	unlock, err := lockDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("lock trust metadata %s: %w", s.dir, err)
	}
	name := filepath.Join(s.dir, "gun")
	if _, err := os.Stat(name); errors.Is(err, fs.ErrNotExist) {
		err = writeAtomic(name, []byte(s.gun+"\n"))
		if err != nil {
			unlock()
			return nil, err
		}
	}
	return unlock, nil
}

// readSmall reads one of the GUN's small files ("pinning", "refreshed").
func (s *GUNStore) readSmall(name string) (string, error) {
	f, err := os.Open(filepath.Join(s.dir, name))
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	return string(b), err
}

// Refreshed returns when MarkRefreshed last recorded a fresh timestamp;
// zero if never.
func (s *GUNStore) Refreshed() (time.Time, error) {
	v, err := s.readSmall("refreshed")
	if errors.Is(err, fs.ErrNotExist) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, err
	}
	t, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(v))
	if err != nil {
		return time.Time{}, s.corrupt(filepath.Join(s.dir, "refreshed"), err)
	}
	return t, nil
}

// MarkRefreshed records t as when the trust server last gave a fresh
// timestamp. The last record wins, so a clock that jumped ahead and back
// does not keep staleness from counting.
func (s *GUNStore) MarkRefreshed(t time.Time) error {
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	return writeAtomic(filepath.Join(s.dir, "refreshed"), []byte(t.UTC().Format(time.RFC3339Nano)))
}

func writeAtomic(p string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
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

// Remove deletes role name; a missing entry is not an error. notary's
// update never calls it: it would drop the role's version floor.
func (s *GUNStore) Remove(name string) error {
	p, err := s.File(name)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// RemoveAll deletes the GUN's state, and with it its version floors.
func (s *GUNStore) RemoveAll() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return os.RemoveAll(s.dir)
}
