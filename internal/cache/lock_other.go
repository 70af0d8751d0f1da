//go:build !unix

package cache

// lockDir is a no-op where flock is not available: writers in one process
// are still serialised by GUNStore's mutex.
func lockDir(string) (func(), error) { return func() {}, nil }
