package config

import (
	"bytes"
	"os"
	"testing"
)

// FuzzLoad checks that no input makes Load panic; errors are fine.
func FuzzLoad(f *testing.F) {
	example, err := os.ReadFile("trustproxy.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(defaultYAML)
	f.Add(example)
	f.Add([]byte("storage:\n  filesystem:\ntrust:\n  rules:\n    - repositories: docker.io/[/**\n      mode: audit\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Load(bytes.NewReader(b), nil)
		if err != nil {
			return
		}
		c.RuleFor("docker.io/library/alpine")
		c.Redacted()
	})
}
