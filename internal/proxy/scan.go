package proxy

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/internal/scan"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// ReasonScanCredential refuses a use of a scanner's pull credential other
// than the one it was minted for.
const ReasonScanCredential trust.Reason = "scan_credential"

// scanStep is decide's last step for a verified manifest under a rule with
// a scan policy: an image manifest passes only when the gate says its scan
// does. An index is not scanned itself; each platform manifest is, when it
// is pulled, and their scans start when the index is first seen. The
// scanner's own pull (its credential names this digest) skips the gate
// until a report that arrived after the credential was minted fails the
// policy (scan.Gate.CheckCredential).
func (s *Server) scanStep(ctx context.Context, req *request, d *Decision, m *verifiedManifest) error {
	p := d.Rule.Scan
	if p == nil || s.gate == nil {
		return nil
	}
	if m.index {
		d.Scan = &scan.Verdict{Pass: true, Detail: "an index is not scanned itself; each platform manifest is, when pulled"}
		if d.source == "upstream" {
			for _, c := range m.refs {
				if isManifestType(c.MediaType) && !manifestTypes[c.MediaType] {
					s.gate.Prefetch(scan.Subject{Repository: req.gun, Digest: c.Digest, MediaType: c.MediaType}, p)
				}
			}
		}
		return nil
	}
	if g := req.grant; g != nil && g.Digest == m.digest {
		v := s.gate.CheckCredential(*g, p)
		d.Scan = &v
		if !v.Pass {
			return &trust.RefusalError{GUN: req.gun, Ref: req.ref, Reason: trust.Reason(v.Reason), Detail: v.Detail}
		}
		return nil
	}
	subject := scan.Subject{Repository: req.gun, Digest: m.digest, MediaType: m.mediaType}
	if req.rescan {
		if _, err := s.gate.Scan(ctx, subject); err != nil {
			s.log.Warn("scan on demand failed", "repo", req.gun, "digest", m.digest, "err", err)
		}
	}
	v := s.gate.Check(ctx, subject, p)
	d.Scan = &v
	if !v.Pass {
		return &trust.RefusalError{GUN: req.gun, Ref: req.ref, Reason: trust.Reason(v.Reason), Detail: v.Detail}
	}
	return nil
}

// checkGrant reads a scanner's pull credential from r, if it carries one,
// and refuses any use of it but the one it was minted for: the manifest of
// its digest in its repository, and the blobs and platform manifests that
// manifest refers to. Requests without one pass untouched.
func (s *Server) checkGrant(r *http.Request, req *request) error {
	if s.gate == nil {
		return nil
	}
	g, ok, err := s.gate.Credentials().Check(r.Header.Get("Authorization"))
	if !ok {
		return nil
	}
	refuse := func(detail string) error {
		s.log.Warn("scan credential refused", "repo", req.gun, "ref", req.ref, "detail", detail)
		return &trust.RefusalError{GUN: req.gun, Ref: req.ref, Reason: ReasonScanCredential, Detail: detail}
	}
	if err != nil {
		return refuse(err.Error())
	}
	only := fmt.Sprintf("the scan credential is for %s@%s and what it refers to only", g.Repository, g.Digest)
	if req.gun != g.Repository || req.kind == kindTags {
		return refuse(only)
	}
	if req.dgst != g.Digest {
		if req.dgst == "" || !s.grantCovers(r.Context(), req, g) {
			return refuse(only)
		}
	}
	req.grant = &g
	return nil
}

// grantCovers says whether req's digest is listed by the manifest g is
// for: from the index, or else from the stored manifest (the index may have
// forgotten it between the scanner's manifest pull and its layer pulls).
func (s *Server) grantCovers(ctx context.Context, req *request, g scan.Grant) bool {
	listed := func(children []v1.Descriptor) bool {
		return slices.ContainsFunc(children, func(c v1.Descriptor) bool { return c.Digest == req.dgst })
	}
	if children, ok := s.index.children(g.Digest); ok {
		return listed(children)
	}
	_ = s.record(ctx, req, v1.Descriptor{Digest: g.Digest, Size: -1}, 0, map[digest.Digest]bool{})
	children, _ := s.index.children(g.Digest)
	return listed(children)
}

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
	token := s.cfg.Scan.ReportToken
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

// Handler serves the registry API (/v2/) and the admin API (/admin/), and
// sends every other path to other (metrics, health). Registry paths reach
// the Server as they came: an http.ServeMux would clean them and redirect,
// where the Server refuses what is not canonical.
func (s *Server) Handler(other http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch p := r.URL.Path; {
		case p == "/v2" || strings.HasPrefix(p, "/v2/"):
			s.ServeHTTP(w, r)
		case strings.HasPrefix(p, "/admin/"):
			s.adminHandler(w, r)
		case p == "/internal/fills":
			s.servePeerFill(w, r)
		default:
			other.ServeHTTP(w, r)
		}
	})
}
