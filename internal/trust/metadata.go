package trust

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/theupdateframework/notary/storage"
	"github.com/theupdateframework/notary/trustpinning"
	"github.com/theupdateframework/notary/tuf"
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
	if n, _ := strconv.Atoi(version); role == "root" && version != "" && n < view.Versions[role] {
		return v.olderRoot(name, r, b, n, view.Versions[role])
	}
	if version != "" && version != strconv.Itoa(view.Versions[role]) {
		return nil, notHere(fmt.Sprintf("only the verified version of %s, %d, is served", role, view.Versions[role]))
	}
	if hash != "" && hash != sum(b, len(hash)) {
		return nil, notHere(fmt.Sprintf("no %s with that hash: only the verified version is served", role))
	}
	return b, nil
}

// olderRoot returns version n of gun's root, older than current (the
// verified root, version cur): the intermediate root a notary client whose
// cached root is older asks for, to walk the rotations to the current one.
// It is fetched from the Notary server with the versions after it, once
// per replica, and served only when the chain holds: each root signed by
// the keys of the one before (and its own), up to the very bytes of the
// verified root. The client then checks the chain again from the root it
// holds, which is what makes an older root trusted: a Notary server
// could make up a chain of its own ending at the current root, but not
// one that starts at a root the client already trusts.
func (v *Verifier) olderRoot(name gun.Name, r *config.Rule, current []byte, n, cur int) ([]byte, error) {
	gun := name.String()
	file := fmt.Sprintf("%d.root.json", n)
	key := gun + "\x00" + file + "\x00" + sum(current, 64)
	if b, ok := v.olderRoots.Get(key); ok {
		return b, nil
	}
	if cur-n > v.limits.MaxRootRotations {
		return nil, &RefusalError{GUN: gun, Ref: file, Reason: NotSigned,
			Detail: fmt.Sprintf("only the %d root versions before the verified one (%d) are served (limits.max_root_rotations)", v.limits.MaxRootRotations, cur)}
	}
	up, rerr := v.lookup(name, r)
	if rerr != nil {
		return nil, rerr
	}
	res, err, _ := v.group.Do(key, func() (any, error) {
		transport := &deadlineTransport{base: up.client.RoundTripper("repository:" + gun + ":pull"), timeout: v.limits.UpstreamTimeout}
		hs, err := storage.NewNotaryServerStore(strings.TrimSuffix(up.cfg.Notary.URL, "/"), data.GUN(gun), transport)
		if err != nil {
			return nil, &RefusalError{GUN: gun, Ref: file, Reason: NoTrustServer, Err: err,
				Detail: fmt.Sprintf("upstreams[%d].notary.url is not usable", up.index)}
		}
		remote := newBoundedRemote(hs, v.limits)
		chain := tuf.NewRepoBuilder(data.GUN(gun), nil, trustpinning.TrustPinConfig{})
		var first []byte
		for k := n; k < cur; k++ {
			b, err := remote.GetSized(fmt.Sprintf("%d.root", k), storage.NoSizeLimit)
			switch {
			case errors.As(err, new(storage.ErrMetaNotFound)):
				return nil, &RefusalError{GUN: gun, Ref: file, Reason: NotSigned,
					Detail: fmt.Sprintf("the trust server has no root version %d", k)}
			case err != nil:
				return nil, &RefusalError{GUN: gun, Ref: file, Reason: TrustUnavailable, Err: cause(err),
					Detail: fmt.Sprintf("root version %d could not be fetched from the trust server; retry", k)}
			}
			if got, _ := metaVersion(b); got != k {
				return nil, &RefusalError{GUN: gun, Ref: file, Reason: InvalidMetadata,
					Detail: fmt.Sprintf("the trust server answered version %d for root version %d; investigate the server", got, k)}
			}
			if err := chain.LoadRootForUpdate(b, k, false); err != nil {
				return nil, &RefusalError{GUN: gun, Ref: file, Reason: InvalidMetadata, Err: err,
					Detail: fmt.Sprintf("root version %d from the trust server is not a link of the chain to the verified root; investigate the server", k)}
			}
			if k == n {
				first = b
			}
		}
		if err := chain.LoadRootForUpdate(current, cur, false); err != nil {
			return nil, &RefusalError{GUN: gun, Ref: file, Reason: InvalidMetadata, Err: err,
				Detail: fmt.Sprintf("the verified root (version %d) is not signed by the keys of the root versions before it the trust server offers; investigate the server", cur)}
		}
		v.olderRoots.Add(key, first)
		return first, nil
	})
	if err != nil {
		return nil, err
	}
	return res.([]byte), nil
}

// metaVersion is the signed version of a metadata document, or 0.
func metaVersion(b []byte) (int, error) {
	var signed struct {
		Signed struct {
			Version int `json:"version"`
		} `json:"signed"`
	}
	err := json.Unmarshal(b, &signed)
	return signed.Signed.Version, err
}

// heldRole reads role's metadata from this replica's store, and says
// whether it is the version view rests on.
func (v *Verifier) heldRole(gun string, r *config.Rule, view *View, role string) ([]byte, bool, error) {
	limit, _ := roleCap(v.limits, role)
	b, err := v.meta.For(gun, v.anchorOf(gun, r).stamp).GetSized(role, limit)
	if err != nil {
		return nil, false, nil // not held here
	}
	version, err := metaVersion(b)
	if err != nil {
		return nil, false, &RefusalError{GUN: gun, Reason: InvalidMetadata, Err: err, Detail: "the stored trust data does not read"}
	}
	return b, version == view.Versions[role], nil
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
