package sample

import (
	"context"
	"io"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Pull pulls ref (host/repository:tag or @digest, plain HTTP allowed) the
// way a client does: the manifest, then the config and every layer, each
// checked against its digest. An index is fetched and checked, but not its
// children. It returns the manifest digest.
func Pull(ctx context.Context, ref string) (v1.Hash, error) {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return v1.Hash{}, err
	}
	desc, err := remote.Get(r, remote.WithContext(ctx))
	if err != nil {
		return v1.Hash{}, err
	}
	if desc.MediaType.IsIndex() {
		return desc.Digest, nil
	}
	img, err := desc.Image()
	if err != nil {
		return v1.Hash{}, err
	}
	if _, err := img.RawConfigFile(); err != nil {
		return v1.Hash{}, err
	}
	layers, err := img.Layers()
	if err != nil {
		return v1.Hash{}, err
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return v1.Hash{}, err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return v1.Hash{}, err
		}
	}
	return desc.Digest, nil
}
