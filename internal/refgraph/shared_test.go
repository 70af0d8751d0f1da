package refgraph

import (
	"log/slog"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/cache"
	"github.com/trustproxy/trustproxy/internal/testenv"
)

// What one replica records, another looks up; with Redis gone, each keeps
// what it recorded itself.
func TestSharedIndex(t *testing.T) {
	r := testenv.StartRedis(t, "")
	newIndex := func() *Shared {
		rdb, err := cache.NewRedis(config.Redis{Addrs: []string{r.Addr()}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rdb.Close() })
		log := slog.New(slog.DiscardHandler)
		sh, err := cache.NewShared(rdb, "test:", []byte(testenv.StateKey), cache.NewRedisHealth(log), log, nil)
		if err != nil {
			t.Fatal(err)
		}
		return NewShared(sh, log)
	}
	a, b := newIndex(), newIndex()
	m, layer := digest.FromString("manifest"), digest.FromString("layer")
	a.Record(m, []v1.Descriptor{{Digest: layer, Size: 7, MediaType: v1.MediaTypeImageLayerGzip}})
	if p := b.Parents(layer); len(p) != 1 || p[0] != m {
		t.Fatalf("replica b: parents of the layer %v, want [%s]", p, m)
	}
	if c, ok := b.Children(m); !ok || len(c) != 1 || c[0].Digest != layer || c[0].Size != 7 {
		t.Fatalf("replica b: children %v %v", c, ok)
	}
	r.Stop()
	other := digest.FromString("manifest recorded while redis is down")
	a.Record(other, []v1.Descriptor{{Digest: layer}})
	if p := a.Parents(layer); len(p) != 2 {
		t.Fatalf("replica a with redis down: parents %v, want its own two", p)
	}
	if p := b.Parents(layer); len(p) != 1 { // b learnt m from redis earlier and kept it
		t.Fatalf("replica b with redis down: parents %v", p)
	}
}
