package notation

import (
	"crypto/x509"
	"fmt"
	"testing"
	"time"

	"github.com/notaryproject/notation-core-go/revocation/crl"
)

// TestCRLCacheBounded: CRLs are kept by URL until their NextUpdate (at most
// crlMaxAge), within crlCacheBytes in all; one over the whole bound is not
// kept.
func TestCRLCacheBounded(t *testing.T) {
	c := newCRLCache()
	ctx := t.Context()
	bundle := func(size int, next time.Duration) *crl.Bundle {
		return &crl.Bundle{BaseCRL: &x509.RevocationList{Raw: make([]byte, size), NextUpdate: time.Now().Add(next)}}
	}
	if err := c.Set(ctx, "http://ca/over.crl", bundle(crlCacheBytes+1, time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "http://ca/over.crl"); err != crl.ErrCacheMiss {
		t.Fatalf("a CRL over the bound was kept: %v", err)
	}
	_ = c.Set(ctx, "http://ca/stale.crl", bundle(10, -time.Second))
	if _, err := c.Get(ctx, "http://ca/stale.crl"); err != crl.ErrCacheMiss {
		t.Fatalf("a CRL past its NextUpdate was reused: %v", err)
	}
	for i := range 5 {
		_ = c.Set(ctx, fmt.Sprintf("http://ca/%d.crl", i), bundle(crlCacheBytes/4, time.Hour))
	}
	if c.bytes > crlCacheBytes {
		t.Fatalf("%d bytes of CRLs kept, bound %d", c.bytes, crlCacheBytes)
	}
	if _, err := c.Get(ctx, "http://ca/4.crl"); err != nil {
		t.Fatalf("the newest CRL was not kept: %v", err)
	}
	if _, err := c.Get(ctx, "http://ca/0.crl"); err != crl.ErrCacheMiss {
		t.Fatal("the oldest CRL was kept past the bound")
	}
}
