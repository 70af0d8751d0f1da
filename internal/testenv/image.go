package testenv

import (
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

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
