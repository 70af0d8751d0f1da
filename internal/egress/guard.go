package egress

import (
	"context"
	"net"
	"net/netip"
	"syscall"
)

// guardKey marks, in a request's context, a request to a host that is
// neither configured nor listed in redirect_hosts: it may only connect to
// public addresses.
type guardKey struct{}

type guard struct {
	field, host string
	public      bool // a Public client's: field lists the hosts allowed
}

// checkAddress is the dialer's ControlContext: it runs on the address
// actually dialled, after DNS resolution, so a name that resolves (or
// re-resolves) to a private address is caught.
func checkAddress(ctx context.Context, network, address string, _ syscall.RawConn) error {
	g, ok := ctx.Value(guardKey{}).(*guard)
	if !ok {
		return nil
	}
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		host = address
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !public(ip) {
		return &AddressError{Field: g.field, Host: g.host, Addr: host, Public: g.public}
	}
	return nil
}

// resolve checks every address g.host resolves to, for requests that go
// through an HTTP proxy (the dial then reaches the proxy, not the host).
func (g *guard) resolve(ctx context.Context) error {
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", g.host)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		if !public(a) {
			return &AddressError{Field: g.field, Host: g.host, Addr: a.String(), Public: g.public}
		}
	}
	return nil
}

// nonPublic are ranges beyond what netip's predicates cover: shared address
// space (RFC 6598), "this network", benchmarking, reserved and NAT64.
var nonPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("64:ff9b::/96"),
	netip.MustParsePrefix("64:ff9b:1::/48"),
}

// public says whether ip is a public unicast address: not loopback,
// private (RFC 1918, fc00::/7), link-local (169.254.0.0/16, the cloud
// metadata address among them; fe80::/10), multicast or unspecified.
func public(ip netip.Addr) bool {
	ip = ip.Unmap()
	if !ip.IsValid() || ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsInterfaceLocalMulticast() || ip.IsMulticast() || ip.IsUnspecified() || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return false
	}
	for _, p := range nonPublic {
		if p.Contains(ip) {
			return false
		}
	}
	return true
}
