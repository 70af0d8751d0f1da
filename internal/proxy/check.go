package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/distribution/reference"
)

// Check decides on image as a pull of it would be decided, without serving
// it. image is what a client would pull through trustproxy, in the
// reference grammar: a repository name, routed to its upstream exactly as a
// request path is (a configured upstream's name as its first component
// selects it; else the first upstream), then :tag (latest when none) or
// @digest. The manifest is fetched only when its rule has a scan policy:
// otherwise the answer rests on the trust data and on what verified
// manifests recorded. With rescan,
// the manifest is scanned now, and the gate decides on that report. A
// refusal is a Decision, not an error; an error is no decision.
func (s *Server) Check(ctx context.Context, image string, rescan bool) (*Decision, error) {
	ref, err := reference.Parse(image)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", image, err)
	}
	named, ok := ref.(reference.Named)
	if !ok {
		return nil, fmt.Errorf("image %q: no repository name", image)
	}
	tag := "latest"
	if t, ok := ref.(reference.Tagged); ok {
		tag = t.Tag()
	}
	if d, ok := ref.(reference.Digested); ok { // name:tag@digest is the digest
		tag = d.Digest().String()
	}
	r := &http.Request{Method: http.MethodGet, URL: &url.URL{Path: "/v2/" + named.Name() + "/manifests/" + tag}}
	req, err := s.parse(r)
	if err == nil && req.kind != kindManifest {
		err = errors.New("not a repository name with a tag or digest")
	}
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", image, err)
	}
	d, err := s.decide(ctx, req, decideOptions{check: true, rescan: rescan})
	if _, refused := errors.AsType[*Refusal](err); refused {
		return d, nil
	}
	return d, err
}
