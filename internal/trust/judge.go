package trust

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/theupdateframework/notary/tuf"
	"github.com/theupdateframework/notary/tuf/data"
	"github.com/trustproxy/trustproxy/config"
)

// judge builds the View of a verified repository under rule r. For each
// tag the first of r's roles holding it decides (docker semantics); only
// those exact roles count, and only roles notary loaded as valid (an expired
// or under-signed delegation is absent, so its tags fall through).
func judge(repo *tuf.Repo, gun string, r *config.Rule, now time.Time) *View {
	s := &View{GUN: gun, Targets: map[string]Target{}, Refused: map[string]*RefusalError{}, Checked: now,
		Versions: map[string]int{
			data.CanonicalRootRole.String():      repo.Root.Signed.Version,
			data.CanonicalTimestampRole.String(): repo.Timestamp.Signed.Version,
			data.CanonicalSnapshotRole.String():  repo.Snapshot.Signed.Version,
		}}
	for role, t := range repo.Targets {
		s.Versions[role.String()] = t.Signed.Version
	}
	s.Keys = map[string][]string{}
	for _, role := range []data.RoleName{data.CanonicalTimestampRole, data.CanonicalSnapshotRole, data.CanonicalTargetsRole} {
		if r := repo.Root.Signed.Roles[role]; r != nil {
			s.Keys[role.String()] = r.KeyIDs
		}
	}
	s.Expires = earliest(repo.Root.Signed.Expires, repo.Timestamp.Signed.Expires, repo.Snapshot.Signed.Expires)
	seen := map[string]bool{}
	for _, name := range r.Roles {
		role := data.RoleName(name)
		st := repo.Targets[role]
		if st == nil {
			continue
		}
		s.Expires = earliest(s.Expires, st.Signed.Expires)
		keys, inPaths, ok := roleKeys(repo, role)
		if !ok {
			continue
		}
		var signedBy []data.PublicKey
		for _, sig := range st.Signatures {
			if k, ok := keys[sig.KeyID]; ok && sig.IsValid && !slices.Contains(signedBy, k) {
				signedBy = append(signedBy, k)
			}
		}
		signers, accepted := accept(r, signedBy)
		for tag, meta := range st.Signed.Targets {
			if seen[tag] || !inPaths(tag) {
				continue
			}
			seen[tag] = true
			refuse := func(reason Reason, detail string) {
				s.Refused[tag] = &RefusalError{GUN: gun, Ref: tag, Reason: reason, Detail: detail}
			}
			h := meta.Hashes["sha256"]
			if len(h) != 32 || meta.Length <= 0 {
				refuse(InvalidMetadata, fmt.Sprintf("the target in %s has no sha256 hash or no positive length; re-sign the tag", name))
				continue
			}
			if !accepted {
				refuse(UntrustedSigner, untrustedDetail(name, signedBy, r))
				continue
			}
			s.Targets[tag] = Target{Tag: tag, Digest: digest.NewDigestFromBytes(digest.SHA256, h), Size: meta.Length,
				Role: name, Signers: signers}
		}
	}
	s.index()
	return s
}

// roleKeys returns the keys of role and its path filter.
func roleKeys(repo *tuf.Repo, role data.RoleName) (map[string]data.PublicKey, func(string) bool, bool) {
	if role == data.CanonicalTargetsRole {
		br, err := repo.Root.BuildBaseRole(role)
		if err != nil {
			return nil, nil, false
		}
		return br.Keys, func(string) bool { return true }, true
	}
	dr, err := repo.GetDelegationRole(role)
	if err != nil {
		return nil, nil, false
	}
	return dr.Keys, dr.CheckPaths, true
}

func untrustedDetail(role string, signedBy []data.PublicKey, r *config.Rule) string {
	ids := make([]string, 0, len(signedBy))
	for _, k := range signedBy {
		ids = append(ids, k.ID())
	}
	return fmt.Sprintf("%s is signed by key(s) %s, but the rule for %s trusts only %s; sign with a trusted key, or add the signer to trust.signers and the rule",
		role, strings.Join(ids, ", "), r.Repositories, strings.Join(r.Signers, ", "))
}

func earliest(ts ...time.Time) time.Time {
	var out time.Time
	for _, t := range ts {
		if !t.IsZero() && (out.IsZero() || t.Before(out)) {
			out = t
		}
	}
	return out
}
