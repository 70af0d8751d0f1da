package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// Readiness is what /readyz answers: whether this replica can serve, and a
// line per check.
type Readiness struct {
	// OK is false when the replica cannot serve at all: its storage does
	// not take writes. Redis unreachable or a Notary server down leave it
	// serving what it can still verify, so they are reported, not failed.
	OK bool
	// Status is "ok", "degraded" (serving without something it was
	// configured with) or "not ready".
	Status string
	Checks []string
}

// String is the /readyz body: the status, then the checks.
func (r Readiness) String() string {
	return r.Status + "\n" + strings.Join(r.Checks, "\n") + "\n"
}

// readyFor is how long a readiness answer is reused: /readyz is served to
// anyone who reaches the listener, and each answer costs a storage write
// and a request to each Notary server.
const readyFor = 10 * time.Second

// readiness keeps the last answer.
type readiness struct {
	group singleflight.Group
	mu    sync.Mutex
	last  Readiness
	until time.Time
	probe string // this replica's storage path for the write check
}

// Readiness checks that storage takes a write (and a delete), whether the
// shared state on Redis answers, and each Notary server: reachable, or how
// many repositories' trust data this replica may still serve from cache.
// The storage and Notary checks are reused for readyFor; Redis's state is
// what the replica last saw.
func (s *Server) Readiness(ctx context.Context) Readiness {
	s.ready.mu.Lock()
	r, fresh := s.ready.last, time.Now().Before(s.ready.until)
	s.ready.mu.Unlock()
	if !fresh {
		v, _, _ := s.ready.group.Do("", func() (any, error) {
			r := s.checkReadiness(context.WithoutCancel(ctx))
			s.ready.mu.Lock()
			s.ready.last, s.ready.until = r, time.Now().Add(readyFor)
			s.ready.mu.Unlock()
			return r, nil
		})
		r = v.(Readiness)
	}
	r.Checks = append([]string(nil), r.Checks...)
	switch {
	case s.shared == nil:
		r.Checks = append(r.Checks, "redis: not configured")
	case s.shared.Health.Degraded():
		if r.OK {
			r.Status = "degraded"
		}
		r.Checks = append(r.Checks, "redis: unreachable; serving with this replica's own trust floor")
	default:
		r.Checks = append(r.Checks, "redis: ok")
	}
	return r
}

// checkReadiness runs the checks that cost a request: storage and the
// Notary servers.
func (s *Server) checkReadiness(ctx context.Context) Readiness {
	r := Readiness{OK: true, Status: "ok"}
	if err := s.storageWritable(ctx); err != nil {
		r.OK, r.Status = false, "not ready"
		r.Checks = append(r.Checks, "storage: not writable: "+err.Error())
	} else {
		r.Checks = append(r.Checks, "storage: writable")
	}
	for _, n := range s.verify.Servers(ctx) {
		if n.Reachable {
			r.Checks = append(r.Checks, fmt.Sprintf("notary %s: reachable", n.Upstream))
			continue
		}
		if r.OK {
			r.Status = "degraded"
		}
		r.Checks = append(r.Checks, fmt.Sprintf("notary %s: unreachable (%s); trust data of %d repositories still fresh in cache, others refused", n.Upstream, n.Err, n.Fresh))
	}
	return r
}

// storageWritable writes, reads back and deletes a small file of this
// replica's in storage.
func (s *Server) storageWritable(ctx context.Context) error {
	if s.driver == nil {
		return nil // storage reached only through distribution's namespace: nothing to probe
	}
	ctx, cancel := context.WithTimeout(ctx, readyFor)
	defer cancel()
	s.ready.mu.Lock()
	if s.ready.probe == "" {
		b := make([]byte, 8)
		_, _ = rand.Read(b)
		s.ready.probe = "/trustproxy/readyz/" + hex.EncodeToString(b)
	}
	path := s.ready.probe
	s.ready.mu.Unlock()
	want := []byte(time.Now().UTC().Format(time.RFC3339Nano))
	if err := s.driver.PutContent(ctx, path, want); err != nil {
		return err
	}
	got, err := s.driver.GetContent(ctx, path)
	if err != nil {
		return err
	}
	if string(got) != string(want) {
		return fmt.Errorf("read back %q, wrote %q", got, want)
	}
	return s.driver.Delete(ctx, path)
}
