package main

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/testenv"
)

// serve starts the storage collector with the server and stops it with
// the server: its first collection (over empty storage) is logged.
func TestServeRunsRetention(t *testing.T) {
	yaml := "listen: 127.0.0.1:0\ndata_dir: " + t.TempDir() + "\nretention: {max_age: 1h, interval: 1s}\n"
	cfg, err := config.Load(strings.NewReader(yaml), nil)
	if err != nil {
		t.Fatal(err)
	}
	logs := &testenv.LogBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, nil))
	s, err := start(t.Context(), cfg, "", nil, log)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(logs.String(), `"msg":"retention collected"`); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no collection logged:\n%s", logs)
		}
	}
	stopped := make(chan error, 1)
	go func() { stopped <- s.stop(5*time.Second, log) }()
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not stop")
	}
}
