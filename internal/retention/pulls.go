package retention

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"path"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/internal/gun"
)

// pullsRoot is where pull records are kept in storage, beside
// distribution's /docker tree and outside it, so that distribution's own
// walks (catalog, garbage collection) never meet them.
const pullsRoot = "/trustproxy/retention/pulls"

// maxRecordBytes bounds a pull record read from storage.
const maxRecordBytes = 4096

// Pulls records, in storage, when each repository's manifests were last
// pulled: one small object per repository and manifest digest, rewritten at
// most once per throttle by each replica. It is kept in the storage every
// replica shares (not on Redis): whoever can write the storage can remove
// content anyway, while a Redis writer must not be able to make live
// content look unpulled (by deleting or replaying records). Pulls
// implements proxy.Pulls.
type Pulls struct {
	driver   storagedriver.StorageDriver
	throttle time.Duration
	log      *slog.Logger
	recent   *lru.Cache[string, time.Time] // when this process last wrote each GUN@digest
	now      func() time.Time
}

// A record is one repository's last pull of one manifest.
type record struct {
	Upstream string        `json:"upstream"`
	Path     string        `json:"path"`
	Digest   digest.Digest `json:"digest"`
	Pulled   time.Time     `json:"pulled"`
}

func (r record) name() (gun.Name, error) { return gun.New(r.Upstream, r.Path) }

// NewPulls returns the pull records kept in d. A record is rewritten at
// most once per throttle by this process: a record's time may lag the
// last pull by up to throttle, which the collector adds to max_age.
func NewPulls(d storagedriver.StorageDriver, throttle time.Duration, log *slog.Logger) *Pulls {
	recent, _ := lru.New[string, time.Time](16384)
	return &Pulls{driver: d, throttle: throttle, log: log, recent: recent, now: time.Now}
}

// parseRecord reads the pull record b, kept at path in the storage. A
// record that does not read, or names a repository or manifest other than
// the one its path is for, is refused.
func parseRecord(b []byte, path string) (record, error) {
	var r record
	if json.Unmarshal(b, &r) != nil || r.Digest.Validate() != nil {
		return record{}, errors.New("it does not read")
	}
	n, err := r.name()
	if err != nil || recordPath(n.String(), r.Digest) != path {
		return record{}, errors.New("it is kept under another name")
	}
	return r, nil
}

// recordPath is the record of manifest d of the repository named gunName:
// the repository by the hash of its GUN (one directory each, whatever the
// name's shape), the manifest by its hex digest.
func recordPath(gunName string, d digest.Digest) string {
	h := sha256.Sum256([]byte(gunName))
	return path.Join(pullsRoot, hex.EncodeToString(h[:]), d.Algorithm().String()+"-"+d.Encoded())
}

// Record records that manifest d of repository name was pulled now. A
// failure is logged: the pull is served anyway, and the collector still
// keeps what the repository's other records, or its content's age, keep.
func (p *Pulls) Record(ctx context.Context, name gun.Name, d digest.Digest) {
	key := name.At(d)
	now := p.now()
	if last, ok := p.recent.Get(key); ok && now.Sub(last) < p.throttle {
		return
	}
	b, _ := json.Marshal(record{Upstream: name.Upstream(), Path: name.Path(), Digest: d, Pulled: now.UTC()})
	if err := p.driver.PutContent(context.WithoutCancel(ctx), recordPath(name.String(), d), b); err != nil {
		p.log.Warn("cannot record a pull for retention", "repo", name.String(), "digest", d, "err", err)
		return
	}
	p.recent.Add(key, now)
}

// list reads the pull records whose objects were written at or after
// since (all of them when since is zero). A record that does not read, or
// lies about where it is kept, is logged and skipped.
func (p *Pulls) list(ctx context.Context, since time.Time) ([]record, error) {
	var out []record
	err := p.driver.Walk(ctx, pullsRoot, func(fi storagedriver.FileInfo) error {
		if fi.IsDir() || fi.ModTime().Before(since) {
			return nil
		}
		if fi.Size() > maxRecordBytes {
			p.log.Warn("ignored an oversized pull record", "path", fi.Path(), "size", fi.Size())
			return nil
		}
		b, err := p.driver.GetContent(ctx, fi.Path())
		if errors.As(err, &storagedriver.PathNotFoundError{}) {
			return nil // removed meanwhile
		}
		if err != nil {
			return err
		}
		r, err := parseRecord(b, fi.Path())
		if err != nil {
			p.log.Warn("ignored a pull record: "+err.Error(), "path", fi.Path())
			return nil
		}
		out = append(out, r)
		return nil
	})
	if errors.As(err, &storagedriver.PathNotFoundError{}) {
		return nil, nil // nothing recorded yet
	}
	return out, err
}

// remove deletes the record of manifest d of the repository named gunName.
func (p *Pulls) remove(ctx context.Context, gunName string, d digest.Digest) error {
	err := p.driver.Delete(ctx, recordPath(gunName, d))
	if errors.As(err, &storagedriver.PathNotFoundError{}) {
		return nil
	}
	return err
}
