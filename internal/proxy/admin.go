package proxy

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/trustproxy/trustproxy/internal/scan"
)

// adminHandler serves the admin API: POST /admin/scan/reports/<digest>,
// a report that CI posts for a manifest, guarded by the bearer token of
// scan.report_token_file.
func (s *Server) adminHandler(w http.ResponseWriter, r *http.Request) {
	fail := func(status int, msg string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
	}
	rest, ok := strings.CutPrefix(r.URL.Path, "/admin/scan/reports/")
	if !ok || r.Method != http.MethodPost {
		fail(http.StatusNotFound, "the admin API has one route: POST /admin/scan/reports/<manifest digest>")
		return
	}
	token := s.policy.Load().cfg.Scan.ReportToken
	if s.gate == nil || token == "" {
		fail(http.StatusNotFound, "posting scan reports is off: set scan.report_token_file")
		return
	}
	got, isBearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	gotSum, wantSum := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(token)) // equal lengths: nothing leaks by timing
	if !isBearer || subtle.ConstantTimeCompare(gotSum[:], wantSum[:]) != 1 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="trustproxy admin"`)
		fail(http.StatusUnauthorized, "a report must be posted with the bearer token of scan.report_token_file")
		return
	}
	d, err := digest.Parse(rest)
	if err != nil || d.Algorithm() != digest.SHA256 {
		fail(http.StatusBadRequest, fmt.Sprintf("%q is not a sha256 manifest digest", rest))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, scan.MaxReportBytes))
	if mbe, ok := errors.AsType[*http.MaxBytesError](err); ok {
		fail(http.StatusRequestEntityTooLarge, fmt.Sprintf("the report is over %d bytes", mbe.Limit))
		return
	}
	if err != nil {
		fail(http.StatusBadRequest, "read the report: "+err.Error())
		return
	}
	if err := s.gate.Accept(d, body); err != nil {
		fail(http.StatusBadRequest, "report refused, nothing stored: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(map[string]string{"digest": d.String(), "stored": "ok"})
}
