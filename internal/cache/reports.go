package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/redis/go-redis/v9"
)

// A StoredReport is a vulnerability scan report of one manifest, as
// trustproxy received it.
type StoredReport struct {
	Digest   digest.Digest   `json:"digest"`   // the manifest scanned
	Source   string          `json:"source"`   // the scanner's name, or "ci" for a posted report
	Received time.Time       `json:"received"` // when trustproxy got it: its age counts from here
	Report   json.RawMessage `json:"report"`   // the report as the scanner sent it
}

// ReportStore keeps scan reports by manifest digest, one file each under
// its directory, so that a report is reused across repositories and
// restarts until it ages out. Writes are atomic; the last one wins.
type ReportStore struct {
	dir    string
	shared *sharedReports // nil: this directory alone
}

// sharedReports keeps reports on Redis too, so every replica reuses what
// any of them received: <prefix>scan:report:<digest>, for sharedReportTTL.
type sharedReports struct {
	rdb    redis.UniversalClient
	prefix string
	health *RedisHealth
}

// sharedReportTTL bounds how long a report stays on Redis; policies age
// reports out far sooner (max_report_age).
const sharedReportTTL = 30 * 24 * time.Hour

// Share keeps reports on rdb as well, under keys starting with prefix:
// Get returns the newer of the disk's and Redis's, Put writes both. When
// Redis cannot be reached (health), the directory stands alone.
func (s *ReportStore) Share(rdb redis.UniversalClient, prefix string, health *RedisHealth) {
	s.shared = &sharedReports{rdb: rdb, prefix: prefix, health: health}
}

// maxStoredReport bounds a stored report file: a report plus its envelope.
const maxStoredReport = 17 << 20

// NewReportStore opens (creating) the report store in dir.
func NewReportStore(dir string) (*ReportStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("scan report store: %w", err)
	}
	return &ReportStore{dir: dir}, nil
}

func (s *ReportStore) path(d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", err
	}
	return filepath.Join(s.dir, d.Algorithm().String()+"-"+d.Encoded()+".json"), nil
}

// Get returns the report stored for d, or nil when there is none.
func (s *ReportStore) Get(d digest.Digest) (*StoredReport, error) {
	r, err := s.getDisk(d)
	if s.shared == nil || err != nil {
		return r, err
	}
	if sr := s.shared.get(d); sr != nil && (r == nil || sr.Received.After(r.Received)) {
		return sr, nil
	}
	return r, nil
}

func (s *sharedReports) get(d digest.Digest) *StoredReport {
	if s.health.Skip() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), RedisTimeout)
	defer cancel()
	b, err := s.rdb.Get(ctx, s.prefix+"scan:report:"+d.String()).Bytes()
	if s.health.Failed(err) || err != nil {
		return nil
	}
	var r StoredReport
	if len(b) > maxStoredReport || json.Unmarshal(b, &r) != nil || r.Digest != d {
		return nil
	}
	return &r
}

func (s *ReportStore) getDisk(d digest.Digest) (*StoredReport, error) {
	p, err := s.path(d)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxStoredReport+1))
	if err != nil {
		return nil, err
	}
	var r StoredReport
	if len(b) > maxStoredReport {
		err = fmt.Errorf("larger than %d bytes", maxStoredReport)
	} else if err = json.Unmarshal(b, &r); err == nil && r.Digest != d {
		err = fmt.Errorf("it is about %s", r.Digest)
	}
	if err != nil {
		return nil, fmt.Errorf("scan report %s is corrupt (delete it to scan again): %w", p, err)
	}
	return &r, nil
}

// Put stores r, replacing what was stored for its digest.
func (s *ReportStore) Put(r *StoredReport) error {
	p, err := s.path(r.Digest)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // as received: escaping could push a report over its bound
	if err := enc.Encode(r); err != nil {
		return err
	}
	if buf.Len() > maxStoredReport {
		return fmt.Errorf("the scan report of %s is %d bytes stored, over %d", r.Digest, buf.Len(), maxStoredReport)
	}
	if sh := s.shared; sh != nil && !sh.health.Skip() {
		ctx, cancel := context.WithTimeout(context.Background(), RedisTimeout)
		defer cancel()
		sh.health.Failed(sh.rdb.Set(ctx, sh.prefix+"scan:report:"+r.Digest.String(), buf.Bytes(), sharedReportTTL).Err())
	}
	return writeAtomic(p, buf.Bytes())
}
