package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/trustproxy/trustproxy/internal/manifest"
	"github.com/trustproxy/trustproxy/internal/referrers"
	"github.com/trustproxy/trustproxy/internal/refgraph"
	"github.com/trustproxy/trustproxy/internal/trust"
	"github.com/trustproxy/trustproxy/internal/upstream"
)

// The bounds of what the referrers passthrough reads and serves
// (docs/trust-sources.md, "Referrers").
const (
	// maxReferrerManifest bounds a referrer manifest read from the
	// upstream: a signature's is under 2 KiB, a Notation one with its
	// annotations some more.
	maxReferrerManifest = 64 << 10
	// maxReferrerBlob bounds a blob served as part of a referrer: a cosign
	// bundle or a Notation envelope with its certificate chain is a few KiB.
	maxReferrerBlob = 4 << 20
	// maxReferrerReads bounds the referrer manifests one blob request
	// reads from storage to find the referrer that lists the blob.
	maxReferrerReads = 16
	// maxReferrerSubjects bounds the referrers remembered in memory.
	maxReferrerSubjects = 1 << 14
	// maxReferrerPrefetch bounds the referrers of one list read into
	// storage when it is served (storeListed).
	maxReferrerPrefetch = 8
)

// imageConfigTypes are the config media types of runnable images: a
// manifest with one of them is an image, never served as a referrer.
var imageConfigTypes = map[string]bool{
	v1.MediaTypeImageConfig:                          true,
	"application/vnd.docker.container.image.v1+json": true,
}

// imageLayer says whether a layer media type is one a runtime unpacks.
func imageLayer(mt string) bool {
	return strings.HasPrefix(mt, "application/vnd.oci.image.layer.") ||
		strings.HasPrefix(mt, "application/vnd.docker.image.rootfs.")
}

// referrerSet remembers, by GUN@digest, what this process learnt about
// referrers:
//
//   - listed: the digests a referrers list it served named, with the
//     subject it was listed for. Only these are ever read from the upstream
//     by digest when no source verified them: a digest nobody listed costs
//     no upstream read (an unsigned digest is never fetched).
//   - subjects: the subject of each referrer found servable, so that a
//     request for one of its blobs finds it without reading storage.
//   - refused: for trust.refusal_ttl, the listed digests that are no
//     servable referrer (missing upstream, no subject, runnable), so that
//     repeated requests or lists cost one upstream read per refusal_ttl.
//
// They hold facts about content and lists; whether a subject may be read
// is decided again on every request.
type referrerSet struct {
	listed   *lru.Cache[string, digest.Digest]
	subjects *lru.Cache[string, digest.Digest]
	refused  *lru.Cache[string, refusedReferrer]
}

// refusedReferrer is why a digest is no servable referrer ("" when it names
// no subject or is missing), until when that is believed.
type refusedReferrer struct {
	detail string
	until  time.Time
}

func newReferrerSet() *referrerSet {
	l, _ := lru.New[string, digest.Digest](maxReferrerSubjects) // fails only for a size <= 0
	c, _ := lru.New[string, digest.Digest](maxReferrerSubjects)
	f, _ := lru.New[string, refusedReferrer](maxReferrerSubjects)
	return &referrerSet{listed: l, subjects: c, refused: f}
}

// noReferrer is why a manifest is not served as a referrer; detail is ""
// when it is simply none (missing, not listed, names no subject), and says
// why otherwise.
type noReferrer struct{ detail string }

func (e *noReferrer) Error() string {
	if e.detail == "" {
		return "no referrer"
	}
	return e.detail
}

// errNoSubject is a manifest that names no subject: no referrer.
var errNoSubject = errors.New("it names no subject")

// artifactSubject is the subject of m when m may be served as a referrer,
// else why not. A referrer is served as an artifact, never as an image: it
// must be an OCI image manifest (no index, whose children could be
// anything), name a subject other than itself, have a config that is not
// an image config and no layer that is an image layer, a manifest, or
// larger than maxReferrerBlob. Anyone who can push to the upstream can
// point a manifest's subject at a signed digest: what passes here is
// content no runtime runs (docs/trust-sources.md, "Referrers").
func artifactSubject(m *manifest.Manifest) (digest.Digest, error) {
	if m.MediaType != v1.MediaTypeImageManifest {
		return "", fmt.Errorf("it is a %s, and only OCI image manifests are served as referrers", m.MediaType)
	}
	var doc struct {
		ArtifactType string         `json:"artifactType"`
		Subject      *v1.Descriptor `json:"subject"`
	}
	if err := json.Unmarshal(m.Body, &doc); err != nil {
		return "", fmt.Errorf("it does not parse: %w", err)
	}
	if doc.Subject == nil {
		return "", errNoSubject
	}
	s := doc.Subject.Digest
	if s.Validate() != nil || s.Algorithm() != digest.SHA256 || s == m.Digest {
		return "", fmt.Errorf("its subject %q is not a sha256 digest of another manifest", s)
	}
	if len(m.Refs) == 0 || imageConfigTypes[m.Refs[0].MediaType] {
		return "", fmt.Errorf("it is a runnable image (config %s), not an artifact", configType(m))
	}
	for _, l := range m.Refs[1:] {
		switch {
		case imageLayer(l.MediaType):
			return "", fmt.Errorf("it is a runnable image (layer %s of type %s), not an artifact", l.Digest, l.MediaType)
		case manifest.IsType(l.MediaType):
			return "", fmt.Errorf("its layer %s is a manifest", l.Digest)
		case l.Size > maxReferrerBlob:
			return "", fmt.Errorf("its layer %s claims %d bytes, over the %d a referrer's blob may have", l.Digest, l.Size, maxReferrerBlob)
		}
	}
	return s, nil
}

func configType(m *manifest.Manifest) string {
	if len(m.Refs) == 0 {
		return "none"
	}
	return m.Refs[0].MediaType
}

// referrerReasons are the refusals under which a manifest or blob asked
// for by digest may still be served as (part of) a referrer: nothing
// signed it, or no verified manifest lists it.
var referrerReasons = map[Reason]bool{
	Reason(trust.NotSigned):   true,
	Reason(trust.NoTrustData): true,
	ReasonNotReferenced:       true,
}

// judgeReferrer is decide's last word on a manifest or blob asked for by
// digest that judge refused (err) because nothing signed it: it is served
// when it is a referrer of a manifest the caller may read in the same
// repository (a manifest that artifactSubject accepts, or a blob such a
// manifest lists), else err stands, its detail saying why when the digest
// was a referrer. For a referrers request judge admitted, it lists the
// upstream's referrers (listReferrers). Other requests and verdicts pass
// through.
func (s *Server) judgeReferrer(ctx context.Context, req *request, d *Decision, err error) error {
	if req.kind == kindReferrers {
		if err != nil {
			return err
		}
		d.Subject = req.dgst
		d.referrers, err = s.listReferrers(ctx, req, req.dgst)
		return err
	}
	r, ok := errors.AsType[*Refusal](err)
	if !ok {
		if tr, tok := errors.AsType[*trust.RefusalError](err); tok {
			r, ok = refusalOf(tr), true
		}
	}
	if !ok || !referrerReasons[r.Reason] || req.dgst == "" || d.manifest != nil {
		return err
	}
	switch req.kind {
	case kindManifest:
		return s.judgeReferrerManifest(ctx, req, d, r)
	case kindBlob:
		return s.judgeReferrerBlob(ctx, req, d, r)
	}
	return err
}

// judgeReferrerManifest serves the manifest req.dgst, refused as r, when it
// is a referrer (artifactSubject) of a subject readable in req's
// repository. Its bytes come from storage, or, when a referrers list named
// it, from the upstream by digest, bounded and hashed (referrerManifest).
func (s *Server) judgeReferrerManifest(ctx context.Context, req *request, d *Decision, r *Refusal) error {
	m, subject, source, err := s.referrerManifest(ctx, req, req.dgst)
	if nr, ok := errors.AsType[*noReferrer](err); ok {
		if nr.detail == "" {
			return r
		}
		return r.with(nr.detail)
	}
	if err != nil {
		if t := retryable(err); t != nil {
			return t
		}
		return r // not there, or not a manifest: refused as it was
	}
	if serr := s.readable(ctx, req, subject); serr != nil {
		if isRefusal(serr) {
			return r.with(fmt.Sprintf("it is a referrer of %s, which is not served: %v", subject, serr))
		}
		return serr
	}
	d.manifest, d.source, d.Source, d.Subject = m, source, "referrer", subject
	d.Digest, d.Size, d.desc = m.Digest, int64(len(m.Body)), v1.Descriptor{Digest: m.Digest, Size: int64(len(m.Body)), MediaType: m.MediaType}
	return nil
}

// with is r with more said in its detail; r itself may be a cached
// source's and is not changed.
func (r *Refusal) with(more string) *Refusal {
	c := *r
	c.Detail += "; " + more
	return &c
}

// referrerManifest is the manifest dgst of req's repository and its
// subject when it is a servable referrer (artifactSubject), else a
// *noReferrer or the error that is no answer. It is read from storage
// (where any replica put it), else, only when a referrers list this
// process served named it (referrerSet.listed), from the upstream (at most
// maxReferrerManifest bytes), hashed to dgst, its subject the one it was
// listed for; stored once it passes, so that every replica finds it. What
// it lists is recorded in the reference graph, for its blobs.
func (s *Server) referrerManifest(ctx context.Context, req *request, dgst digest.Digest) (*manifest.Manifest, digest.Digest, string, error) {
	key := req.name.At(dgst)
	ms, err := s.manifestService(ctx, req)
	if err != nil {
		return nil, "", "", err
	}
	if stored, err := ms.Get(ctx, dgst); err == nil {
		if m, err := storedManifest(stored, v1.Descriptor{Digest: dgst, Size: -1}); err == nil {
			subject, err := artifactSubject(m)
			if err != nil {
				return nil, "", "", &noReferrer{}
			}
			s.graph.Record(m.Digest, m.Refs)
			s.referrers.subjects.Add(key, subject)
			return m, subject, "cache", nil
		}
	}
	listedFor, ok := s.referrers.listed.Get(key)
	if !ok {
		return nil, "", "", &noReferrer{}
	}
	if f, ok := s.referrers.refused.Get(key); ok && time.Now().Before(f.until) {
		return nil, "", "", &noReferrer{detail: f.detail}
	}
	refuse := func(detail string) error {
		s.referrers.refused.Add(key, refusedReferrer{detail: detail, until: time.Now().Add(req.pol.cfg.Trust.RefusalTTL)})
		return &noReferrer{detail: detail}
	}
	body, err := req.from.Manifest(ctx, req.name.Path(), dgst.String(), maxReferrerManifest)
	if err != nil {
		if t := retryable(err); t != nil {
			return nil, "", "", t
		}
		return nil, "", "", refuse("")
	}
	m, err := manifest.Verify(body, v1.Descriptor{Digest: dgst, Size: -1})
	if err != nil {
		s.metrics.upstream.WithLabelValues("manifest", "mismatch").Inc()
		return nil, "", "", refuse("")
	}
	subject, err := artifactSubject(m)
	switch {
	case errors.Is(err, errNoSubject):
		return nil, "", "", refuse("")
	case err != nil:
		return nil, "", "", refuse("it names a subject but is not served as a referrer: " + err.Error())
	case subject != listedFor:
		return nil, "", "", refuse(fmt.Sprintf("it was listed as a referrer of %s but names %s", listedFor, subject))
	}
	if err := storeManifest(ctx, ms, m); err != nil {
		return nil, "", "", err
	}
	s.metrics.upstream.WithLabelValues("manifest", "ok").Inc()
	s.graph.Record(m.Digest, m.Refs)
	s.referrers.subjects.Add(key, subject)
	return m, subject, "upstream", nil
}

// readable says whether the manifest subject would be served in req's
// repository: the decision a GET of manifests/<subject> gets (judge),
// without fetching its bytes unless the scan gate needs them, and without
// logging it (the request it is asked for is logged). nil when it would be
// served; its refusal, or the error that is no verdict, otherwise. Under a
// rule in audit mode a refusal stands here: conclude then serves the
// request unverified, as it would the subject.
func (s *Server) readable(ctx context.Context, req *request, subject digest.Digest) error {
	sreq := *req
	sreq.kind, sreq.ref, sreq.dgst = kindManifest, subject.String(), subject
	sd := &Decision{Repository: req.name.String(), Upstream: req.name.Upstream(), Ref: sreq.ref, Kind: sreq.kind.String(),
		Digest: subject, Size: -1, desc: v1.Descriptor{Digest: subject, Size: -1}}
	sd.Rule = req.pol.cfg.Trust.RuleFor(sd.Repository)
	return s.judge(ctx, &sreq, sd, decideOptions{check: true})
}

// judgeReferrerBlob serves the blob req.dgst, refused as r, when a referrer
// of a subject readable in req's repository lists it (and it is no manifest
// and within maxReferrerBlob). The referrers are found among the blob's
// parents in the reference graph: those this process served (referrerSet),
// else read from storage, at most maxReferrerReads of them.
func (s *Server) judgeReferrerBlob(ctx context.Context, req *request, d *Decision, r *Refusal) error {
	if _, isManifest := s.graph.Children(req.dgst); isManifest {
		return r // a manifest is not served as a referrer's blob, whoever lists it
	}
	reads := 0
	verdicts := map[digest.Digest]error{} // subject → readable's answer, asked once
	var subject digest.Digest
	var noVerdict error
	referrer := func(p digest.Digest) (int64, bool) {
		subj, ok := s.referrers.subjects.Get(req.name.At(p))
		if !ok && reads < maxReferrerReads {
			reads++
			if _, sj, _, err := s.referrerManifest(ctx, req, p); err == nil {
				subj, ok = sj, true
			}
		}
		if !ok {
			return 0, false
		}
		err, asked := verdicts[subj]
		if !asked {
			err = s.readable(ctx, req, subj)
			verdicts[subj] = err
		}
		if err != nil && !isRefusal(err) && noVerdict == nil {
			noVerdict = err
		}
		if err == nil {
			subject = subj
		}
		return -1, err == nil
	}
	desc, found := refgraph.Find(s.graph, referrer, req.dgst)
	switch {
	case !found && noVerdict != nil:
		return noVerdict
	case !found:
		return r
	case manifest.IsType(desc.MediaType) || desc.Size < 0 || desc.Size > maxReferrerBlob:
		return r.with(fmt.Sprintf("a referrer of %s lists it, but as a manifest or over the %d bytes a referrer's blob may have", subject, maxReferrerBlob))
	}
	d.desc, d.Size, d.Source, d.Subject = desc, desc.Size, "referrer", subject
	return nil
}

// listReferrers reads the referrers of subject in req's repository from
// its upstream (internal/referrers: the API, else the referrers tag),
// filtered by the request's artifactType. Only OCI image manifests whose
// artifactType is not an image config's are listed: nothing else is served
// as a referrer (artifactSubject). A list over the bounds, or
// one that is no index, is refused (invalid_manifest): nothing is passed on
// from it.
func (s *Server) listReferrers(ctx context.Context, req *request, subject digest.Digest) ([]v1.Descriptor, error) {
	base := req.from.URL(req.name.Path(), "referrers", subject.String())
	repo := referrers.Repository{Scheme: base.Scheme, Host: base.Host, Path: req.name.Path()}
	list, err := referrers.List(ctx, req.from.Client(req.name.Path()), repo, subject, req.artifactType, referrers.Limits{})
	refuse := func(detail string) error {
		s.metrics.upstream.WithLabelValues("referrers", "refused").Inc()
		return &Refusal{GUN: req.name.String(), Ref: subject.String(), Reason: ReasonInvalidManifest, Err: err,
			Detail: "the upstream's referrers " + detail + "; nothing of it is passed on"}
	}
	_, malformed := errors.AsType[*referrers.MalformedError](err)
	switch {
	case errors.Is(err, referrers.ErrTooLarge):
		return nil, refuse(fmt.Sprintf("index is larger than %d bytes", referrers.DefaultBytes))
	case errors.Is(err, referrers.ErrTooMany):
		return nil, refuse(fmt.Sprintf("index lists more than %d entries", referrers.DefaultEntries))
	case malformed:
		return nil, refuse(fmt.Sprintf("answer is no index (%v)", err))
	case err != nil:
		s.metrics.upstream.WithLabelValues("referrers", "error").Inc()
		if u, ok := errors.AsType[*upstream.Error](err); ok {
			return nil, u
		}
		return nil, upstream.Unavailable(fmt.Errorf("referrers of %s from %s: %w", subject, req.from.Name(), err))
	}
	s.metrics.upstream.WithLabelValues("referrers", "ok").Inc()
	out := make([]v1.Descriptor, 0, len(list))
	for _, e := range list {
		if e.MediaType == v1.MediaTypeImageManifest && !imageConfigTypes[e.ArtifactType] && referrers.ValidDigest(e.Digest) {
			out = append(out, e)
			s.referrers.listed.Add(req.name.At(e.Digest), subject)
		}
	}
	s.storeListed(ctx, req, out)
	return out, nil
}

// storeListed reads into storage the first maxReferrerPrefetch referrers of
// a list that storage lacks (referrerManifest: only servable ones are
// stored), so that a client whose next request goes to another replica
// finds them there. What fails here is left to the request for it.
func (s *Server) storeListed(ctx context.Context, req *request, list []v1.Descriptor) {
	ms, err := s.manifestService(ctx, req)
	if err != nil {
		return
	}
	for _, e := range list[:min(len(list), maxReferrerPrefetch)] {
		if ok, err := ms.Exists(ctx, e.Digest); err == nil && ok {
			continue
		}
		if _, _, _, err := s.referrerManifest(ctx, req, e.Digest); err != nil {
			s.log.Debug("referrer not stored", "repo", req.name.String(), "digest", e.Digest, "err", err)
		}
	}
}

// serveReferrers answers GET and HEAD /v2/<name>/referrers/<digest> (OCI
// distribution spec 1.1): an OCI image index of the subject's referrers, for
// a subject the caller may read (the decision a manifest fetch of it gets),
// filtered by the artifactType query parameter (then OCI-Filters-Applied
// says so). Under a rule in audit mode a refused subject's referrers are
// listed too, as its manifest would be served.
func (s *Server) serveReferrers(w http.ResponseWriter, r *http.Request, req *request) error {
	d, err := s.decide(r.Context(), req, decideOptions{check: true})
	if err != nil {
		return err
	}
	list := d.referrers
	if d.Verdict == Audited {
		if list, err = s.listReferrers(r.Context(), req, req.dgst); err != nil {
			return err
		}
	}
	body, err := json.Marshal(v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: list})
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", v1.MediaTypeImageIndex)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	if req.artifactType != "" {
		h.Set("OCI-Filters-Applied", "artifactType")
	}
	s.metrics.served.WithLabelValues("referrers", "upstream").Inc()
	if r.Method == http.MethodHead {
		return nil
	}
	_, _ = w.Write(body)
	return nil
}
