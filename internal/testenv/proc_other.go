//go:build !linux

package testenv

import "os/exec"

// dieWithParent is a no-op where there is no parent-death signal; t.Cleanup still kills.
func dieWithParent(*exec.Cmd) {}
