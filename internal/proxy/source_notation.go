package proxy

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/cache"
	"github.com/trustproxy/trustproxy/internal/notation"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// notationSource verifies Notation signatures of a digest with the rule's
// compiled verifier (Query.Notation), reading them from the upstream with
// its client, as cosignSource does cosign's: verdicts in a verified set of
// its own (shared sealed on Redis under the rule's policy stamp, which
// covers the notation signers' CA certificates and identities) for
// trust.cosign.reverify_ttl, refusals for trust.refusal_ttl, both per
// *config.Rule, concurrent asks for one digest verified once.
type notationSource struct {
	verified *verifiedSet
	refused  *lru.Cache[string, notationRefused]
	group    singleflight.Group
}

type notationRefused struct {
	rule    *config.Rule
	verdict SourceVerdict
	err     *notation.RefusalError
	until   time.Time
}

func newNotationSource(sh *cache.Shared) (*notationSource, error) {
	mem, err := lru.New[string, verifiedEntry](maxVerified)
	if err != nil {
		return nil, err
	}
	ref, err := lru.New[string, notationRefused](maxVerified)
	if err != nil {
		return nil, err
	}
	return &notationSource{verified: &verifiedSet{mem: mem, shared: sh, source: config.SourceNotation}, refused: ref}, nil
}

func (c *notationSource) Judge(ctx context.Context, q Query) (SourceVerdict, error) {
	if q.Tag != "" {
		return SourceVerdict{}, errNoTags
	}
	v := SourceVerdict{Source: config.SourceNotation, Digest: q.Digest, Size: -1}
	if q.Rule == nil || q.Notation == nil {
		v.Reason, v.Detail = Reason(trust.NoRule), "no rule with a Notation verifier matches this repository"
		return v, &Refusal{GUN: q.Name.String(), Ref: q.Digest.String(), Reason: v.Reason, Detail: v.Detail}
	}
	if e, ok := c.verified.get(ctx, q.Name, q.Rule, q.Trust, q.Digest); ok {
		v.Signers, v.Role, v.Reason = e.Signers, "notation", ReasonVerified
		return v, nil
	}
	key := q.Name.At(q.Digest)
	if f, ok := c.refused.Get(key); ok && f.rule == q.Rule && time.Now().Before(f.until) {
		return f.verdict, f.err
	}
	res, err, _ := c.group.Do(fmt.Sprintf("%s\x00%p", key, q.Rule), func() (any, error) {
		repo, err := name.NewRepository(q.Name.Path(), name.WithDefaultRegistry(q.Name.Upstream()))
		if err != nil {
			return nil, fmt.Errorf("notation: repository %s: %w", q.Name, err)
		}
		return q.Notation.Verify(context.WithoutCancel(ctx), notation.Upstream{Repo: repo, Client: q.From.Client(q.Name.Path())}, q.Digest)
	})
	if r, ok := errors.AsType[*notation.RefusalError](err); ok {
		v.Reason, v.Detail = notationReason(r.Reason), r.Detail
		c.refused.Add(key, notationRefused{rule: q.Rule, verdict: v, err: r, until: time.Now().Add(q.Trust.RefusalTTL)})
		return v, r
	} else if err != nil {
		return SourceVerdict{}, err
	}
	nv := res.(notation.Verdict)
	v.Signers, v.Role, v.Reason = []string{nv.Signer}, "notation", ReasonVerified
	c.verified.put(ctx, q.Name, q.Rule, q.Trust, q.Digest, v.Signers)
	return v, nil
}

// notationReason is a Notation refusal's reason as the proxy's (reasons).
func notationReason(r notation.Reason) Reason {
	switch r {
	case notation.Unsigned:
		return Reason(trust.NotSigned) // 404, as Notary's: nothing signed it
	case notation.Untrusted:
		return Reason(trust.UntrustedSigner)
	case notation.IdentityMismatch:
		return ReasonIdentityMismatch
	case notation.Expired:
		return ReasonCertificateExpired
	case notation.Revoked:
		return ReasonRevoked
	}
	return ReasonInvalidSignature // bad_signature, signed_for_other, malformed_sig, too_large
}

// notationRefusal is a Notation refusal as the proxy's.
func notationRefusal(gun string, r *notation.RefusalError) *Refusal {
	return &Refusal{GUN: gun, Ref: r.Digest.String(), Reason: notationReason(r.Reason), Detail: "notation: " + r.Detail}
}

// compileNotation compiles the Notation verifier of each rule of cfg whose
// sources list notation, from its signers' notation_ca and
// notation_identities and trust.notation (config.Load checked them).
func compileNotation(cfg *config.Config) (map[*config.Rule]*notation.Verifier, error) {
	out := map[*config.Rule]*notation.Verifier{}
	for i := range cfg.Trust.Rules {
		r := &cfg.Trust.Rules[i]
		if !r.Has(config.SourceNotation) {
			continue
		}
		opts := notation.Options{Level: notation.Level(cfg.Trust.Notation.Level), Revocation: cfg.Trust.Notation.Revocation == "on"}
		for _, sg := range r.TrustedSigners {
			if sg.NotationPEM == nil {
				continue
			}
			ns, err := notation.ParseSigner(sg.Name, sg.NotationPEM, sg.NotationIdentities)
			if err != nil {
				return nil, fmt.Errorf("trust.rules[%d]: %w", i, err)
			}
			opts.Signers = append(opts.Signers, ns)
		}
		v, err := notation.New(opts)
		if err != nil {
			return nil, fmt.Errorf("trust.rules[%d]: %w", i, err)
		}
		out[r] = v
	}
	return out, nil
}
