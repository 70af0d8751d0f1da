//go:build !linux

package testenv

import (
	"errors"
	"os/exec"
)

// dieWithParent is a no-op where there is no parent-death signal; t.Cleanup still kills.
func dieWithParent(*exec.Cmd) {}

// PeakRSS is the peak resident set size of process pid where /proc tells it: Linux only.
func PeakRSS(pid int) (int64, error) {
	return 0, errors.New("peak RSS is read from /proc/<pid>/status, on Linux only")
}
