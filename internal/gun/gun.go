package gun

import (
	"encoding/hex"
	"fmt"
	"net"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// A Name is a repository at one configured upstream. The zero Name names
// nothing.
type Name struct {
	upstream, path string
}

// New names the repository path at the upstream named upstream. The GUN
// must follow the reference grammar.
func New(upstream, path string) (Name, error) {
	n := Name{upstream: upstream, path: path}
	if _, err := reference.WithName(n.String()); err != nil {
		return Name{}, fmt.Errorf("invalid repository name %q: %v", path, err)
	}
	return n, nil
}

// String is the GUN: upstream/path.
func (n Name) String() string {
	if n.upstream == "" {
		return ""
	}
	return n.upstream + "/" + n.path
}

// Upstream is the name of the configured upstream the repository is at.
func (n Name) Upstream() string { return n.upstream }

// Path is the repository's path at its upstream, e.g. library/alpine.
func (n Name) Path() string { return n.path }

// At is the key of content d in the repository: GUN@digest.
func (n Name) At(d digest.Digest) string { return n.String() + "@" + d.String() }

// StorageName is the name the repository has in trustproxy's storage. It is
// the GUN, but for an upstream with a port or an IPv6 address, whose
// characters distribution's storage drivers refuse in a path: the port
// follows an underscore (registry.example.com_5443/team/app), and an IPv6
// address is written ipv6_ and its 32 hex digits. Host names never hold an
// underscore, and config accepts one spelling of each IPv6 address, so no
// two upstreams share a storage name.
func (n Name) StorageName() string {
	if n.upstream == "" {
		return ""
	}
	host, port, err := net.SplitHostPort(n.upstream)
	if err != nil {
		host, port = n.upstream, ""
	}
	if ip, ok := strings.CutPrefix(host, "["); ok {
		host = strings.TrimSuffix(ip, "]")
	}
	if ip := net.ParseIP(host); ip != nil && strings.Contains(host, ":") {
		host = "ipv6_" + hex.EncodeToString(ip.To16())
	}
	if port != "" {
		host += "_" + port
	}
	return host + "/" + n.path
}
