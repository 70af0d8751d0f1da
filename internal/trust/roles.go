package trust

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/theupdateframework/notary/tuf"
	"github.com/theupdateframework/notary/tuf/data"
)

// snapshotRoles lists the delegations a stored snapshot names: what the
// previous trusted update saw. b is a snapshot the cache stored after it
// verified.
func snapshotRoles(b []byte) ([]data.RoleName, error) {
	var s struct {
		Signed struct {
			Meta map[string]json.RawMessage `json:"meta"`
		} `json:"signed"`
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, err
	}
	var out []data.RoleName
	for name := range s.Signed.Meta {
		if data.IsDelegation(data.RoleName(name)) {
			out = append(out, data.RoleName(name))
		}
	}
	slices.Sort(out)
	return out, nil
}

// checkRoles refuses what notary lets pass with a warning. notary skips a
// delegation that the snapshot does not list, or that is expired or fails
// its signature threshold, and resolves tags through the roles that
// remain: with only the server-held snapshot and timestamp keys, a Notary
// server could then drop targets/releases and roll a tag back to whatever
// targets once said (TUF 5.5.5, role removal). Here a delegation that the
// previous trusted snapshot listed (prev), or that the rule searches
// (ruleRoles), must either be loaded and valid, or be no longer delegated by
// its parent (which only the parent's own key can sign); otherwise the
// whole repository is refused. invalid holds the roles notary loaded but
// refused (nil if none).
func checkRoles(gun string, prev []data.RoleName, repo, invalid *tuf.Repo, ruleRoles []string, now time.Time) *RefusalError {
	roles := slices.Clone(prev)
	for _, r := range ruleRoles {
		roles = append(roles, data.RoleName(r))
	}
	for _, role := range roles {
		if role == data.CanonicalTargetsRole {
			continue // notary fails the whole update without it
		}
		if reason, detail := roleState(role, repo, invalid, slices.Contains(prev, role), now); reason != "" {
			return &RefusalError{GUN: gun, Reason: reason, Detail: detail}
		}
	}
	return nil
}

// roleState says why role is missing from repo when it must not be, or ""
// when it is loaded or legitimately absent (no loaded parent delegates it).
func roleState(role data.RoleName, repo, invalid *tuf.Repo, wasListed bool, now time.Time) (Reason, string) {
	if role == data.CanonicalTargetsRole || repo.Targets[role] != nil {
		return "", ""
	}
	parent := role.Parent()
	p := repo.Targets[parent]
	if p == nil {
		if parent == data.CanonicalTargetsRole || !data.IsDelegation(parent) {
			return "", ""
		}
		// The parent is missing: the child fails with it, or is absent with it.
		reason, detail := roleState(parent, repo, invalid, false, now)
		if reason != "" {
			detail = fmt.Sprintf("%s cannot be read because its parent failed: %s", role, detail)
		}
		return reason, detail
	}
	if !slices.ContainsFunc(p.Signed.Delegations.Roles, func(r *data.Role) bool { return r.Name == role }) {
		return "", "" // the parent's signer removed the delegation
	}
	if _, listed := repo.Snapshot.Signed.Meta[role.String()]; !listed {
		if wasListed {
			return Rollback, fmt.Sprintf("the trust server's new snapshot leaves out %s, which the previous snapshot listed and %s still delegates: a role removal only the server's keys made (TUF 5.5.5); investigate the Notary server",
				role, parent)
		}
		return InvalidMetadata, fmt.Sprintf("the snapshot does not list %s, which %s delegates; the repository is badly published or the Notary server is tampering", role, parent)
	}
	if invalid != nil {
		if bad := invalid.Targets[role]; bad != nil && now.After(bad.Signed.Expires) {
			return Expired, fmt.Sprintf("%s expired at %s; its signer must re-sign it (trustproxy does not fall back to another role)",
				role, bad.Signed.Expires.UTC().Format(time.RFC3339))
		}
	}
	return InvalidMetadata, fmt.Sprintf("%s, delegated by %s, does not verify (signatures or threshold); trustproxy refuses the repository rather than resolve its tags through another role",
		role, parent)
}
