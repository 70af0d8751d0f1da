package trust

import (
	"cmp"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"
)

// Target is a tag that verified: the manifest digest and length its signed
// target names, and who signed it.
type Target struct {
	Tag    string
	Digest digest.Digest // sha256 of the manifest, from the target's hashes
	Size   int64         // the manifest's length in bytes, from the target
	Role   string        // the role that holds it: targets/releases or targets
	// Signers are the names of the configured signers whose keys signed the
	// role, or the key IDs that signed when the rule names no signers.
	Signers []string
}

// View is the verified view of one GUN at one moment: what its trust data
// says, judged by the rule that matches it. It is immutable.
type View struct {
	GUN string
	// Targets are the tags that pass the rule, by tag.
	Targets map[string]Target
	// Refused are signed tags that fail the rule (e.g. untrusted signer), by tag.
	Refused map[string]*RefusalError
	// Checked is when the trust data was verified; Expires is the earliest
	// expiry of the metadata it rests on. Never use a View after Expires.
	Checked time.Time
	Expires time.Time
	// Refreshed is when the trust server last gave a fresh timestamp.
	// Unreachable says why it gave none this time ("" when it did): the
	// View rests on cached metadata, for at most the rule's
	// max_staleness after Refreshed.
	Refreshed   time.Time
	Unreachable string
	// Versions are the versions of the metadata it rests on, by role, and
	// Keys the key IDs its root gives the timestamp, snapshot and targets
	// roles: a replica that uses another's View raises its own floor to
	// them (cache.GUNStore.RaiseFloor).
	Versions map[string]int
	Keys     map[string][]string

	byDigest map[digest.Digest][]Target // Targets by manifest digest, in byDigestOrder
}

// Resolve returns the target of tag, or a *RefusalError.
func (s *View) Resolve(tag string) (Target, error) {
	if t, ok := s.Targets[tag]; ok {
		return t, nil
	}
	if r, ok := s.Refused[tag]; ok {
		return Target{}, r
	}
	return Target{}, &RefusalError{GUN: s.GUN, Ref: tag, Reason: NotSigned,
		Detail: "no signed target of that name in the roles the rule allows; sign it (docker trust sign / notary addhash) or pull a signed tag"}
}

// ByDigest returns the targets whose manifest digest is d, targets/releases
// first, then by tag.
func (s *View) ByDigest(d digest.Digest) []Target {
	if s.byDigest != nil {
		return s.byDigest[d]
	}
	var out []Target
	for _, t := range s.Targets {
		if t.Digest == d {
			out = append(out, t)
		}
	}
	slices.SortFunc(out, byDigestOrder)
	return out
}

// index fills byDigest from Targets; judge calls it once.
func (s *View) index() {
	s.byDigest = map[digest.Digest][]Target{}
	for _, t := range s.Targets {
		s.byDigest[t.Digest] = append(s.byDigest[t.Digest], t)
	}
	for _, ts := range s.byDigest {
		slices.SortFunc(ts, byDigestOrder)
	}
}

func byDigestOrder(a, b Target) int {
	rel := func(t Target) bool { return t.Role == "targets/releases" }
	if rel(a) != rel(b) {
		if rel(a) {
			return -1
		}
		return 1
	}
	return cmp.Or(cmp.Compare(a.Role, b.Role), cmp.Compare(a.Tag, b.Tag))
}
