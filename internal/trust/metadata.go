package trust

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"

	"github.com/theupdateframework/notary/tuf/data"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/gun"
)

// metadataFile is a file name of notary's read API, under
// /v2/<gun>/_trust/tuf/: <role>.json, <version>.<role>.json or
// <role>.<sha256 or sha512 hex>.json. A role name is root, targets,
// snapshot, timestamp or a delegation (targets/<name>[/<name>...]).
var metadataFile = regexp.MustCompile(`^(?:([1-9][0-9]{0,8})\.)?((?:root|targets|snapshot|timestamp)(?:/[a-z0-9_-][a-z0-9_.-]{0,63}){0,8}?)(?:\.([0-9a-f]{64}|[0-9a-f]{128}))?\.json$`)

// parseMetadataFile splits file, a name of notary's read API, into its
// version ("" when none), role and hash ("" when none).
func parseMetadataFile(file string) (version, role, hash string, ok bool) {
	m := metadataFile.FindStringSubmatch(file)
	if m == nil || len(file) > 512 || !data.ValidRole(data.RoleName(m[2])) {
		return "", "", "", false
	}
	return m[1], m[2], m[3], true
}

// Metadata returns the signed bytes of file, a file name of notary's read
// API (metadataFile), for the repository name whose verified view is view
// (View's answer under rule r): the bytes that view rests on, as the trust
// server signed them, so that a client verifies them again. A view another
// replica verified (a shared verdict) rests on metadata this replica may
// not hold: then this replica verifies the repository's trust data itself,
// once, and serves what it verified. Nothing is fetched for a file name: a
// name out of the grammar, a role the view does not rest on, or a version
// or hash other than the view's is a *RefusalError (NotSigned: not there).
func (v *Verifier) Metadata(ctx context.Context, name gun.Name, r *config.Rule, view *View, file string) ([]byte, error) {
	gun := name.String()
	notHere := func(detail string) error {
		return &RefusalError{GUN: gun, Ref: file, Reason: NotSigned, Detail: detail}
	}
	version, role, hash, ok := parseMetadataFile(file)
	if !ok {
		return nil, notHere("not a trust metadata file: want <role>.json, <version>.<role>.json or <role>.<sha256 hex>.json")
	}
	if _, ok := view.Versions[role]; !ok {
		return nil, notHere(fmt.Sprintf("the verified trust data of %s has no role %s", gun, role))
	}
	b, held, err := v.heldRole(gun, r, view, role)
	if err == nil && !held {
		if view, err = v.verifyHere(ctx, name, r); err == nil {
			b, held, err = v.heldRole(gun, r, view, role)
		}
	}
	if err != nil {
		return nil, err
	}
	if !held {
		return nil, &RefusalError{GUN: gun, Ref: file, Reason: TrustUnavailable,
			Detail: fmt.Sprintf("this replica holds another version of %s than the one it verified; retry", role)}
	}
	if version != "" && version != strconv.Itoa(view.Versions[role]) {
		return nil, notHere(fmt.Sprintf("only the verified version of %s, %d, is served", role, view.Versions[role]))
	}
	if hash != "" && hash != sum(b, len(hash)) {
		return nil, notHere(fmt.Sprintf("no %s with that hash: only the verified version is served", role))
	}
	return b, nil
}

// heldRole reads role's metadata from this replica's store, and says
// whether it is the version view rests on.
func (v *Verifier) heldRole(gun string, r *config.Rule, view *View, role string) ([]byte, bool, error) {
	limit, _ := roleCap(v.limits, role)
	b, err := v.meta.For(gun, v.anchorOf(gun, r).stamp).GetSized(role, limit)
	if err != nil {
		return nil, false, nil // not held here
	}
	var signed struct {
		Signed struct {
			Version int `json:"version"`
		} `json:"signed"`
	}
	if err := json.Unmarshal(b, &signed); err != nil {
		return nil, false, &RefusalError{GUN: gun, Reason: InvalidMetadata, Err: err, Detail: "the stored trust data does not read"}
	}
	return b, signed.Signed.Version == view.Versions[role], nil
}

// verifyHere verifies name's trust data on this replica, whatever view
// other replicas shared, and returns the view it verified.
func (v *Verifier) verifyHere(ctx context.Context, name gun.Name, r *config.Rule) (*View, error) {
	up, rerr := v.lookup(name, r)
	if rerr != nil {
		return nil, rerr
	}
	gun := name.String()
	res, err, _ := v.group.Do(gun+"\x00here", func() (any, error) {
		view, rerr := v.refresh(context.WithoutCancel(ctx), gun, r, up, v.anchorOf(gun, r))
		if rerr != nil {
			return nil, rerr
		}
		return view, nil
	})
	if err != nil {
		return nil, err
	}
	return res.(*View), nil
}

// sum is b's sha256 (n 64) or sha512 (n 128), in hex.
func sum(b []byte, n int) string {
	if n == 128 {
		s := sha512.Sum512(b)
		return hex.EncodeToString(s[:])
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
