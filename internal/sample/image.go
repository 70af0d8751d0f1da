package sample

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// created is the fixed creation time of every image, so that digests depend on the seed only.
var created = v1.Time{Time: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)}

// Image returns a Docker schema2 image for linux/amd64 that dockerd can pull: gzip layers,
// a config with rootfs diff_ids, history and a Cmd. Each layer holds one file of layerSize
// pseudo-random bytes drawn from seed, so equal seeds give equal digests and different
// seeds different ones.
func Image(seed string, layers int, layerSize int64) (v1.Image, error) {
	return ImageFor(seed, "linux/amd64", layers, layerSize)
}

// ImageFor is Image for another platform, "os/arch[/variant]" such as "linux/arm64/v8".
// The platform is in the config, so the same seed gives a different manifest per platform.
func ImageFor(seed, platform string, layers int, layerSize int64) (v1.Image, error) {
	p, err := v1.ParsePlatform(platform)
	if err != nil {
		return nil, fmt.Errorf("platform %q: %v", platform, err)
	}
	img := mutate.MediaType(empty.Image, types.DockerManifestSchema2)
	img = mutate.ConfigMediaType(img, types.DockerConfigJSON)
	adds := make([]mutate.Addendum, layers)
	for i := range adds {
		l, err := newLayer(seed, i, layerSize)
		if err != nil {
			return nil, fmt.Errorf("layer %d of %q: %v", i, seed, err)
		}
		adds[i] = mutate.Addendum{
			Layer:     l,
			MediaType: types.DockerLayer,
			History: v1.History{
				Created:   created,
				CreatedBy: fmt.Sprintf("sample: layer %d of %q", i, seed),
			},
		}
	}
	if img, err = mutate.Append(img, adds...); err != nil {
		return nil, fmt.Errorf("image %q: %v", seed, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image %q: %v", seed, err)
	}
	cf = cf.DeepCopy()
	cf.Created = created
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Config.Cmd = []string{"/bin/sh"}
	cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cf.Config.Labels = map[string]string{"org.trustproxy.sample.seed": seed}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, fmt.Errorf("image %q: %v", seed, err)
	}
	if _, err := img.Digest(); err != nil { // computes every layer now, failing here rather than in a push
		return nil, fmt.Errorf("image %q: %v", seed, err)
	}
	return img, nil
}

// layer is a gzip tarball held in memory, with both its digests computed.
type layer struct {
	tar, gz        []byte
	diffID, digest v1.Hash
}

var _ v1.Layer = (*layer)(nil)

// newLayer makes layer i of seed: data/ and the file data/<i> of size pseudo-random bytes.
// Header times are fixed and gzip carries no name or time, so the bytes depend on the
// arguments alone.
func newLayer(seed string, i int, size int64) (*layer, error) {
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	mod := created.Time
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "data/", Mode: 0o755, ModTime: mod}); err != nil {
		return nil, err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("data/%d", i), Mode: 0o644, Size: size, ModTime: mod}); err != nil {
		return nil, err
	}
	src := rand.NewChaCha8(sha256.Sum256(fmt.Appendf(nil, "sample layer %d of %s", i, seed)))
	if _, err := io.CopyN(tw, src, size); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	var gb bytes.Buffer
	zw := gzip.NewWriter(&gb)
	if _, err := zw.Write(tb.Bytes()); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	l := &layer{tar: tb.Bytes(), gz: gb.Bytes()}
	l.diffID, l.digest = sha256Hash(l.tar), sha256Hash(l.gz)
	return l, nil
}

func sha256Hash(b []byte) v1.Hash {
	s := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
}

func (l *layer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *layer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *layer) Size() (int64, error)                { return int64(len(l.gz)), nil }
func (l *layer) MediaType() (types.MediaType, error) { return types.DockerLayer, nil }
func (l *layer) Compressed() (io.ReadCloser, error)  { return io.NopCloser(bytes.NewReader(l.gz)), nil }
func (l *layer) Uncompressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.tar)), nil
}

// Index returns a Docker manifest list of images, each entry carrying the platform its
// config names (make them with ImageFor for linux/amd64, linux/arm64/v8, ...).
func Index(images ...v1.Image) (v1.ImageIndex, error) {
	idx := mutate.IndexMediaType(empty.Index, types.DockerManifestList)
	adds := make([]mutate.IndexAddendum, len(images))
	for i, img := range images {
		cf, err := img.ConfigFile()
		if err != nil {
			return nil, fmt.Errorf("index entry %d: %v", i, err)
		}
		mt, err := img.MediaType()
		if err != nil {
			return nil, fmt.Errorf("index entry %d: %v", i, err)
		}
		adds[i] = mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			MediaType: mt,
			Platform:  &v1.Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant},
		}}
	}
	idx = mutate.AppendManifests(idx, adds...)
	if _, err := idx.Digest(); err != nil {
		return nil, fmt.Errorf("index: %v", err)
	}
	return idx, nil
}
