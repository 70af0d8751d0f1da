package trustserver

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/docker/go/canonical/json"
	"github.com/opencontainers/go-digest"
	"github.com/theupdateframework/notary"
	"github.com/theupdateframework/notary/cryptoservice"
	"github.com/theupdateframework/notary/trustmanager"
	"github.com/theupdateframework/notary/tuf"
	"github.com/theupdateframework/notary/tuf/data"
	"github.com/theupdateframework/notary/tuf/utils"
)

// defaultExpiry is how long each role's metadata is valid when signed without
// an Expires option: what notary's client and server use.
var defaultExpiry = map[data.RoleName]time.Duration{
	data.CanonicalRootRole:      notary.NotaryRootExpiry,
	data.CanonicalTargetsRole:   notary.NotaryTargetsExpiry,
	data.CanonicalSnapshotRole:  notary.NotarySnapshotExpiry,
	data.CanonicalTimestampRole: notary.NotaryTimestampExpiry,
}

// A Repo is the trust data of one GUN, with every key it is signed with. Its
// changes are staged until Publish; the Server serves only what was published.
// It is safe for concurrent use.
type Repo struct {
	srv        *Server
	gun        data.GUN
	rootCertID string

	mu      sync.Mutex
	cs      *cryptoservice.CryptoService
	tuf     *tuf.Repo
	changed map[data.RoleName]bool // targets roles to sign at the next Publish
}

// NewRepo makes the trust data of gun, as `notary init` does: an ECDSA root
// key wrapped in an x509 certificate whose CN is gun, and ECDSA targets,
// snapshot and timestamp keys, all held in memory. It publishes version 1 of
// every role, with no targets. It fails if s already serves gun.
func (s *Server) NewRepo(gun string) (*Repo, error) {
	if gun == "" {
		return nil, errors.New("new trust repository: empty GUN")
	}
	s.mu.Lock()
	_, exists := s.files[gun]
	if !exists {
		s.files[gun] = make(map[string][]byte) // reserve gun; nothing is served until the first publish
	}
	s.mu.Unlock()
	if exists {
		return nil, fmt.Errorf("new trust repository %s: already exists", gun)
	}
	r, err := newRepo(s, data.GUN(gun))
	if err != nil {
		s.mu.Lock()
		delete(s.files, gun)
		s.mu.Unlock()
		return nil, fmt.Errorf("new trust repository %s: %w", gun, err)
	}
	return r, nil
}

func newRepo(s *Server, gun data.GUN) (*Repo, error) {
	cs := cryptoservice.NewCryptoService(trustmanager.NewKeyMemoryStore(noPassphrase))
	roles := make(map[data.RoleName]data.BaseRole, len(data.BaseRoles))
	for _, role := range data.BaseRoles {
		key, err := cs.Create(role, gun, data.ECDSAKey)
		if err != nil {
			return nil, fmt.Errorf("create %s key: %w", role, err)
		}
		if role == data.CanonicalRootRole {
			priv, _, err := cs.GetPrivateKey(key.ID())
			if err != nil {
				return nil, fmt.Errorf("root key: %w", err)
			}
			now := time.Now()
			cert, err := cryptoservice.GenerateCertificate(priv, gun, now, now.Add(certValidity))
			if err != nil {
				return nil, fmt.Errorf("root certificate: %w", err)
			}
			key = utils.CertToKey(cert)
		}
		roles[role] = data.NewBaseRole(role, 1, key)
	}

	t := tuf.NewRepo(cs)
	err := t.InitRoot(roles[data.CanonicalRootRole], roles[data.CanonicalTimestampRole],
		roles[data.CanonicalSnapshotRole], roles[data.CanonicalTargetsRole], false)
	if err != nil {
		return nil, fmt.Errorf("init root: %w", err)
	}
	if _, err := t.InitTargets(data.CanonicalTargetsRole); err != nil {
		return nil, fmt.Errorf("init targets: %w", err)
	}
	if err := t.InitSnapshot(); err != nil {
		return nil, fmt.Errorf("init snapshot: %w", err)
	}
	if err := t.InitTimestamp(); err != nil {
		return nil, fmt.Errorf("init timestamp: %w", err)
	}
	r := &Repo{
		srv:        s,
		gun:        gun,
		rootCertID: roles[data.CanonicalRootRole].ListKeyIDs()[0],
		cs:         cs,
		tuf:        t,
		changed:    map[data.RoleName]bool{data.CanonicalTargetsRole: true},
	}
	if err := r.publish(nil, true); err != nil {
		return nil, err
	}
	return r, nil
}

// noPassphrase is the passphrase retriever of the in-memory key store: keys
// never leave the process, so they are not encrypted.
func noPassphrase(keyName, alias string, createNew bool, attempts int) (string, bool, error) {
	return "", false, nil
}

// GUN returns the repository's globally unique name.
func (r *Repo) GUN() string { return r.gun.String() }

// RootCertID returns the ID of the root certificate key, as root.json's root
// role lists it: what trust pinning's certs pin for this GUN.
func (r *Repo) RootCertID() string { return r.rootCertID }

// AddDelegation adds the delegation role (such as targets/releases) under
// targets, or adds signers to it if it exists, as `notary delegation add
// --all-paths` does with each signer's certificate: the role may sign any
// target and needs one signature. It is signed (empty, if no target is added)
// at the next Publish.
func (r *Repo) AddDelegation(role string, signers ...*Signer) error {
	name := data.RoleName(role)
	if !data.IsDelegation(name) || name.Parent() != data.CanonicalTargetsRole {
		return fmt.Errorf("add delegation %s to %s: not a delegation of targets (want targets/<name>)", role, r.gun)
	}
	if len(signers) == 0 {
		return fmt.Errorf("add delegation %s to %s: no signers", role, r.gun)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	keys := make(data.KeyList, 0, len(signers))
	for _, s := range signers {
		if err := r.cs.AddKey(name, r.gun, s.priv); err != nil {
			return fmt.Errorf("add delegation %s to %s: key of %s: %w", role, r.gun, s.name, err)
		}
		keys = append(keys, s.key)
	}
	if err := r.tuf.UpdateDelegationKeys(name, keys, nil, 1); err != nil {
		return fmt.Errorf("add delegation %s to %s: %w", role, r.gun, err)
	}
	if err := r.tuf.UpdateDelegationPaths(name, []string{""}, nil, false); err != nil {
		return fmt.Errorf("add delegation %s to %s: %w", role, r.gun, err)
	}
	if _, ok := r.tuf.Targets[name]; !ok {
		if _, err := r.tuf.InitTargets(name); err != nil {
			return fmt.Errorf("add delegation %s to %s: %w", role, r.gun, err)
		}
	}
	r.changed[data.CanonicalTargetsRole] = true
	r.changed[name] = true
	return nil
}

// AddTarget adds tag, or replaces it, in role (targets or a delegation made
// with AddDelegation) as the manifest with digest dgst and length size: what
// `notary addhash` does. It is signed with the role's keys at the next
// Publish. dgst must be a sha256 digest.
func (r *Repo) AddTarget(role, tag string, dgst digest.Digest, size int64) error {
	if err := dgst.Validate(); err != nil {
		return fmt.Errorf("add target %s to %s: %w", tag, r.gun, err)
	}
	if dgst.Algorithm() != digest.SHA256 {
		return fmt.Errorf("add target %s to %s: digest %s is not sha256", tag, r.gun, dgst)
	}
	if size < 0 {
		return fmt.Errorf("add target %s to %s: negative size %d", tag, r.gun, size)
	}
	sum, err := hex.DecodeString(dgst.Encoded())
	if err != nil {
		return fmt.Errorf("add target %s to %s: %w", tag, r.gun, err)
	}
	name := data.RoleName(role)
	if name != data.CanonicalTargetsRole && !data.IsDelegation(name) {
		return fmt.Errorf("add target %s to %s: %s is not a targets role", tag, r.gun, role)
	}
	meta := data.FileMeta{Length: size, Hashes: data.Hashes{notary.SHA256: sum}}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, err := r.tuf.AddTargets(name, data.Files{tag: meta}); err != nil {
		return fmt.Errorf("add target %s to %s in %s: %w", tag, role, r.gun, err)
	}
	r.changed[name] = true
	return nil
}

// A PublishOption changes how Publish signs.
type PublishOption func(*publishConfig)

type publishConfig struct {
	expires map[data.RoleName]time.Time
}

// Expires makes Publish sign role (root, targets, snapshot, timestamp or a
// delegation) with expiry t, re-signing it even if it did not change. A time
// in the past makes metadata that clients must refuse as expired.
func Expires(role string, t time.Time) PublishOption {
	return func(c *publishConfig) { c.expires[data.RoleName(role)] = t }
}

// Publish signs the targets roles changed since the last Publish, and any
// role given an Expires option, then a new snapshot and timestamp, each with
// its version bumped, and makes them what the Server serves. Roles given no
// Expires option are valid for as long as notary makes them: root 10 years,
// targets and delegations 3 years, snapshot 3 years, timestamp 14 days.
func (r *Repo) Publish(opts ...PublishOption) error {
	c := publishConfig{expires: make(map[data.RoleName]time.Time)}
	for _, o := range opts {
		o(&c)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for role := range c.expires {
		if !data.ValidRole(role) || (data.IsDelegation(role) && r.tuf.Targets[role] == nil) {
			return fmt.Errorf("publish %s: no role %s to set the expiry of", r.gun, role)
		}
	}
	return r.publish(c.expires, false)
}

// publish signs and serves; the caller holds r.mu (or owns r). all signs root
// as well, as the first publish must.
func (r *Repo) publish(expires map[data.RoleName]time.Time, all bool) error {
	now := time.Now()
	expiry := func(role data.RoleName) time.Time {
		if t, ok := expires[role]; ok {
			return t
		}
		base := role
		if data.IsDelegation(role) {
			base = data.CanonicalTargetsRole
		}
		return now.Add(defaultExpiry[base])
	}
	signed := make(map[data.RoleName]*data.Signed)

	if _, ok := expires[data.CanonicalRootRole]; ok || all {
		s, err := r.tuf.SignRoot(expiry(data.CanonicalRootRole), nil)
		if err != nil {
			return fmt.Errorf("publish %s: sign root: %w", r.gun, err)
		}
		signed[data.CanonicalRootRole] = s
	}
	// Targets roles are independent of each other's bytes (a parent holds its
	// delegations' keys, the snapshot their hashes), so any order will do;
	// sorted keeps versions predictable.
	for _, role := range slices.Sorted(maps.Keys(r.tuf.Targets)) {
		if _, ok := expires[role]; !ok && !r.changed[role] {
			continue
		}
		s, err := r.tuf.SignTargets(role, expiry(role))
		if err != nil {
			return fmt.Errorf("publish %s: sign %s: %w", r.gun, role, err)
		}
		signed[role] = s
	}
	s, err := r.tuf.SignSnapshot(expiry(data.CanonicalSnapshotRole))
	if err != nil {
		return fmt.Errorf("publish %s: sign snapshot: %w", r.gun, err)
	}
	signed[data.CanonicalSnapshotRole] = s
	s, err = r.tuf.SignTimestamp(expiry(data.CanonicalTimestampRole))
	if err != nil {
		return fmt.Errorf("publish %s: sign timestamp: %w", r.gun, err)
	}
	signed[data.CanonicalTimestampRole] = s

	files := make(map[string][]byte, 4*len(signed))
	for role, s := range signed {
		// Marshalled as tuf.Repo does when it hashes a role into the snapshot
		// or timestamp, so the bytes served are the bytes those name.
		b, err := json.Marshal(s)
		if err != nil {
			return fmt.Errorf("publish %s: encode %s: %w", r.gun, role, err)
		}
		var common data.SignedCommon
		if err := json.Unmarshal(*s.Signed, &common); err != nil {
			return fmt.Errorf("publish %s: decode %s: %w", r.gun, role, err)
		}
		meta, err := data.NewFileMeta(bytes.NewReader(b), data.NotaryDefaultHashes...)
		if err != nil {
			return fmt.Errorf("publish %s: hash %s: %w", r.gun, role, err)
		}
		name := role.String()
		files[name] = b
		files[strconv.Itoa(common.Version)+"."+name] = b
		for _, sum := range meta.Hashes {
			files[utils.ConsistentName(name, sum)] = b
		}
	}
	r.srv.publish(r.gun.String(), files)
	clear(r.changed)
	return nil
}
