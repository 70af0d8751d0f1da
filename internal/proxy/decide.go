package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/fill"
	"github.com/trustproxy/trustproxy/internal/manifest"
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

// A Decision is the verdict on one request, why, and the facts behind it.
type Decision struct {
	Repository string // the GUN; "" for a write whose path names none
	Upstream   string // the name of the upstream the GUN is at; "" when Repository is
	Ref        string // the tag or digest asked for; "" for tags/list; a write's method
	Kind       string // manifest, blob, tags, trust_data, referrers or write
	Verdict    Verdict
	Reason     Reason // ReasonVerified when served; else the refusal's
	Message    string // the refusal, for a person; "" when served
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
	Trust *trust.View
	// Scan is the scan gate's verdict on a manifest; nil when its rule has
	// no scan policy or the gate was not reached.
	Scan *scan.Verdict
	// Source names the trust sources whose verdicts served a manifest
	// (notary, cosign, or notary+cosign under require: all); under a
	// refusal from a rule with several sources, the source that refused.
	Source string
	// Subject is, for a referrers request or a referrer served (Source
	// "referrer"), the manifest whose referrers they are.
	Subject digest.Digest

	refusal  *Refusal
	desc     v1.Descriptor      // the blob or manifest as verified; Size -1 when unknown
	manifest *manifest.Manifest // a Served manifest's verified bytes
	metadata []byte             // a Served trust data file's signed bytes
	source   string             // where manifest came from: cache or upstream
	upstream bool               // audit mode: answer from the upstream, unverified
	tagsUp   bool               // tags/list under a rule listing cosign: the upstream's tags, signature tags left out

	referrers []v1.Descriptor // a Served referrers request's list, from the upstream
}

// decideOptions are what `trustproxy check` asks of a decision beyond what
// a pull asks.
type decideOptions struct {
	check  bool // decide without fetching the manifest unless the scan gate needs it
	rescan bool // scan the manifest now, before the gate decides
}

// decide is the one place a request is judged: every refusal a client or
// `trustproxy check` is given is reached here, and logged and counted here
// (a served blob once its bytes have verified: settleBlob). In order: a
// write is refused; a scanner's pull credential must cover the request; the
// rule is found and the repository's trust view taken; a tag is resolved,
// or a digest placed under a signed target; a manifest's bytes are
// verified; the scan gate has its say; the rule's mode applies.
//
// A Denied decision comes back with its *Refusal as the error, so that a
// handler checks one error. Any other error is not a verdict (the upstream
// unreachable, storage failing): there is no decision, and the client is
// told to retry.
func (s *Server) decide(ctx context.Context, req *request, opt decideOptions) (*Decision, error) {
	d := &Decision{Repository: req.name.String(), Upstream: req.name.Upstream(), Ref: req.ref, Kind: req.kind.String(),
		Digest: req.dgst, Size: -1, desc: v1.Descriptor{Digest: req.dgst, Size: -1}}
	if req.kind != kindWrite {
		d.Rule = req.pol.cfg.Trust.RuleFor(d.Repository)
	}
	return s.conclude(ctx, req, d, s.judgeReferrer(ctx, req, d, s.judge(ctx, req, d, opt)))
}

// conclude turns judge's answer on req into d's verdict: served when it
// found nothing wrong, denied for a refusal (a *Refusal or trust's
// *trust.RefusalError), audited when the rule is in audit mode and the
// reason is auditable (reasons); and logs and counts it.
func (s *Server) conclude(ctx context.Context, req *request, d *Decision, err error) (*Decision, error) {
	var refusal *Refusal
	if r, ok := errors.AsType[*trust.RefusalError](err); ok {
		refusal = refusalOf(r)
	} else if r, ok := errors.AsType[*Refusal](err); ok {
		refusal = r
	} else if err != nil {
		return nil, err
	}
	if refusal != nil {
		if refusal.Ref == "" && req.ref != "" && req.kind != kindWrite {
			refusal.Ref = req.ref
		}
		d.deny(refusal)
		// Audit mode serves unverified content; there is no unverified
		// trust data to serve.
		if d.Rule != nil && d.Rule.Mode == config.Audit && reasons[refusal.Reason].auditable && req.kind != kindTrustData {
			d.Verdict, d.upstream = Audited, true
		}
	} else {
		d.Verdict, d.Reason = Served, ReasonVerified
		// Audit mode lists the upstream's tags, as it serves them.
		d.upstream = req.kind == kindTags && d.Rule != nil && d.Rule.Mode == config.Audit
	}
	if req.kind != kindBlob || d.Verdict != Served {
		s.logDecision(ctx, d) // a served blob is logged when its serving ends (settleBlob)
	}
	if d.Verdict == Denied {
		return d, d.refusal
	}
	return d, nil
}

// deny makes d a Denied decision for r.
func (d *Decision) deny(r *Refusal) {
	d.refusal, d.Verdict, d.Reason, d.Message = r, Denied, r.Reason, r.Error()
}

// judge fills d with what verifies, or returns why not.
func (s *Server) judge(ctx context.Context, req *request, d *Decision, opt decideOptions) error {
	if req.kind == kindWrite {
		return &Refusal{GUN: d.Repository, Reason: ReasonReadOnly, Detail: "trustproxy is a read-only mirror; push to the upstream registry"}
	}
	if err := s.checkCredential(ctx, req); err != nil {
		return err
	}
	if d.Rule != nil && !d.Rule.NotaryOnly() {
		return s.judgeSources(ctx, req, d, opt)
	}
	if req.kind == kindManifest {
		// Once the Notary server has shown the repository has trust data,
		// the rest of the trust fetch takes round trips; the upstream's
		// token, which the manifest fetch after it needs, is asked for
		// meanwhile. A made-up name gets no token request.
		ctx = trust.OnTrustData(ctx, func() { req.from.Warm("repository:" + req.name.Path() + ":pull") })
	}
	view, err := s.verify.View(ctx, req.name, d.Rule)
	if err != nil {
		return err
	}
	d.Trust = view
	switch req.kind {
	case kindTags:
		return nil
	case kindTrustData:
		d.metadata, err = s.verify.Metadata(ctx, req.name, d.Rule, view, req.ref)
		return err
	case kindBlob:
		desc, ok, err := s.find(ctx, req, view, req.dgst)
		if err != nil {
			return err
		}
		if !ok {
			return &Refusal{GUN: d.Repository, Ref: req.ref, Reason: ReasonNotReferenced,
				Detail: "no verified manifest of this repository refers to this blob; pull a signed tag"}
		}
		if d.Rule.Scan != nil && (manifest.IsType(desc.MediaType) || len(view.ByDigest(req.dgst)) > 0) {
			// The scan gate is on the manifests route: a manifest is not served as a blob.
			return &Refusal{GUN: d.Repository, Ref: req.ref, Reason: ReasonNotReferenced,
				Detail: "a manifest is served from the manifests route only, where the scan gate applies"}
		}
		d.desc, d.Size = desc, desc.Size
		return nil
	}
	want := v1.Descriptor{Digest: req.dgst, Size: -1}
	notary := notarySource{view}
	q := Query{Name: req.name, Rule: d.Rule, From: req.from, Trust: &req.pol.cfg.Trust, Digest: req.dgst}
	if req.dgst == "" {
		q.Tag = req.ref
		v, err := notary.Judge(ctx, q)
		if err != nil {
			return err
		}
		d.Target, d.Source, want = v.target(req.ref), string(v.Source), v1.Descriptor{Digest: v.Digest, Size: v.Size}
	} else if v, err := notary.Judge(ctx, q); err == nil {
		d.Target, d.Source, want.Size = v.target(""), string(v.Source), v.Size
	} else if desc, ok, ferr := s.find(ctx, req, view, req.dgst); ok && manifest.IsType(desc.MediaType) {
		want.Size = desc.Size
	} else if ferr != nil {
		return ferr
	} else {
		return err
	}
	d.Digest, d.Size, d.desc = want.Digest, want.Size, want
	if opt.check && (d.Rule.Scan == nil || s.gate == nil) {
		return nil // check needs the manifest only for the scan gate
	}
	m, source, err := s.manifest(ctx, req, want)
	if err != nil {
		return err
	}
	d.manifest, d.source = m, source
	return s.scanStep(ctx, req, d, m, opt.rescan)
}

// settleBlob settles the decision on a blob once it is known how its
// serving ended, and returns the error the client is to get. A fill that
// found the bytes are not the blob is a digest_mismatch refusal (the one
// refusal reached after decide): the client gets it, unless it already has
// part of the body (*fill.AbortedError: its connection is aborted), and a
// Served decision becomes Denied, logged and counted once, here. A served
// blob is counted. Blobs decide refused or audited were logged there; an
// error that is no verdict (the upstream failed, the client left) is no
// decision.
func (s *Server) settleBlob(ctx context.Context, d *Decision, source string, err error) error {
	m, mismatch := errors.AsType[*fill.MismatchError](err)
	if mismatch {
		r := &Refusal{GUN: d.Repository, Ref: d.Ref, Reason: ReasonDigestMismatch, Detail: m.Detail}
		if _, aborted := errors.AsType[*fill.AbortedError](err); !aborted {
			err = r // nothing was sent yet: the client gets the refusal
		}
		if d.Verdict == Served {
			d.deny(r)
			s.logDecision(ctx, d)
		}
		return err
	}
	if d.Verdict == Served && err == nil {
		s.metrics.served.WithLabelValues("blob", source).Inc()
		s.logDecision(ctx, d)
	}
	return err
}

// logDecision writes d's decision line and counts it. Served blobs and
// trust data files are logged at debug level: a pull asks for many.
func (s *Server) logDecision(ctx context.Context, d *Decision) {
	rule := "none"
	if d.Rule != nil {
		rule = strconv.Itoa(d.Rule.Index)
	}
	s.metrics.decisions.WithLabelValues(string(d.Verdict), string(d.Reason), d.Upstream, rule).Inc()
	// A refusal (audited ones too) is a warning: it shows under log: warn.
	level := slog.LevelWarn
	switch {
	case d.Verdict == Served && (d.Kind == "blob" || d.Kind == "trust_data"):
		level = slog.LevelDebug
	case d.Verdict == Served:
		level = slog.LevelInfo
	}
	attrs := []slog.Attr{
		slog.String("request_id", RequestID(ctx)),
		slog.String("repo", d.Repository), slog.String("ref", d.Ref), slog.String("kind", d.Kind),
		slog.String("verdict", string(d.Verdict)), slog.String("reason", string(d.Reason)),
	}
	if d.Digest != "" {
		attrs = append(attrs, slog.String("digest", d.Digest.String()))
	}
	if d.Source != "" {
		attrs = append(attrs, slog.String("source", d.Source))
	}
	if d.Subject != "" {
		attrs = append(attrs, slog.String("subject", d.Subject.String()))
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
	if d.Verdict != Served {
		attrs = append(attrs, slog.String("reason_source", string(reasons[d.Reason].source)))
	}
	if d.Verdict == Audited {
		attrs = append(attrs, slog.Bool("would_deny", true))
	}
	if d.Message != "" {
		attrs = append(attrs, slog.String("message", d.Message))
	}
	s.decisions.LogAttrs(ctx, level, "decision", attrs...)
}

// judgeSources is judge under a rule whose sources list more than Notary
// (config.Rule.Sources): each source is asked through the Source seam and
// the rule's require combines their verdicts.
//
// A tag is resolved by Notary when it is listed and has the tag (its
// signed digest is then the digest, the upstream's tag not consulted);
// otherwise, under require: any, at the upstream (HEAD, or GET and hash):
// the digest the upstream names is only a candidate, which the digest
// sources must verify. Under require: all every listed source must verify
// the same digest, Notary's when Notary is listed. A digest is first
// looked for under a verified manifest (a platform manifest of a verified
// index), then asked of the sources. Either way the manifest is then
// fetched by that digest through the existing path (hashed, stored) and
// the scan gate has its say.
func (s *Server) judgeSources(ctx context.Context, req *request, d *Decision, opt decideOptions) error {
	r := d.Rule
	all := r.Require == config.RequireAll
	q := Query{Name: req.name, Rule: r, From: req.from, Trust: &req.pol.cfg.Trust, Cosign: req.pol.cosign[r], Notation: req.pol.notation[r]}
	var sources []Source
	var notaryErr error // Notary's refusal of the whole repository
	if r.Has(config.SourceNotary) {
		vctx := ctx
		if req.kind == kindManifest {
			vctx = trust.OnTrustData(ctx, func() { req.from.Warm("repository:" + req.name.Path() + ":pull") })
		}
		view, err := s.verify.View(vctx, req.name, r)
		if _, refused := errors.AsType[*trust.RefusalError](err); err != nil && !refused {
			return err
		}
		if err != nil && (all || req.kind == kindTrustData) {
			return s.missing(d, r, config.SourceNotary, err)
		}
		notaryErr = err
		if err == nil {
			d.Trust = view
		}
	}
	for _, src := range r.Sources {
		switch {
		case src == config.SourceNotary && d.Trust != nil:
			sources = append(sources, notarySource{d.Trust})
		case src == config.SourceCosign:
			sources = append(sources, s.cosign)
		case src == config.SourceNotation:
			sources = append(sources, s.notation)
		}
	}
	switch req.kind {
	case kindTags:
		// Under require: all with Notary, only Notary's signed tags can be
		// served; otherwise a tag is a name until it is pulled and its digest
		// verified: the upstream's tags are listed, signature tags left out.
		d.tagsUp = !(all && d.Trust != nil)
		return nil
	case kindTrustData:
		var err error
		d.metadata, err = s.verify.Metadata(ctx, req.name, r, d.Trust, req.ref)
		return err
	case kindBlob:
		desc, ok, err := s.find(ctx, req, d.Trust, req.dgst)
		if err != nil {
			return err
		}
		if !ok {
			return &Refusal{GUN: d.Repository, Ref: req.ref, Reason: ReasonNotReferenced,
				Detail: "no verified manifest of this repository refers to this blob; pull a signed tag"}
		}
		if r.Scan != nil && (manifest.IsType(desc.MediaType) || desc.Size < 0 || (d.Trust != nil && len(d.Trust.ByDigest(req.dgst)) > 0)) {
			return &Refusal{GUN: d.Repository, Ref: req.ref, Reason: ReasonNotReferenced,
				Detail: "a manifest is served from the manifests route only, where the scan gate applies"}
		}
		d.desc, d.Size = desc, desc.Size
		return nil
	}

	want := v1.Descriptor{Digest: req.dgst, Size: -1}
	var verdicts []SourceVerdict
	var refusals []error
	if req.dgst == "" {
		q.Tag = req.ref
		if d.Trust != nil {
			v, err := notarySource{d.Trust}.Judge(ctx, q)
			switch {
			case err == nil:
				verdicts, want = append(verdicts, v), v1.Descriptor{Digest: v.Digest, Size: v.Size}
			case all:
				return s.missing(d, r, config.SourceNotary, err)
			default:
				refusals = append(refusals, err)
			}
		} else if notaryErr != nil {
			refusals = append(refusals, notaryErr)
		}
		if want.Digest == "" {
			dgst, err := req.from.ResolveTag(ctx, req.name.Path(), req.ref, s.limits.ManifestBytes)
			if err != nil {
				return err
			}
			want.Digest = dgst
		}
		q.Tag = ""
	} else if desc, ok, err := s.find(ctx, req, d.Trust, req.dgst); ok && manifest.IsType(desc.MediaType) {
		// A platform manifest of a verified index.
		want.Size = desc.Size
		sources = nil
	} else if err != nil {
		return err
	} else if notaryErr != nil {
		refusals = append(refusals, notaryErr)
	}
	q.Digest = want.Digest
	for _, src := range sources {
		if len(verdicts) > 0 && verdicts[0].Source == config.SourceNotary && src == (notarySource{d.Trust}) {
			continue // Notary resolved the tag
		}
		if len(verdicts) > 0 && !all {
			break
		}
		v, err := src.Judge(ctx, q)
		if err == nil {
			verdicts = append(verdicts, v)
			if want.Size < 0 {
				want.Size = v.Size
			}
			continue
		}
		if !isRefusal(err) {
			return err
		}
		if all {
			return s.missing(d, r, v.Source, err)
		}
		refusals = append(refusals, err)
	}
	if sources != nil && len(verdicts) == 0 {
		return mostSpecific(refusals)
	}
	if len(verdicts) > 0 {
		d.Target, d.Source = combine(verdicts, req.ref)
		if req.dgst == "" {
			d.Target.Tag = req.ref
		}
	}
	d.Digest, d.Size, d.desc = want.Digest, want.Size, want
	if opt.check && (r.Scan == nil || s.gate == nil) {
		return nil
	}
	m, source, err := s.manifest(ctx, req, want)
	if err != nil {
		return err
	}
	d.manifest, d.source = m, source
	return s.scanStep(ctx, req, d, m, opt.rescan)
}

// isRefusal says whether err is a source's refusal rather than no verdict.
func isRefusal(err error) bool { return asRefusal(err) != nil }

// asRefusal is a source's refusal err as the proxy's.
func asRefusal(err error) *Refusal {
	if r, ok := errors.AsType[*Refusal](err); ok {
		return r
	}
	if r, ok := errors.AsType[*trust.RefusalError](err); ok {
		return refusalOf(r)
	}
	return nil
}

// missing is the refusal of a rule with require: all when source did not
// verify: it names the source and what it said.
func (s *Server) missing(d *Decision, r *config.Rule, source config.Source, err error) error {
	ref := asRefusal(err)
	if ref == nil {
		return err
	}
	d.Source = string(source)
	return &Refusal{GUN: ref.GUN, Ref: ref.Ref, Reason: ref.Reason, Err: ref.Err,
		Detail: fmt.Sprintf("the rule requires every one of %s and %s did not verify: %s", sourceNames(r.Sources), source, ref.Detail)}
}

// mostSpecific is, of the refusals of a rule with require: any, the one
// that says most: a signature that came close (untrusted key, invalid
// signature, no tlog entry) over "nothing signed it".
func mostSpecific(refusals []error) error {
	rank := func(err error) int {
		r := asRefusal(err)
		switch {
		case r == nil:
			return 0
		case r.Reason == Reason(trust.NotSigned) || r.Reason == Reason(trust.NoTrustData):
			return 1
		}
		return 2
	}
	best := refusals[0]
	for _, err := range refusals[1:] {
		if rank(err) > rank(best) {
			best = err
		}
	}
	return best
}

// combine is the signed target that verdicts, all verified, make: the
// first's digest and size, every source's role and signers.
func combine(verdicts []SourceVerdict, ref string) (*trust.Target, string) {
	t := verdicts[0].target("")
	t.Signers = slices.Clone(t.Signers) // the view's own slice is not to be appended to
	var names, roles []string
	for _, v := range verdicts {
		names = append(names, string(v.Source))
		roles = append(roles, v.Role)
		for _, sg := range v.Signers {
			if !slices.Contains(t.Signers, sg) {
				t.Signers = append(t.Signers, sg)
			}
		}
	}
	t.Role = strings.Join(roles, "+")
	return t, strings.Join(names, "+")
}

func sourceNames(ss []config.Source) string {
	names := make([]string, len(ss))
	for i, s := range ss {
		names[i] = string(s)
	}
	return strings.Join(names, ", ")
}
