package testenv

import (
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/trustproxy/trustproxy/internal/sample"
)

// Image returns a Docker schema2 image for linux/amd64 that dockerd can pull
// (see sample.Image): equal seeds give equal digests.
func Image(t testing.TB, seed string, layers int, layerSize int64) v1.Image {
	t.Helper()
	return ImageFor(t, seed, "linux/amd64", layers, layerSize)
}

// ImageFor is Image for another platform, "os/arch[/variant]" such as "linux/arm64/v8".
func ImageFor(t testing.TB, seed, platform string, layers int, layerSize int64) v1.Image {
	t.Helper()
	img, err := sample.ImageFor(seed, platform, layers, layerSize)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// RawImage returns a Docker schema2 image for linux/amd64 of layers layers of size
// pseudo-random bytes each, drawn from seed: equal seeds give equal digests. The layers
// are not tarballs and not compressed (a client that unpacks refuses them), so even
// large ones cost no more to make than their bytes: for tests that pull many or big
// images and check only digests.
func RawImage(t testing.TB, seed string, layers int, size int64) v1.Image {
	t.Helper()
	return RawImageFor(t, seed, "linux/amd64", layers, size)
}

// RawImageFor is RawImage for another platform, "os/arch[/variant]": the platform is
// in the config, so the same seed gives another manifest per platform, with the same
// layers.
func RawImageFor(t testing.TB, seed, platform string, layers int, size int64) v1.Image {
	t.Helper()
	p, err := v1.ParsePlatform(platform)
	if err != nil {
		t.Fatalf("platform %q: %v", platform, err)
	}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.DockerManifestSchema2), types.DockerConfigJSON)
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant, RootFS: v1.RootFS{Type: "layers"}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range layers {
		b := make([]byte, size)
		_, _ = rand.NewChaCha8(sha256.Sum256(fmt.Appendf(nil, "raw layer %d of %s", i, seed))).Read(b)
		if img, err = mutate.AppendLayers(img, static.NewLayer(b, types.DockerLayer)); err != nil {
			t.Fatal(err)
		}
	}
	return img
}

// Index returns a Docker manifest list of images, each entry carrying the
// platform its config names.
func Index(t testing.TB, images ...v1.Image) v1.ImageIndex {
	t.Helper()
	idx, err := sample.Index(images...)
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

// OCIImage returns an OCI image for goos/goarch with one random layer of
// layerSize bytes (an OCI layer media type, an OCI config): unlike Image,
// each call gives another digest.
func OCIImage(t testing.TB, goos, goarch string, layerSize int64) v1.Image {
	t.Helper()
	base, err := mutate.ConfigFile(mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON),
		&v1.ConfigFile{OS: goos, Architecture: goarch, RootFS: v1.RootFS{Type: "layers"}})
	if err != nil {
		t.Fatal(err)
	}
	layer, err := random.Layer(layerSize, types.OCILayer)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// OCIIndex returns an OCI image index of images, each entry naming the
// platform its config names.
func OCIIndex(t testing.TB, images ...v1.Image) v1.ImageIndex {
	t.Helper()
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, img := range images {
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant}}})
	}
	return idx
}
