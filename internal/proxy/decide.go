package proxy

import (
	"context"
	"errors"
	"log/slog"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/scan"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// Verdict is what a Decision says to do with a request.
type Verdict string

const (
	Served  Verdict = "served" // it verified: serve it
	Denied  Verdict = "denied" // refused: the client gets the reason
	Audited Verdict = "audit"  // refused, but its rule is in audit mode: served unverified, the refusal logged
)

// The proxy's own refusal reasons, beside trust's: what the content, not
// the trust data, gave away.
const (
	ReasonReadOnly        trust.Reason = "read_only"        // a write: trustproxy serves, it does not host pushes
	ReasonDigestMismatch  trust.Reason = "digest_mismatch"  // the upstream's bytes do not match the signed digest or size
	ReasonInvalidManifest trust.Reason = "invalid_manifest" // the signed manifest is malformed, ambiguous or over the limit
	ReasonNotReferenced   trust.Reason = "not_referenced"   // no verified manifest of the repository refers to the blob
)

// reasonVerified is the reason of a Served decision.
const reasonVerified trust.Reason = "verified"

// A Decision is the verdict on one request for content, why, and the facts
// behind it.
type Decision struct {
	Repository string // the GUN
	Ref        string // the tag or digest asked for; "" for tags/list
	Kind       string // manifest, blob or tags
	Verdict    Verdict
	Reason     trust.Reason // reasonVerified when served; else the refusal's
	Message    string       // the refusal, for a person; "" when served
	// Rule is the trust rule that decided; nil when none matches.
	Rule *config.Rule
	// Digest is the manifest or blob the request resolves to, when known,
	// and Size its length (-1 when unknown).
	Digest digest.Digest
	Size   int64
	// Target is the signed target behind a manifest: its role and signers.
	// Nil for a platform manifest of a signed index, and for blobs.
	Target *trust.Target
	// Trust is the repository's verified trust view; nil when the whole
	// repository was refused.
	Trust *trust.Snapshot
	// Scan is the scan gate's verdict on a manifest; nil when its rule has
	// no scan policy or the gate was not reached.
	Scan *scan.Verdict

	refusal  *trust.RefusalError
	desc     v1.Descriptor     // the blob or manifest as verified; Size -1 when unknown
	manifest *verifiedManifest // a Served manifest's verified bytes
	source   string            // where manifest came from: cache or upstream
	upstream bool              // audit mode: answer from the upstream, unverified
}

// Err is the refusal a Denied decision sends the client; nil otherwise.
func (d *Decision) Err() error {
	if d.Verdict != Denied {
		return nil
	}
	return d.refusal
}

// decide is the one place a request for content is judged: it finds the
// rule, takes the repository's trust view, resolves the tag or places the
// digest under a signed target, verifies a manifest's bytes, and applies
// the rule's mode. Manifests, blobs, tags/list and `trustproxy check` all
// ask it; the decision is logged and counted here (a served blob once its
// bytes have verified: settleBlob). An error that is not a
// verdict (the upstream unreachable, storage failing) is returned as is:
// the client is told to retry.
func (s *Server) decide(ctx context.Context, req *request) (*Decision, error) {
	d := &Decision{Repository: req.gun, Ref: req.ref, Kind: req.kind.String(), Digest: req.dgst, Size: -1,
		desc: v1.Descriptor{Digest: req.dgst, Size: -1}}
	d.Rule = s.cfg.Trust.RuleFor(req.gun)
	err := s.verifyRequest(ctx, req, d)
	r, refused := errors.AsType[*trust.RefusalError](err)
	switch {
	case err != nil && !refused:
		return nil, err
	case refused:
		if r.Ref == "" && req.ref != "" {
			r = r.WithRef(req.ref)
		}
		d.refusal, d.Verdict, d.Reason, d.Message = r, Denied, r.Reason, r.Error()
		if d.audit() {
			d.Verdict, d.upstream = Audited, true
		}
	default:
		d.Verdict, d.Reason = Served, reasonVerified
		// Audit mode lists the upstream's tags, as it serves them.
		d.upstream = req.kind == kindTags && d.audit()
	}
	if req.kind != kindBlob || d.Verdict != Served {
		s.logDecision(ctx, d) // a served blob is logged when its serving ends (settleBlob)
	}
	return d, nil
}

// audit says whether d's rule is in audit mode.
func (d *Decision) audit() bool {
	return d.Rule != nil && d.Rule.Mode == config.Audit
}

// verifyRequest fills d with what verifies, or returns why not.
func (s *Server) verifyRequest(ctx context.Context, req *request, d *Decision) error {
	if req.kind == kindManifest {
		// Once the Notary server has shown the repository has trust data,
		// the rest of the trust fetch takes round trips; the upstream's
		// token, which the manifest fetch after it needs, is asked for
		// meanwhile. A made-up name gets no token request.
		ctx = trust.OnTrustData(ctx, func() { req.upstream.client.Warm("repository:" + req.repo + ":pull") })
	}
	snap, err := s.verify.Snapshot(ctx, req.gun, d.Rule)
	if err != nil {
		return err
	}
	d.Trust = snap
	switch req.kind {
	case kindTags:
		return nil
	case kindBlob:
		desc, ok, err := s.authorize(ctx, req, snap, req.dgst)
		if err != nil {
			return err
		}
		if !ok {
			return &trust.RefusalError{GUN: req.gun, Ref: req.ref, Reason: ReasonNotReferenced,
				Detail: "no verified manifest of this repository refers to this blob; pull a signed tag"}
		}
		if d.Rule.Scan != nil && (isManifestType(desc.MediaType) || len(snap.ByDigest(req.dgst)) > 0) {
			// The scan gate is on the manifests route: a manifest is not served as a blob.
			return &trust.RefusalError{GUN: req.gun, Ref: req.ref, Reason: ReasonNotReferenced,
				Detail: "a manifest is served from the manifests route only, where the scan gate applies"}
		}
		d.desc, d.Size = desc, desc.Size
		return nil
	}
	want := v1.Descriptor{Digest: req.dgst, Size: -1}
	if req.dgst == "" {
		t, err := snap.Resolve(req.ref)
		if err != nil {
			return err
		}
		d.Target, want = &t, v1.Descriptor{Digest: t.Digest, Size: t.Size}
	} else if ts := snap.ByDigest(req.dgst); len(ts) > 0 {
		d.Target, want.Size = &ts[0], ts[0].Size
	} else if desc, ok, err := s.authorize(ctx, req, snap, req.dgst); ok && isManifestType(desc.MediaType) {
		want.Size = desc.Size
	} else if err != nil {
		return err
	} else {
		return &trust.RefusalError{GUN: req.gun, Ref: req.ref, Reason: trust.NotSigned,
			Detail: "the digest is neither a signed target nor a platform manifest of a signed index in this repository"}
	}
	d.Digest, d.Size, d.desc = want.Digest, want.Size, want
	if req.check && (d.Rule.Scan == nil || s.gate == nil) {
		return nil // check needs the manifest only for the scan gate
	}
	m, source, err := s.manifest(ctx, req, want)
	if err != nil {
		return err
	}
	d.manifest, d.source = m, source
	return s.scanStep(ctx, req, d, m)
}

// logDecision writes d's decision line and counts it. Served blobs are
// logged at debug level: a pull asks for many.
func (s *Server) logDecision(ctx context.Context, d *Decision) {
	s.metrics.decisions.WithLabelValues(string(d.Verdict), string(d.Reason)).Inc()
	level := slog.LevelInfo
	if d.Kind == "blob" && d.Verdict == Served {
		level = slog.LevelDebug
	}
	attrs := []slog.Attr{
		slog.String("repo", d.Repository), slog.String("ref", d.Ref), slog.String("kind", d.Kind),
		slog.String("verdict", string(d.Verdict)), slog.String("reason", string(d.Reason)),
	}
	if d.Digest != "" {
		attrs = append(attrs, slog.String("digest", d.Digest.String()))
	}
	if t := d.Target; t != nil {
		attrs = append(attrs, slog.String("role", t.Role), slog.Any("signers", t.Signers))
	}
	if d.Rule != nil {
		attrs = append(attrs, slog.Int("rule", d.Rule.Index), slog.String("rule_repositories", d.Rule.Repositories))
	}
	if d.Trust != nil {
		attrs = append(attrs, slog.Time("trust_expires", d.Trust.Expires))
	}
	if v := d.Scan; v != nil {
		attrs = append(attrs, slog.Bool("scan_passed", v.Pass))
		if v.Source != "" {
			attrs = append(attrs, slog.String("scan_source", v.Source), slog.Time("scan_received", v.Received))
		}
		if v.Detail != "" && v.Pass {
			attrs = append(attrs, slog.String("scan_detail", v.Detail))
		}
	}
	if d.Verdict == Audited {
		attrs = append(attrs, slog.Bool("would_deny", true))
	}
	if d.Message != "" {
		attrs = append(attrs, slog.String("message", d.Message))
	}
	s.decisions.LogAttrs(ctx, level, "decision", attrs...)
}

// refusalDecision is a Denied decision the proxy reaches outside decide,
// on a request no rule can let through: a write.
func refusalDecision(kind string, r *trust.RefusalError) *Decision {
	d := &Decision{Repository: r.GUN, Ref: r.Ref, Kind: kind, Verdict: Denied, Reason: r.Reason, Message: r.Error(), refusal: r}
	if dg, err := digest.Parse(r.Ref); err == nil {
		d.Digest = dg
	}
	return d
}
