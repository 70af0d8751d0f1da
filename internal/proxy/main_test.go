package proxy_test

import (
	"os"
	"testing"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

// TestMain stops the SeaweedFS server that the S3 tests share (each has a
// bucket of its own on it, testenv.StartS3) once every test has run.
func TestMain(m *testing.M) {
	code := m.Run()
	testenv.StopS3()
	os.Exit(code)
}
