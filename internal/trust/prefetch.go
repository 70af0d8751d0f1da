package trust

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"path"
	"strings"
	"sync"

	"github.com/theupdateframework/notary/storage"
	"github.com/theupdateframework/notary/tuf/data"
	"github.com/trustproxy/trustproxy/config"
)

// prefetchRemote shortens the first update of a GUN. notary asks for one
// role at a time: root, timestamp, snapshot, targets, then each delegation,
// each only once its parent is verified, so a GUN with nothing cached costs
// five round trips one after the other. prefetchRemote asks for snapshot and
// targets together with the timestamp, and for a delegation's siblings
// together with it: three round trips.
//
// It prefetches only what a verified file makes worth asking for. notary asks
// for the timestamp only once root has loaded (pinned, or trusted on first
// use); a GUN without trust data, or whose root is refused, costs what it
// did. A delegation's siblings are named by their parent, which notary has
// verified before it asks for any of its children; only clean names directly
// under that parent are asked for, at most limits.max_delegations in all.
//
// What notary verifies does not change: it asks for snapshot, targets and
// delegations by consistent name (role.<sha256>, the checksum from the
// already verified parent), and a prefetched file is handed over only when it
// hashes to that checksum; otherwise, or when the prefetch failed, the file
// is fetched as asked. Prefetches are bounded as notary's own requests are
// (size caps) and cancelled when the update ends (stop).
type prefetchRemote struct {
	storage.RemoteStore
	ahead  storage.RemoteStore // the same server, its requests cancelled by stop
	limits config.Limits
	stop   context.CancelFunc
	found  func() // OnTrustData's, or nil

	mu          sync.Mutex
	rootFetched bool
	started     bool
	delegations int
	files       map[string]*prefetched // by role name
	handed      map[string][]byte      // files handed to notary, by role name
	expanded    map[string]bool        // parents whose delegations were prefetched
}

type prefetched struct {
	done chan struct{}
	raw  []byte
	err  error
}

// newPrefetchRemote wraps rs, the remote of one update. ahead builds the
// same remote over a RoundTripper; its requests carry a context that stop
// (call it when the update ends) cancels.
func newPrefetchRemote(rs storage.RemoteStore, ahead func(http.RoundTripper) (storage.RemoteStore, error), base http.RoundTripper, l config.Limits) *prefetchRemote {
	ctx, cancel := context.WithCancel(context.Background())
	p := &prefetchRemote{RemoteStore: rs, limits: l, stop: cancel,
		files: map[string]*prefetched{}, handed: map[string][]byte{}, expanded: map[string]bool{}}
	if a, err := ahead(&ctxTransport{base: base, ctx: ctx}); err == nil {
		p.ahead = a
	}
	return p
}

// GetSized returns role name as notary asks for it (root, timestamp, or
// role.<sha256>), from a prefetch when one matches.
func (p *prefetchRemote) GetSized(name string, size int64) ([]byte, error) {
	role, sum, _ := strings.Cut(splitChecksum(name), "\x00")
	switch {
	case name == "root":
		raw, err := p.RemoteStore.GetSized(name, size)
		if err == nil {
			p.mu.Lock()
			p.rootFetched = true
			p.mu.Unlock()
		}
		return raw, err
	case name == "timestamp":
		// Root has loaded: notary asks for nothing before it does.
		p.mu.Lock()
		start, found := p.rootFetched && !p.started, !p.started && p.found != nil
		p.started = true
		p.mu.Unlock()
		if found {
			go p.found()
		}
		if start {
			p.prefetch(data.CanonicalSnapshotRole.String())
			p.prefetch(data.CanonicalTargetsRole.String())
		}
	case sum != "" && data.IsDelegation(data.RoleName(role)):
		p.expand(path.Dir(role), role)
	}
	if sum != "" {
		if raw, ok := p.take(role, sum, size); ok {
			return raw, nil
		}
	}
	raw, err := p.RemoteStore.GetSized(name, size)
	if err == nil && sum != "" {
		p.mu.Lock()
		p.handed[role] = raw
		p.mu.Unlock()
	}
	return raw, err
}

// splitChecksum splits role.<sha256> into role and checksum, joined by NUL;
// a name without a checksum is returned as is.
func splitChecksum(name string) string {
	if loc := checksumTail.FindStringIndex(name); loc != nil {
		return name[:loc[0]] + "\x00" + name[loc[0]+1:]
	}
	return name
}

// prefetch starts fetching role's newest version, once.
func (p *prefetchRemote) prefetch(role string) {
	if p.ahead == nil {
		return
	}
	p.mu.Lock()
	if _, ok := p.files[role]; ok {
		p.mu.Unlock()
		return
	}
	f := &prefetched{done: make(chan struct{})}
	p.files[role] = f
	p.mu.Unlock()
	go func() {
		defer close(f.done)
		limit, _ := roleCap(p.limits, role)
		f.raw, f.err = p.ahead.GetSized(role, limit+1)
		if f.err == nil && int64(len(f.raw)) > limit {
			f.raw, f.err = nil, &LimitError{What: role, Limit: limit}
		}
	}()
}

// expand prefetches, once per parent, the delegations a verified parent
// file lists directly under it, but asking (which notary fetches now), up
// to limits.max_delegations in all. notary asks for a delegation only once
// its parent has verified.
func (p *prefetchRemote) expand(parent, asking string) {
	p.mu.Lock()
	raw, ok := p.handed[parent]
	if !ok || p.expanded[parent] {
		p.mu.Unlock()
		return
	}
	p.expanded[parent] = true
	p.mu.Unlock()
	for _, name := range delegationNames(raw, parent) {
		if name == asking {
			continue
		}
		p.mu.Lock()
		ok := p.delegations < p.limits.MaxDelegations
		p.delegations++
		p.mu.Unlock()
		if !ok {
			return
		}
		p.prefetch(name)
	}
}

// delegationNames lists the roles a targets file delegates to directly
// under parent, with clean names (notary's data.IsDelegation) only. A file
// that does not parse names none (notary will say what is wrong with it).
func delegationNames(raw []byte, parent string) []string {
	var t struct {
		Signed struct {
			Delegations struct {
				Roles []struct {
					Name string `json:"name"`
				} `json:"roles"`
			} `json:"delegations"`
		} `json:"signed"`
	}
	if json.Unmarshal(raw, &t) != nil {
		return nil
	}
	var names []string
	for _, r := range t.Signed.Delegations.Roles {
		if data.IsDelegation(data.RoleName(r.Name)) && path.Dir(r.Name) == parent && !checksumTail.MatchString(r.Name) {
			names = append(names, r.Name)
		}
	}
	return names
}

// take waits for role's prefetch, if one was started, and returns it when
// it succeeded, hashes to sum and is no longer than size.
func (p *prefetchRemote) take(role, sum string, size int64) ([]byte, bool) {
	p.mu.Lock()
	f, ok := p.files[role]
	p.mu.Unlock()
	if !ok {
		return nil, false
	}
	<-f.done
	if f.err != nil || (size > 0 && int64(len(f.raw)) > size) {
		return nil, false
	}
	h := sha256.Sum256(f.raw)
	if hex.EncodeToString(h[:]) != sum {
		return nil, false
	}
	p.mu.Lock()
	p.handed[role] = f.raw
	p.mu.Unlock()
	return f.raw, true
}

// ctxTransport sends every request with ctx, so that cancelling ctx stops
// requests notary's HTTPStore (which takes no context) has under way.
type ctxTransport struct {
	base http.RoundTripper
	ctx  context.Context
}

func (c *ctxTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancel(r.Context())
	stop := context.AfterFunc(c.ctx, cancel)
	resp, err := c.base.RoundTrip(r.WithContext(ctx))
	if err != nil {
		stop()
		cancel()
		return nil, err
	}
	resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: func() { stop(); cancel() }}
	return resp, nil
}
