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
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
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
	shared *Shared    // nil: this directory alone
	mu     sync.Mutex // Put's read and write of one report
}

// sharedReportTTL bounds how long a report stays on Redis; policies age
// reports out far sooner (max_report_age).
const sharedReportTTL = 30 * 24 * time.Hour

// Share keeps reports on Redis as well, sealed, at <prefix>scan:report:<digest>
// for sharedReportTTL, so every replica reuses what any of them received:
// Put writes both, Get returns the newer genuine one. A report from Redis
// newer than the disk's is kept on disk too, so a replica never goes back
// to an older report for a digest, whatever Redis holds later (a Redis
// writer restoring yesterday's clean report over today's failing one).
// When Redis cannot be reached, the directory stands alone.
func (s *ReportStore) Share(sh *Shared) {
	s.shared = sh
}

// ScanLeaseTTL is how long a scan's lease names a replica that stopped
// refreshing it (it died mid-scan).
const ScanLeaseTTL = 15 * time.Second

// LeaseScan takes the lease of a scan of d among the replicas sharing
// Redis, sealed at <prefix>scan:lease:<digest>: the Lease when this replica
// is to scan d, or the entry of the replica that scans it, whose report
// will reach Get. Neither when the store is not shared or Redis does not
// answer: scan here. A lease that is not genuine, or is over, is replaced
// (Shared.Acquire), so a Redis writer cannot hold scans off beyond
// replaying a genuine lease until its end; and a lease never stands for a
// report: the gate serves only on a report it reads.
func (s *ReportStore) LeaseScan(d digest.Digest) (*Lease, *LeaseEntry) {
	if s.shared == nil {
		return nil, nil
	}
	return s.shared.Acquire(KindScanLease, s.leaseKey(d), "", ScanLeaseTTL)
}

// ScanLease returns the genuine lease of a scan of d on Redis (live or
// over), or nil.
func (s *ReportStore) ScanLease(d digest.Digest) *LeaseEntry {
	if s.shared == nil {
		return nil
	}
	return s.shared.ReadLease(context.Background(), KindScanLease, s.leaseKey(d))
}

func (s *ReportStore) leaseKey(d digest.Digest) string {
	return s.shared.Key("scan:lease:" + d.String())
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
	sr := s.getShared(d)
	if sr == nil || (r != nil && !sr.Received.After(r.Received)) {
		return r, nil
	}
	p, err := s.path(d)
	if err == nil {
		var b []byte
		if b, err = encodeReport(sr); err == nil {
			err = writeAtomic(p, b)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("keep the shared scan report of %s: %w", d, err)
	}
	return sr, nil
}

func (s *ReportStore) sharedKey(d digest.Digest) string {
	return s.shared.Key("scan:report:" + d.String())
}

// getShared returns the genuine report on Redis for d, or nil.
func (s *ReportStore) getShared(d digest.Digest) *StoredReport {
	key := s.sharedKey(d)
	b := s.shared.Get(context.Background(), KindReport, key, maxStoredReport)
	if b == nil {
		return nil
	}
	var r StoredReport
	if len(b) > maxStoredReport || json.Unmarshal(b, &r) != nil || r.Digest != d {
		s.shared.Reject(KindReport, key, "a sealed report that does not read")
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

// Put stores r unless a report received later is stored for its digest
// (here or, shared, on Redis): the newest report wins, so a scan that
// started before CI posted a report cannot replace CI's with its own. It
// returns the report that stands.
func (s *ReportStore) Put(r *StoredReport) (*StoredReport, error) {
	p, err := s.path(r.Digest)
	if err != nil {
		return nil, err
	}
	b, err := encodeReport(r)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if have, err := s.Get(r.Digest); err == nil && have != nil && have.Received.After(r.Received) {
		return have, nil
	}
	if sh := s.shared; sh != nil && !sh.Health.Skip() {
		ctx, cancel := sh.Bound(context.Background())
		defer cancel()
		key := s.sharedKey(r.Digest)
		sh.Health.Failed(sh.Redis.Set(ctx, key, sh.Seal(KindReport, key, b), sharedReportTTL).Err())
	}
	return r, writeAtomic(p, b)
}

// encodeReport is r as stored, within maxStoredReport.
func encodeReport(r *StoredReport) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // as received: escaping could push a report over its bound
	if err := enc.Encode(r); err != nil {
		return nil, err
	}
	if buf.Len() > maxStoredReport {
		return nil, fmt.Errorf("the scan report of %s is %d bytes stored, over %d", r.Digest, buf.Len(), maxStoredReport)
	}
	return buf.Bytes(), nil
}
