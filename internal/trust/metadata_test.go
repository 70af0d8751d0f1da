package trust

import (
	"strings"
	"testing"
)

// FuzzMetadataFile checks the file names of notary's read API that
// trustproxy serves: what parseMetadataFile accepts is exactly
// [<version>.]<role>[.<hex>].json put back together, its role a notary role
// name without empty, "." or ".." parts, and never a path out of the
// repository.
func FuzzMetadataFile(f *testing.F) {
	for _, s := range []string{
		"root.json", "timestamp.json", "2.root.json", "targets/releases.json", "5.snapshot.json",
		"snapshot." + strings.Repeat("ab", 32) + ".json", "targets." + strings.Repeat("cd", 64) + ".json",
		"targets/releases." + strings.Repeat("0", 64) + ".json", "targets/a/b/c.json",
		"../root.json", "targets/../root.json", "bogus.json", "root", "0.root.json", "root.XYZ.json",
		"targets//x.json", "targets/.json", "/root.json",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, file string) {
		version, role, hash, ok := parseMetadataFile(file)
		if !ok {
			return
		}
		back := role
		if version != "" {
			back = version + "." + back
		}
		if hash != "" {
			back += "." + hash
		}
		if back+".json" != file {
			t.Fatalf("%q read as version %q role %q hash %q", file, version, role, hash)
		}
		base, _, _ := strings.Cut(role, "/")
		if base != "root" && base != "targets" && base != "snapshot" && base != "timestamp" {
			t.Fatalf("%q: role %q is no notary role", file, role)
		}
		for _, seg := range strings.Split(role, "/") {
			if seg == "" || seg == "." || seg == ".." {
				t.Fatalf("%q: role %q has an empty, . or .. part", file, role)
			}
		}
		if base != "targets" && strings.Contains(role, "/") {
			t.Fatalf("%q: only targets has delegations, not %q", file, role)
		}
	})
}

// TestMetadataFileNames: the names a notary client asks for are read, the
// others are not.
func TestMetadataFileNames(t *testing.T) {
	for file, want := range map[string]bool{
		"root.json": true, "2.root.json": true, "targets/releases.json": true, "3.targets/releases.json": true,
		"snapshot." + strings.Repeat("ab", 32) + ".json": true, "snapshot." + strings.Repeat("ab", 64) + ".json": true,
		"snapshot." + strings.Repeat("ab", 31) + ".json": false, "0.root.json": false, "01.root.json": false,
		"targets/../root.json": false, "../root.json": false, "bogus.json": false, "root": false,
		"snapshot/x.json": false, "targets/" + strings.Repeat("a", 65) + ".json": false,
	} {
		if _, _, _, ok := parseMetadataFile(file); ok != want {
			t.Errorf("parseMetadataFile(%q) ok = %v, want %v", file, ok, want)
		}
	}
}
