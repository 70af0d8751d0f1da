package testenv

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// update is registered here, once, for every test binary that compares golden files.
var update = flag.Bool("update", false, "rewrite the testdata/*.golden files that testenv.Golden compares")

// Golden compares got with the golden file at path (testdata/<name>.golden) and fails t with
// the difference (-want +got). Run with -update, it first writes got to path, creating the
// folder: `go test -run TestX ./pkg -update` refreshes the file, and a missing file fails
// saying so.
func Golden(t testing.TB, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s (-want +got):\n%s", path, diff)
	}
}
