package cache

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

func TestReportStore(t *testing.T) {
	dir := t.TempDir()
	s, err := NewReportStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	d := digest.FromString("manifest")
	if r, err := s.Get(d); r != nil || err != nil {
		t.Fatalf("Get before Put: %v %v", r, err)
	}
	want := &StoredReport{Digest: d, Source: "trivy", Received: time.Now().UTC().Truncate(time.Second), Report: json.RawMessage(`{"vulnerabilities":[]}`)}
	if stood, err := s.Put(want); err != nil || stood != want {
		t.Fatal(stood, err)
	}
	// A report received earlier (a scan that started before it) does not replace it.
	older := &StoredReport{Digest: d, Source: "scanner", Received: want.Received.Add(-time.Minute), Report: json.RawMessage(`{}`)}
	if stood, err := s.Put(older); err != nil || stood.Source != "trivy" {
		t.Fatalf("Put of an older report: %+v %v, want the stored one to stand", stood, err)
	}
	got, err := s.Get(d)
	if err != nil || got.Source != "trivy" || !got.Received.Equal(want.Received) || string(got.Report) != string(want.Report) {
		t.Fatalf("Get: %+v %v", got, err)
	}
	// A file holding another digest's report is corrupt, not that report.
	other := digest.FromString("other")
	b, _ := os.ReadFile(filepath.Join(dir, "sha256-"+d.Encoded()+".json"))
	if err := os.WriteFile(filepath.Join(dir, "sha256-"+other.Encoded()+".json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Get(other); r != nil || err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("Get of a moved report: %v %v", r, err)
	}
	if _, err := s.Get("sha256:../../etc"); err == nil {
		t.Fatal("Get accepted an invalid digest")
	}
}
