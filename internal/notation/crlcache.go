package notation

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/notaryproject/notation-core-go/revocation/crl"
)

// The CRL cache's bounds: a CRL is reused until its NextUpdate, and at
// most crlMaxAge (a CA that revokes a key publishes a new CRL at once;
// trustproxy reads it within crlMaxAge); at most crlCacheBytes of CRLs
// (notation-core-go reads one of up to 32 MiB) in crlCacheEntries.
const (
	crlMaxAge       = 10 * time.Minute
	crlCacheBytes   = 64 << 20
	crlCacheEntries = 256
)

// crlCache keeps the CRLs a Verifier fetched, by URL, so that verifying
// many digests signed under one CA fetches and parses its CRL once rather
// than once per signature (a hostile upstream may list many). It is only
// a cache of what was downloaded: notation-core-go checks the CRL's
// signature by the issuer, and its NextUpdate, every time it is used.
type crlCache struct {
	mu    sync.Mutex
	lru   *simplelru.LRU[string, crlEntry]
	bytes int
}

type crlEntry struct {
	bundle *crl.Bundle
	until  time.Time
	size   int
}

func newCRLCache() *crlCache {
	c := &crlCache{}
	c.lru, _ = simplelru.NewLRU(crlCacheEntries, func(_ string, e crlEntry) { c.bytes -= e.size })
	return c
}

func (c *crlCache) Get(_ context.Context, url string) (*crl.Bundle, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.lru.Get(url)
	if !ok || !time.Now().Before(e.until) {
		return nil, crl.ErrCacheMiss
	}
	return e.bundle, nil
}

func (c *crlCache) Set(_ context.Context, url string, b *crl.Bundle) error {
	if b == nil || b.BaseCRL == nil {
		return nil
	}
	size := len(b.BaseCRL.Raw)
	if b.DeltaCRL != nil {
		size += len(b.DeltaCRL.Raw)
	}
	until := time.Now().Add(crlMaxAge)
	if n := b.BaseCRL.NextUpdate; n.Before(until) {
		until = n
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Remove(url)
	if size > crlCacheBytes {
		return nil
	}
	for c.bytes+size > crlCacheBytes && c.lru.Len() > 0 {
		c.lru.RemoveOldest()
	}
	c.lru.Add(url, crlEntry{bundle: b, until: until, size: size})
	c.bytes += size
	return nil
}
