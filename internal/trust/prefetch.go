package trust

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
	"sync"

	"github.com/theupdateframework/notary/storage"
	"github.com/trustproxy/trustproxy/config"
)

// prefetchRemote shortens the first update of a GUN. notary asks for one
// role at a time: root, timestamp, snapshot, targets, then each delegation,
// each only once its parent is verified, so a GUN with nothing cached costs
// five round trips one after the other. Once notary has fetched root (it
// does so only when no root is cached; a GUN without trust data ends
// there), prefetchRemote fetches timestamp, snapshot and targets at the same
// time, and each delegation as soon as the file that lists it arrives:
// three round trips.
//
// What notary verifies does not change: it asks for snapshot, targets and
// delegations by consistent name (role.<sha256>, the checksum from the
// already verified parent), and a prefetched file is handed over only when it
// hashes to that checksum; otherwise, or when the prefetch failed, the file
// is fetched as asked. The timestamp is the one file asked for by name; its
// prefetch left just after root arrived. Each
// prefetch is bounded as notary's own requests are (size caps, at most
// limits.max_delegations delegations).
type prefetchRemote struct {
	storage.RemoteStore
	limits config.Limits

	mu          sync.Mutex
	started     bool
	delegations int
	files       map[string]*prefetched // by role name
}

type prefetched struct {
	done chan struct{}
	raw  []byte
	err  error
}

func newPrefetchRemote(rs storage.RemoteStore, l config.Limits) *prefetchRemote {
	return &prefetchRemote{RemoteStore: rs, limits: l, files: map[string]*prefetched{}}
}

// GetSized returns role name as notary asks for it (root, timestamp, or
// role.<sha256>), from a prefetch when one matches.
func (p *prefetchRemote) GetSized(name string, size int64) ([]byte, error) {
	role, sum, _ := strings.Cut(splitChecksum(name), "\x00")
	if name == "root" {
		raw, err := p.RemoteStore.GetSized(name, size)
		if err != nil {
			return nil, err // no trust data, most likely: ask for nothing more
		}
		p.mu.Lock()
		start := !p.started
		p.started = true
		p.mu.Unlock()
		if start {
			for _, r := range []string{"timestamp", "snapshot", "targets"} {
				p.prefetch(r)
			}
		}
		return raw, nil
	}
	if role == "timestamp" || sum != "" {
		if raw, ok := p.take(role, sum, size); ok {
			return raw, nil
		}
	}
	return p.RemoteStore.GetSized(name, size)
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
		f.raw, f.err = p.RemoteStore.GetSized(role, limit+1)
		if f.err == nil && int64(len(f.raw)) > limit {
			f.raw, f.err = nil, &LimitError{What: role, Limit: limit}
			return
		}
		if f.err == nil && (role == "targets" || strings.HasPrefix(role, "targets/")) {
			p.prefetchDelegations(f.raw)
		}
	}()
}

// prefetchDelegations starts fetching the delegations a targets file lists,
// up to limits.max_delegations in all.
func (p *prefetchRemote) prefetchDelegations(raw []byte) {
	for _, name := range delegationNames(raw) {
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

// delegationNames lists the delegated roles a targets file names, as
// fetched and not yet verified: only names under targets/ that are not
// themselves consistent names. A file that does not parse names none
// (notary will say what is wrong with it).
func delegationNames(raw []byte) []string {
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
		if strings.HasPrefix(r.Name, "targets/") && !checksumTail.MatchString(r.Name) {
			names = append(names, r.Name)
		}
	}
	return names
}

// take waits for role's prefetch, if one was started, and returns it when
// it succeeded, hashes to sum (unless sum is "", for the timestamp) and is
// no longer than size.
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
	if sum != "" {
		h := sha256.Sum256(f.raw)
		if hex.EncodeToString(h[:]) != sum {
			return nil, false
		}
	}
	return f.raw, true
}
