package trust

import (
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
// server signed them, so that a client verifies them again. Nothing is
// fetched: a file this replica does not hold, a version or hash other than
// the view's, or a role the view does not rest on is a *RefusalError
// (NotSigned: not there). A file name out of the grammar is one too.
func (v *Verifier) Metadata(name gun.Name, r *config.Rule, view *View, file string) ([]byte, error) {
	gun := name.String()
	notHere := func(detail string) error {
		return &RefusalError{GUN: gun, Ref: file, Reason: NotSigned, Detail: detail}
	}
	version, role, hash, ok := parseMetadataFile(file)
	if !ok {
		return nil, notHere("not a trust metadata file: want <role>.json, <version>.<role>.json or <role>.<sha256 hex>.json")
	}
	want, ok := view.Versions[role]
	if !ok {
		return nil, notHere(fmt.Sprintf("the verified trust data of %s has no role %s", gun, role))
	}
	limit, _ := roleCap(v.limits, role)
	b, err := v.meta.For(gun, v.anchorOf(gun, r).stamp).GetSized(role, limit)
	if err != nil {
		return nil, &RefusalError{GUN: gun, Ref: file, Reason: TrustUnavailable, Err: err,
			Detail: "this replica does not hold the verified trust data; retry"}
	}
	var signed struct {
		Signed struct {
			Version int `json:"version"`
		} `json:"signed"`
	}
	if err := json.Unmarshal(b, &signed); err != nil {
		return nil, &RefusalError{GUN: gun, Ref: file, Reason: InvalidMetadata, Err: err, Detail: "the stored trust data does not read"}
	}
	if signed.Signed.Version != want {
		return nil, &RefusalError{GUN: gun, Ref: file, Reason: TrustUnavailable,
			Detail: fmt.Sprintf("this replica holds %s version %d, the verified view rests on version %d; retry", role, signed.Signed.Version, want)}
	}
	if version != "" && version != strconv.Itoa(signed.Signed.Version) {
		return nil, notHere(fmt.Sprintf("only the verified version of %s, %d, is served", role, signed.Signed.Version))
	}
	if hash != "" && hash != sum(b, len(hash)) {
		return nil, notHere(fmt.Sprintf("no %s with that hash: only the verified version is served", role))
	}
	return b, nil
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
