package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/cache"
	"github.com/trustproxy/trustproxy/internal/egress"
	"github.com/trustproxy/trustproxy/internal/notation"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// newNotationSource is Notation behind the seam, with the rule's compiled
// verifier (Query.Notation); its verified set's policy stamp covers the
// notation signers' CA certificates and identities.
func newNotationSource(sh *cache.Shared) (*digestSource, error) {
	return newDigestSource(sh, config.SourceNotation, func(ctx context.Context, q Query, repo name.Repository) (string, error) {
		if q.Notation == nil {
			return "", noVerifier(q, config.SourceNotation)
		}
		nv, err := q.Notation.Verify(ctx, notation.Upstream{Repo: repo, Client: q.From.Client(q.Name.Path())}, q.Digest)
		if r, ok := errors.AsType[*notation.RefusalError](err); ok {
			return "", &Refusal{GUN: q.Name.String(), Ref: r.Digest.String(), Reason: notationReason(r.Reason), Detail: "notation: " + r.Detail}
		}
		return nv.Signer, err
	})
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
	case notation.RevocationUnknown:
		return ReasonRevocationUnknown
	}
	return ReasonInvalidSignature // bad_signature, signed_for_other, malformed_sig, too_large
}

// compileNotation compiles the Notation verifier of each rule of cfg whose
// sources list notation, from its signers' notation_ca and
// notation_identities and trust.notation (config.Load checked them).
func compileNotation(cfg *config.Config) (map[*config.Rule]*notation.Verifier, error) {
	out := map[*config.Rule]*notation.Verifier{}
	// Revocation servers are named by the signers' certificates: reached
	// through egress's Public client, on public addresses or the hosts
	// the configuration lists.
	var revocation *http.Client
	if cfg.Trust.Notation.Revocation == "on" {
		var err error
		if revocation, err = egress.Public("trust.notation.revocation_hosts", cfg.Trust.Notation.RevocationHosts, notation.DefaultRevocationTimeout); err != nil {
			return nil, err
		}
	}
	for i := range cfg.Trust.Rules {
		r := &cfg.Trust.Rules[i]
		if !r.Has(config.SourceNotation) {
			continue
		}
		opts := notation.Options{Level: notation.Level(cfg.Trust.Notation.Level), Revocation: revocation != nil, RevocationClient: revocation}
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
