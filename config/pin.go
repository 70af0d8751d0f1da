package config

import "slices"

// Pins are the root pins of a Pinning that apply to one GUN: what notary's
// trust pinning checks the GUN's root against. Notary uses the certificate
// IDs when there are any, else the CA of the longest prefix.
type Pins struct {
	// CertIDs are the root certificate IDs Pinning.Certs lists for the
	// GUN, sorted; nil when it lists none.
	CertIDs []string
	// CAs are the entries of Pinning.CA whose prefix starts the GUN,
	// shortest prefix first.
	CAs []CAPin
}

// CAPin is one entry of Pinning.CA.
type CAPin struct {
	Prefix string // a GUN prefix, e.g. registry.example.com:5443/
	File   string // PEM CA certificates, one of which must have issued the root
}

// Pinned says whether any pin applies; without one only trust on first use
// accepts a root.
func (p Pins) Pinned() bool { return len(p.CertIDs) > 0 || len(p.CAs) > 0 }

// pins is a Pinning compiled by Load: certificate IDs by GUN, sorted, and
// CA files by prefix with the prefixes' lengths, so that the pins of a GUN
// are found by one lookup per length, never by a scan of the prefixes.
type pins struct {
	certs map[string][]string
	ca    map[string]CAPin
	lens  []int // the lengths of the keys of ca, ascending, each once
}

// compilePins compiles p. Its keys are checked by validateTrust: GUNs
// (never notary's trailing-* wildcards, which checkGUN refuses) and
// prefixes starting with a host.
func compilePins(p Pinning) pins {
	c := pins{certs: make(map[string][]string, len(p.Certs)), ca: make(map[string]CAPin, len(p.CA))}
	for gun, ids := range p.Certs {
		c.certs[gun] = slices.Sorted(slices.Values(ids))
	}
	for prefix, file := range p.CA {
		c.ca[prefix] = CAPin{Prefix: prefix, File: file}
		c.lens = append(c.lens, len(prefix))
	}
	slices.Sort(c.lens)
	c.lens = slices.Compact(c.lens)
	return c
}

// Compiled says whether p's pins are compiled (by Load): a Pinning with
// pins that Load did not return would pin nothing, so it must not be used.
func (p *Pinning) Compiled() bool {
	return len(p.Certs)+len(p.CA) == len(p.compiled.certs)+len(p.compiled.ca)
}

// For returns the pins of p that apply to gun, a GUN such as
// docker.io/library/alpine: the certificate IDs listed for gun itself and
// the CA files of every prefix of gun. p was compiled by Load; a Pinning
// that Load did not return pins nothing.
func (p *Pinning) For(gun string) Pins {
	got := Pins{CertIDs: p.compiled.certs[gun]}
	for _, n := range p.compiled.lens {
		if n > len(gun) {
			break
		}
		if ca, ok := p.compiled.ca[gun[:n]]; ok {
			got.CAs = append(got.CAs, ca)
		}
	}
	return got
}
