package proxy

import (
	"context"
	"fmt"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// Check decides on image as a pull of it would be decided, without serving
// it: a digest when the reference has one, else its tag (latest when it
// names none). The manifest is fetched only when its rule has a scan
// policy: otherwise the answer rests on the trust data and on what verified
// manifests recorded (a platform manifest's index is recorded from
// storage, or else fetched). With rescan, the manifest is scanned now, and
// the gate decides on that report.
func (s *Server) Check(ctx context.Context, image string, rescan bool) (*Decision, error) {
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", image, err)
	}
	host, repo := reference.Domain(named), reference.Path(named)
	up, ok := s.upstreams.byName[host]
	if !ok {
		return nil, fmt.Errorf("image %q: no upstream is named %s; add it to upstreams, or name the image with an upstream's name", image, host)
	}
	req := &request{kind: kindManifest, upstream: up, repo: repo, gun: host + "/" + repo, ref: "latest", check: true, rescan: rescan}
	switch r := named.(type) {
	case reference.Digested:
		if r.Digest().Algorithm() != digest.SHA256 {
			return nil, fmt.Errorf("image %q: only sha256 digests are served", image)
		}
		req.ref, req.dgst = r.Digest().String(), r.Digest()
	case reference.Tagged:
		req.ref = r.Tag()
	}
	return s.decide(ctx, req)
}
