package bench

import (
	"context"
	"net/http"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/trustproxy/trustproxy/internal/testenv"
)

// TestSetup wires both proxies as the benchmarks do and pulls through each
// once. It also checks that trustproxy enforces trust in this wiring (an
// unsigned tag is refused) while distribution serves it, so the benchmarks
// compare a verifying proxy with a non-verifying one and not two pass-throughs.
func TestSetup(t *testing.T) {
	w := newWorld(t,
		map[string]v1.Image{"v1": testenv.Image(t, "setup-v1", 2, 32<<10)},
		map[string]v1.Image{"unsigned": testenv.Image(t, "setup-unsigned", 1, 1024)})
	im := w.images["v1"]
	for _, impl := range impls {
		t.Run(impl.name, func(t *testing.T) {
			p := impl.start(t, w)
			t.Cleanup(p.close)
			c := newClient(t)
			if err := c.pull(t.Context(), p.url, "v1", im); err != nil {
				t.Fatal(err)
			}
			want := http.StatusOK
			if impl.name == "trustproxy" {
				want = http.StatusNotFound // not_signed
			}
			if got := status(t, c, p.url+"/v2/"+repoName+"/manifests/unsigned"); got != want {
				t.Errorf("unsigned tag: status %d, want %d", got, want)
			}
		})
	}
}

func status(t *testing.T, c *client, url string) int {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", accept)
	resp, err := c.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
