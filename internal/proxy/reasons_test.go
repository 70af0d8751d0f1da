package proxy

import (
	"bytes"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"log/slog"
	"maps"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/gun"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// wantReasons is what each reason must be for a client, written out here
// apart from the table in reasons.go: the HTTP status and registry error
// code of its refusal, and whether an audit rule serves it anyway. A
// reference the verified trust view does not hold is 404; everything else a
// policy refuses is 403 DENIED; a write or a misused scan credential is
// refused under every rule.
var wantReasons = map[string]struct {
	status    int
	code      string
	auditable bool
}{
	"no_rule":             {403, "DENIED", true},
	"no_trust_server":     {403, "DENIED", true},
	"no_trust_data":       {403, "DENIED", true},
	"root_not_pinned":     {403, "DENIED", true},
	"not_signed":          {404, "MANIFEST_UNKNOWN", true},
	"untrusted_signer":    {403, "DENIED", true},
	"expired":             {403, "DENIED", true},
	"invalid_metadata":    {403, "DENIED", true},
	"rollback":            {403, "DENIED", true},
	"trust_unavailable":   {403, "DENIED", true},
	"digest_mismatch":     {403, "DENIED", true},
	"invalid_manifest":    {403, "DENIED", true},
	"invalid_signature":   {403, "DENIED", true},
	"no_tlog":             {403, "DENIED", true},
	"identity_mismatch":   {403, "DENIED", true},
	"certificate_expired": {403, "DENIED", true},
	"revoked":             {403, "DENIED", true},
	"revocation_unknown":  {403, "DENIED", true},
	"not_referenced":      {404, "BLOB_UNKNOWN", true},
	"vulnerable":          {403, "DENIED", true},
	"scan_pending":        {403, "DENIED", true},
	"scan_missing":        {403, "DENIED", true},
	"scan_unavailable":    {403, "DENIED", true},
	"read_only":           {403, "DENIED", false},
	"scan_credential":     {403, "DENIED", false},
}

// TestReasonTableIsComplete: every refusal reason trust, the scan gate and
// the proxy define is in the table of reasons.go, and in this test's.
func TestReasonTableIsComplete(t *testing.T) {
	defined := slices.Concat(
		reasonConsts(t, filepath.Join("..", "trust", "refusal.go"), "Reason"),
		reasonConsts(t, filepath.Join("..", "scan", "gate.go"), "Reason"),
		reasonConsts(t, "reasons.go", "Reason"),
	)
	defined = slices.DeleteFunc(defined, func(r string) bool { return r == string(ReasonVerified) })
	slices.Sort(defined)
	if diff := cmp.Diff(defined, slices.Sorted(func(yield func(string) bool) {
		for r := range reasons {
			if !yield(string(r)) {
				return
			}
		}
	})); diff != "" {
		t.Errorf("reasons defined (-) and in the table of reasons.go (+):\n%s", diff)
	}
	if diff := cmp.Diff(defined, slices.Sorted(maps.Keys(wantReasons))); diff != "" {
		t.Errorf("reasons defined (-) and in wantReasons (+):\n%s", diff)
	}
}

// reasonConsts reads the string constants of file whose name starts with
// prefix or whose type is Reason: the reasons a package defines.
func reasonConsts(t *testing.T, file, prefix string) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, decl := range f.Decls {
		g, ok := decl.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, spec := range g.Specs {
			v := spec.(*ast.ValueSpec)
			typed := false
			if id, ok := v.Type.(*ast.Ident); ok && id.Name == "Reason" {
				typed = true
			}
			for i, name := range v.Names {
				lit, ok := v.Values[i].(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING || !(typed || strings.HasPrefix(name.Name, prefix)) {
					continue
				}
				s, _ := strconv.Unquote(lit.Value)
				out = append(out, s)
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s defines no reasons", file)
	}
	return out
}

// TestEveryReason sends a refusal of every reason through conclude, the
// step of decide that every refusal takes, under an enforce and an audit
// rule, and checks what the client and the operator get: the HTTP status
// and registry error code (writeError), the message naming the reason, the
// decision line, and the trustproxy_decisions_total label.
func TestEveryReason(t *testing.T) {
	var logs bytes.Buffer
	reg := prometheus.NewRegistry()
	cfg := &config.Config{
		DataDir:   t.TempDir(),
		Upstreams: []config.Upstream{{Name: "docker.io", Endpoint: config.Endpoint{URL: "https://registry-1.docker.io"}}},
		Limits:    config.Limits{UpstreamTimeout: 5 * time.Second, BlobIdleTimeout: time.Minute, MinTransferRate: 1 << 20},
	}
	s, err := New(cfg, Parts{}, slog.New(slog.NewJSONHandler(&logs, nil)), reg)
	if err != nil {
		t.Fatal(err)
	}
	name, err := gun.New("docker.io", "library/app")
	if err != nil {
		t.Fatal(err)
	}
	for reason, want := range wantReasons {
		for _, mode := range []config.Mode{config.Enforce, config.Audit} {
			logs.Reset()
			req := &request{kind: kindManifest, name: name, ref: "v1"}
			d := &Decision{Repository: name.String(), Upstream: name.Upstream(), Ref: req.ref, Kind: "manifest", Size: -1,
				Rule: &config.Rule{Repositories: "docker.io/**", Mode: mode}}
			var refusal error = &Refusal{Reason: Reason(reason), GUN: name.String(), Detail: "what happened"}
			if _, ok := reasons[Reason(reason)]; ok && reasons[Reason(reason)].source == fromTrust {
				refusal = &trust.RefusalError{Reason: trust.Reason(reason), GUN: name.String(), Detail: "what happened"}
			}
			d, err := s.conclude(t.Context(), req, d, refusal)
			verdict := "denied"
			if mode == config.Audit && want.auditable {
				verdict = "audit"
			}
			if string(d.Verdict) != verdict || string(d.Reason) != reason {
				t.Errorf("%s (%s): verdict %s reason %s, want %s", reason, mode, d.Verdict, d.Reason, verdict)
			}
			var line map[string]any
			if err := json.Unmarshal(logs.Bytes(), &line); err != nil || line["msg"] != "decision" ||
				line["reason"] != reason || line["verdict"] != verdict || line["repo"] != "docker.io/library/app" ||
				!strings.Contains(line["message"].(string), "docker.io/library/app:v1 refused ("+reason+"): what happened") {
				t.Errorf("%s (%s): decision line %s", reason, mode, logs.String())
			}
			if n := testutil.ToFloat64(s.metrics.decisions.WithLabelValues(verdict, reason, "docker.io", "0")); n != 1 {
				t.Errorf("%s (%s): trustproxy_decisions_total{verdict=%q,reason=%q,upstream=docker.io,rule=0} = %v, want 1", reason, mode, verdict, reason, n)
			}
			s.metrics.decisions.Reset()
			if verdict == "audit" {
				if err != nil {
					t.Errorf("%s (audit): error %v, want none: the request is served", reason, err)
				}
				continue
			}
			rec := httptest.NewRecorder()
			writeError(rec, err)
			var body struct {
				Errors []struct{ Code, Message string } `json:"errors"`
			}
			if json.Unmarshal(rec.Body.Bytes(), &body) != nil || len(body.Errors) != 1 || rec.Code != want.status ||
				body.Errors[0].Code != want.code || !strings.Contains(body.Errors[0].Message, "("+reason+")") {
				t.Errorf("%s (%s): client got %d %s, want %d %s naming the reason", reason, mode, rec.Code, rec.Body, want.status, want.code)
			}
		}
	}
}
