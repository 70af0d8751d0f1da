package depcheck

import (
	"bufio"
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/trustproxy/trustproxy/"

// allowed is, for each package of the module, the packages of the module
// it may import directly. The layers, bottom up: the leaves (severity, gun,
// manifest, sample, trustserver) import nothing of ours; config sits on
// severity, egress and cache on config; trust, scan, refgraph, upstream and
// fill each do one job on those (cosign and notation, trust sources beside trust, sit
// on referrers alone: their caller hands them the upstream's transport, and
// proxy Notation's revocation client, egress's Public); proxy (the HTTP face and decide) uses them
// all; wiring opens them all and hands them to proxy; reload takes a new
// configuration (config alone); cmd reads config, opens, serves, reloads
// (and names signers' keys with trust). No package imports one above it: trust, scan, cache, egress
// and the leaf packages never import proxy, and proxy never imports wiring.
var allowed = map[string][]string{
	"internal/severity":    {},
	"config":               {"internal/severity"},
	"internal/gun":         {},
	"internal/manifest":    {},
	"internal/egress":      {"config"},
	"internal/sample":      {},
	"internal/trustserver": {},
	"internal/depcheck":    {},
	"internal/cache":       {"config"},
	"internal/trust":       {"config", "internal/cache", "internal/egress", "internal/gun"},
	"internal/scan":        {"config", "internal/cache", "internal/severity"},
	"internal/refgraph":    {"internal/cache", "internal/manifest"},
	"internal/referrers":   {},
	"internal/cosign":      {"internal/referrers"},
	"internal/notation":    {"internal/referrers"},
	"internal/upstream":    {"config", "internal/egress", "internal/gun", "internal/manifest"},
	"internal/fill":        {"config", "internal/cache", "internal/gun", "internal/upstream"},
	"internal/proxy": {"config", "internal/cache", "internal/cosign", "internal/egress", "internal/fill", "internal/gun", "internal/manifest", "internal/notation",
		"internal/refgraph", "internal/referrers", "internal/scan", "internal/trust", "internal/upstream"},
	"internal/retention": {"config", "internal/cache", "internal/fill", "internal/gun", "internal/manifest", "internal/trust"},
	"internal/wiring": {"config", "internal/cache", "internal/fill", "internal/proxy", "internal/refgraph",
		"internal/retention", "internal/scan", "internal/trust"},
	"internal/demo":    {"internal/sample", "internal/trustserver"},
	"internal/testenv": {"internal/sample", "internal/scan", "internal/severity"},
	"internal/reload":  {"config"},
	"cmd/trustproxy": {"config", "internal/demo", "internal/proxy", "internal/reload", "internal/sample",
		"internal/trust", "internal/wiring"},
	"bench":  {},
	"deploy": {},
}

// TestImportDirection lists every package of the module with the go tool
// and fails on an import the table above does not allow, and on a package
// the table does not know (a new package takes its place in the layers on
// purpose).
func TestImportDirection(t *testing.T) {
	cmd := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, module+"...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	seen := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		pkg := strings.TrimPrefix(fields[0], module)
		may, known := allowed[pkg]
		if !known {
			t.Errorf("package %s is not in the import table: give it its layer in depcheck_test.go and docs/ARCHITECTURE.md", pkg)
			continue
		}
		seen++
		for _, imp := range fields[1:] {
			own, ok := strings.CutPrefix(imp, module)
			if ok && !slices.Contains(may, own) {
				t.Errorf("%s imports %s, which its layer may not (allowed: %v)", pkg, own, may)
			}
		}
	}
	if seen < 10 {
		t.Fatalf("go list named only %d packages:\n%s", seen, out)
	}
}
