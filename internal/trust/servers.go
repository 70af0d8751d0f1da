package trust

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
)

// ServerState is what /readyz says of one upstream's Notary server.
type ServerState struct {
	Upstream string
	// Reachable says whether the server answered its health check.
	Reachable bool
	// Err is why it did not; "" when it did.
	Err string
	// Fresh counts the repositories of the upstream whose verified trust
	// data this replica may still serve (within refresh_ttl, or within
	// max_staleness while the server is down).
	Fresh int
}

// healthPath is notary-server's health check.
const healthPath = "/_notary_server/health"

// healthTimeout bounds one health check.
const healthTimeout = 5 * time.Second

// Servers checks each configured Notary server (GET /_notary_server/health,
// bounded by healthTimeout) and counts the repositories of its upstream
// whose verified trust data this replica holds and may still serve. The
// checks run at once; upstreams without a Notary server are left out.
func (v *Verifier) Servers(ctx context.Context) []ServerState {
	upstreams := v.settings.Load().upstreams
	names := make([]string, 0, len(upstreams))
	for name, up := range upstreams {
		if up.client != nil {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	fresh := map[string]int{}
	now := time.Now()
	for _, c := range v.views.Values() {
		if now.Before(c.until) {
			fresh[c.upstream]++
		}
	}
	out := make([]ServerState, len(names))
	done := make(chan struct{}, len(names))
	for i, name := range names {
		out[i] = ServerState{Upstream: name, Fresh: fresh[name]}
		go func() {
			defer func() { done <- struct{}{} }()
			out[i].Reachable, out[i].Err = v.health(ctx, upstreams[name])
		}()
	}
	for range names {
		<-done
	}
	return out
}

// health asks up's Notary server whether it is healthy.
func (v *Verifier) health(ctx context.Context, up *upstream) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(up.cfg.Notary.URL, "/")+healthPath, nil)
	if err != nil {
		return false, err.Error()
	}
	resp, err := up.client.Do(req, "")
	if err != nil {
		return false, err.Error()
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Sprintf("%s answered %s", healthPath, resp.Status)
	}
	return true, ""
}
