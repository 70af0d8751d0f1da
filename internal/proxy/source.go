package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/singleflight"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/cache"
	"github.com/trustproxy/trustproxy/internal/cosign"
	"github.com/trustproxy/trustproxy/internal/gun"
	"github.com/trustproxy/trustproxy/internal/notation"
	"github.com/trustproxy/trustproxy/internal/trust"
	"github.com/trustproxy/trustproxy/internal/upstream"
)

// A SourceVerdict is one trust source's answer for one digest (or, from a
// source that signs tags, one tag) of one repository. Every source answers
// in this shape; decide applies it.
type SourceVerdict struct {
	Source  config.Source
	Digest  digest.Digest // what was judged; for a tag, what the source says it names
	Size    int64         // the signed length when the source knows it (Notary); -1 otherwise
	Tag     string        // the signed tag, for a source that signs tags (Notary)
	Signers []string      // the rule's signers whose signatures verified
	Role    string        // where the signature was found: Notary's role, or cosign's format
	Reason  Reason        // ReasonVerified, or the refusal's
	Detail  string        // for a person; "" when verified
}

// A Query is what a Source is asked: a tag (Notary only) or a digest of a
// repository, under the rule that matched it.
type Query struct {
	Name   gun.Name
	Rule   *config.Rule
	From   *upstream.Registry // the repository's upstream, whose client reads signatures
	Trust  *config.Trust      // the configuration's trust section: cosign's reverify_ttl, refusal_ttl
	Cosign *cosign.Verifier   // Rule's compiled cosign verifier; nil when its sources do not list cosign
	// Notation is Rule's compiled Notation verifier; nil when its sources do not list notation.
	Notation *notation.Verifier
	Tag      string // a tag to resolve; "" when Digest is asked about
	Digest   digest.Digest
}

// A Source says whether a repository's digest (or tag) carries a signature
// by a signer its rule trusts. A refusal comes back as the verdict and a
// *Refusal (or *trust.RefusalError) with the same reason; any other error
// is no verdict (the client is told to retry). Keyless cosign and Notation
// are further Sources of the same shape.
type Source interface {
	Judge(ctx context.Context, q Query) (SourceVerdict, error)
}

var (
	_ Source = notarySource{}
	_ Source = (*digestSource)(nil)
)

// errNoTags is a tag asked of a source that signs digests only.
var errNoTags = errors.New("this source signs digests, not tags: resolve the tag first")

// notarySource is Notary v1 behind the seam: one verified trust view
// (Verifier.View) of the repository, asked for a tag (its signed target)
// or a digest (a signed target of that digest). Its refusals are trust's.
type notarySource struct{ view *trust.View }

func (n notarySource) Judge(_ context.Context, q Query) (SourceVerdict, error) {
	v := SourceVerdict{Source: config.SourceNotary, Digest: q.Digest, Size: -1}
	var t trust.Target
	if q.Tag != "" {
		var err error
		if t, err = n.view.Resolve(q.Tag); err != nil {
			r, _ := errors.AsType[*trust.RefusalError](err)
			if r != nil {
				v.Reason, v.Detail = Reason(r.Reason), r.Detail
			}
			return v, err
		}
	} else if ts := n.view.ByDigest(q.Digest); len(ts) > 0 {
		t = ts[0]
	} else {
		r := &Refusal{GUN: q.Name.String(), Ref: q.Digest.String(), Reason: Reason(trust.NotSigned),
			Detail: "the digest is neither a signed target nor a platform manifest of a signed index in this repository"}
		v.Reason, v.Detail = r.Reason, r.Detail
		return v, r
	}
	return SourceVerdict{Source: config.SourceNotary, Digest: t.Digest, Size: t.Size, Tag: t.Tag, Signers: t.Signers, Role: t.Role, Reason: ReasonVerified}, nil
}

// target is the verified v as the decision's signed target, of tag
// when v names none.
func (v SourceVerdict) target(tag string) *trust.Target {
	if v.Tag != "" {
		tag = v.Tag
	}
	return &trust.Target{Tag: tag, Digest: v.Digest, Size: v.Size, Role: v.Role, Signers: v.Signers}
}

// maxVerified bounds the digests the verified set and the refusal cache
// remember in memory.
const maxVerified = 1 << 14

// digestSource is a source that signs digests, not tags (cosign,
// Notation): it verifies a digest's signatures with the rule's compiled
// verifier, reading them from the upstream with its client. Verdicts are
// kept in its verified set (shared sealed on Redis under the rule's policy
// stamp) for trust.cosign.reverify_ttl, refusals in memory for
// trust.refusal_ttl, both per *config.Rule: a reloaded rule verifies
// again. Concurrent asks for one digest under one rule verify once.
type digestSource struct {
	source   config.Source
	verified *verifiedSet
	refused  *lru.Cache[string, refusedEntry]
	group    singleflight.Group
	// verify reads and verifies q.Digest's signatures in repo: the signer
	// whose signature verified, a *Refusal, or another error (no verdict).
	verify func(ctx context.Context, q Query, repo name.Repository) (string, error)
}

type refusedEntry struct {
	rule    *config.Rule
	verdict SourceVerdict
	err     *Refusal
	until   time.Time
}

func newDigestSource(sh *cache.Shared, source config.Source, verify func(context.Context, Query, name.Repository) (string, error)) (*digestSource, error) {
	mem, err := lru.New[string, verifiedEntry](maxVerified)
	if err != nil {
		return nil, err
	}
	ref, err := lru.New[string, refusedEntry](maxVerified)
	if err != nil {
		return nil, err
	}
	return &digestSource{source: source, verified: &verifiedSet{mem: mem, shared: sh, source: source}, refused: ref, verify: verify}, nil
}

// newCosignSource is cosign behind the seam, with the rule's compiled
// verifier (Query.Cosign).
func newCosignSource(sh *cache.Shared) (*digestSource, error) {
	return newDigestSource(sh, config.SourceCosign, func(ctx context.Context, q Query, repo name.Repository) (string, error) {
		if q.Cosign == nil {
			return "", noVerifier(q, config.SourceCosign)
		}
		cv, err := q.Cosign.Verify(ctx, cosign.Upstream{Repo: repo, Client: q.From.Client(q.Name.Path())}, q.Digest)
		if r, ok := errors.AsType[*cosign.RefusalError](err); ok {
			return "", &Refusal{GUN: q.Name.String(), Ref: r.Digest.String(), Reason: cosignReason(r.Reason), Detail: "cosign: " + r.Detail}
		}
		return cv.Signer, err
	})
}

// noVerifier refuses q when its rule has no compiled verifier of source.
func noVerifier(q Query, source config.Source) *Refusal {
	return &Refusal{GUN: q.Name.String(), Ref: q.Digest.String(), Reason: Reason(trust.NoRule),
		Detail: fmt.Sprintf("no rule with a %s verifier matches this repository", source)}
}

func (c *digestSource) Judge(ctx context.Context, q Query) (SourceVerdict, error) {
	if q.Tag != "" {
		return SourceVerdict{}, errNoTags
	}
	v := SourceVerdict{Source: c.source, Digest: q.Digest, Size: -1}
	if q.Rule == nil || !q.Rule.Has(c.source) {
		r := noVerifier(q, c.source)
		v.Reason, v.Detail = r.Reason, r.Detail
		return v, r
	}
	if e, ok := c.verified.get(ctx, q.Name, q.Rule, q.Trust, q.Digest); ok {
		v.Signers, v.Role, v.Reason = e.Signers, string(c.source), ReasonVerified
		return v, nil
	}
	key := q.Name.At(q.Digest)
	if f, ok := c.refused.Get(key); ok && f.rule == q.Rule && time.Now().Before(f.until) {
		return f.verdict, f.err
	}
	res, err, _ := c.group.Do(fmt.Sprintf("%s\x00%p", key, q.Rule), func() (any, error) {
		repo, err := name.NewRepository(q.Name.Path(), name.WithDefaultRegistry(q.Name.Upstream()))
		if err != nil {
			return nil, fmt.Errorf("%s: repository %s: %w", c.source, q.Name, err)
		}
		return c.verify(context.WithoutCancel(ctx), q, repo)
	})
	if r, ok := errors.AsType[*Refusal](err); ok {
		v.Reason, v.Detail = r.Reason, r.Detail
		c.refused.Add(key, refusedEntry{rule: q.Rule, verdict: v, err: r, until: time.Now().Add(q.Trust.RefusalTTL)})
		return v, r
	} else if err != nil {
		return SourceVerdict{}, err
	}
	v.Signers, v.Role, v.Reason = []string{res.(string)}, string(c.source), ReasonVerified
	c.verified.put(ctx, q.Name, q.Rule, q.Trust, q.Digest, v.Signers)
	return v, nil
}

// cosignReason is a cosign refusal's reason as the proxy's (reasons).
func cosignReason(r cosign.Reason) Reason {
	switch r {
	case cosign.Unsigned:
		return Reason(trust.NotSigned) // 404, as Notary's: nothing signed it
	case cosign.UntrustedKey:
		return Reason(trust.UntrustedSigner)
	case cosign.NoTlog:
		return ReasonNoTlog
	case cosign.IdentityMismatch:
		return ReasonIdentityMismatch
	case cosign.CertExpired:
		return ReasonCertificateExpired
	}
	return ReasonInvalidSignature // bad_signature, signed_for_other, malformed_sig, too_large
}

// verifiedSet is what cosign verified: GUN@digest → the rule that judged
// it, its signers, until when. It is kept in memory and, with Redis, shared
// sealed (cache.KindVerified) under a key bound to the repository, the
// digest and the rule's policy stamp, so another replica reuses it. A
// blob is served when it lies under a digest of this set (find), so what
// Redis holds must not be able to add to it: an entry that is not sealed
// for its key name is ignored (cache.Shared.Open); a sealed one is taken
// only for its own repository, digest and policy, from its verification
// time to its end, and never past this replica's reverify_ttl.
type verifiedSet struct {
	mem    *lru.Cache[string, verifiedEntry]
	shared *cache.Shared
	source config.Source // whose verdicts: cosign or notation
}

// stamp keeps the verdicts of sources apart on Redis: a rule listing
// cosign and notation has one policy stamp and two verified sets.
func (v *verifiedSet) stamp(r *config.Rule, t *config.Trust) string {
	if v.source == config.SourceNotation {
		return policyStamp(r, t) + "/notation"
	}
	return policyStamp(r, t)
}

type verifiedEntry struct {
	rule     *config.Rule  // in memory only
	GUN      string        `json:"gun"`
	Digest   digest.Digest `json:"digest"`
	Policy   string        `json:"policy"`
	Signers  []string      `json:"signers"`
	Verified time.Time     `json:"verified"`
	Until    time.Time     `json:"until"`
}

// maxSharedVerified bounds an entry read from Redis.
const maxSharedVerified = 16 << 10

// policyStamp names what a cosign verdict under r rests on: the rule's
// pattern, sources and require, whether it needs a tlog entry, the trusted
// root's content, and its signers' cosign keys and identities. A verdict
// under another stamp (a reloaded configuration without that key or
// identity, or with another trusted root) is not reused.
func policyStamp(r *config.Rule, t *config.Trust) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%q\n%s\n%t\n%x\n", r.Repositories, r.Sources, r.Require, r.AllowNoTlog, t.Cosign.RootSum)
	for _, s := range r.TrustedSigners {
		if s.CosignPEM != nil {
			fmt.Fprintf(h, "signer %q %x\n", s.Name, sha256.Sum256(s.CosignPEM))
		}
		if id := s.CosignIdentity; id != nil {
			fmt.Fprintf(h, "signer %q identity %q %q %q %q\n", s.Name, id.Issuer, id.IssuerRegexp, id.Subject, id.SubjectRegexp)
		}
	}
	if r.Has(config.SourceNotation) {
		fmt.Fprintf(h, "notation %q %q\n", t.Notation.Level, t.Notation.Revocation)
		for _, s := range r.TrustedSigners {
			if s.NotationPEM != nil {
				fmt.Fprintf(h, "notation signer %q %x %q\n", s.Name, sha256.Sum256(s.NotationPEM), s.NotationIdentities)
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

func (v *verifiedSet) key(n gun.Name, d digest.Digest, policy string) string {
	sum := sha256.Sum256([]byte(n.At(d) + "\n" + policy))
	return v.shared.Key("verified:" + hex.EncodeToString(sum[:16]))
}

// get returns the unexpired verdict on d of n under r: from memory, else
// from Redis.
func (v *verifiedSet) get(ctx context.Context, n gun.Name, r *config.Rule, t *config.Trust, d digest.Digest) (verifiedEntry, bool) {
	now := time.Now()
	if e, ok := v.mem.Get(n.At(d)); ok && e.rule == r && now.Before(e.Until) {
		return e, true
	}
	if v.shared == nil || r == nil || !r.Has(v.source) {
		return verifiedEntry{}, false
	}
	policy := v.stamp(r, t)
	key := v.key(n, d, policy)
	b := v.shared.Get(ctx, cache.KindVerified, key, maxSharedVerified)
	if b == nil {
		return verifiedEntry{}, false
	}
	var e verifiedEntry
	if json.Unmarshal(b, &e) != nil || e.GUN != n.String() || e.Digest != d || e.Policy != policy || len(e.Signers) == 0 {
		v.shared.Reject(cache.KindVerified, key, "a sealed verdict that does not read, or of another repository, digest or policy")
		return verifiedEntry{}, false
	}
	if end := e.Verified.Add(t.Cosign.ReverifyTTL); e.Until.After(end) {
		e.Until = end
	}
	if now.Before(e.Verified) || !now.Before(e.Until) {
		return verifiedEntry{}, false // over: an old entry replayed, or one from a replica whose clock is ahead
	}
	e.rule = r
	v.mem.Add(n.At(d), e)
	return e, true
}

// put records that d of n verified under r, for reverify_ttl.
func (v *verifiedSet) put(ctx context.Context, n gun.Name, r *config.Rule, t *config.Trust, d digest.Digest, signers []string) {
	now := time.Now()
	e := verifiedEntry{rule: r, GUN: n.String(), Digest: d, Signers: signers, Verified: now, Until: now.Add(t.Cosign.ReverifyTTL)}
	v.mem.Add(n.At(d), e)
	if v.shared == nil || v.shared.Health.Skip() {
		return
	}
	e.Policy = v.stamp(r, t)
	payload, err := json.Marshal(e)
	if err != nil {
		return
	}
	ctx, cancel := v.shared.Bound(context.WithoutCancel(ctx))
	defer cancel()
	key := v.key(n, d, e.Policy)
	v.shared.Health.Failed(v.shared.Redis.Set(ctx, key, v.shared.Seal(cache.KindVerified, key, payload), t.Cosign.ReverifyTTL).Err())
}
