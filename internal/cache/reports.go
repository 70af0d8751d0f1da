package cache

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
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
	dir string
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
	return writeAtomic(p, buf.Bytes())
}
