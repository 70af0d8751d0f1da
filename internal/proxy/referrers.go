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

// referrerSet remembers, by GUN@digest, the subject of each referrer this
// process found servable, so that a request for one of its blobs finds it
// without reading storage. It holds facts about content (the manifest of
// that digest names that subject); whether the subject may be read is
// decided again on every request.
//
// It also remembers, for trust.refusal_ttl, the digests that are no
// servable referrer (missing upstream, no subject, runnable), so that
// repeated requests for one cost one upstream read per refusal_ttl.
type referrerSet struct {
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
	c, _ := lru.New[string, digest.Digest](maxReferrerSubjects) // fails only for a size <= 0
	f, _ := lru.New[string, refusedReferrer](maxReferrerSubjects)
	return &referrerSet{subjects: c, refused: f}
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
// repository. Its bytes are read by digest, bounded, and hashed; stored
// only once they pass.
func (s *Server) judgeReferrerManifest(ctx context.Context, req *request, d *Decision, r *Refusal) error {
	key := req.name.At(req.dgst)
	if f, ok := s.referrers.refused.Get(key); ok && time.Now().Before(f.until) {
		if f.detail == "" {
			return r
		}
		return r.with(f.detail)
	}
	remember := func(detail string) {
		s.referrers.refused.Add(key, refusedReferrer{detail: detail, until: time.Now().Add(req.pol.cfg.Trust.RefusalTTL)})
	}
	m, source, err := s.referrerManifest(ctx, req, req.dgst)
	if err != nil {
		if t := retryable(err); t != nil {
			return t
		}
		remember("")
		return r // not there, or not a manifest: refused as it was
	}
	subject, err := artifactSubject(m)
	if errors.Is(err, errNoSubject) {
		remember("")
		return r
	}
	if err != nil {
		detail := "it names a subject but is not served as a referrer: " + err.Error()
		remember(detail)
		return r.with(detail)
	}
	if serr := s.readable(ctx, req, subject); serr != nil {
		if isRefusal(serr) {
			return r.with(fmt.Sprintf("it is a referrer of %s, which is not served: %v", subject, serr))
		}
		return serr
	}
	s.referrers.subjects.Add(req.name.At(m.Digest), subject)
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

// referrerManifest reads the manifest dgst of req's repository from
// storage or else the upstream (at most maxReferrerManifest bytes), checks
// its bytes hash to dgst, and records what it lists in the reference graph.
// It stores upstream bytes only when they are a servable referrer.
func (s *Server) referrerManifest(ctx context.Context, req *request, dgst digest.Digest) (*manifest.Manifest, string, error) {
	want := v1.Descriptor{Digest: dgst, Size: -1}
	ms, err := s.manifestService(ctx, req)
	if err != nil {
		return nil, "", err
	}
	if stored, err := ms.Get(ctx, dgst); err == nil {
		if m, err := storedManifest(stored, want); err == nil {
			s.graph.Record(m.Digest, m.Refs)
			return m, "cache", nil
		}
	}
	body, err := req.from.Manifest(ctx, req.name.Path(), dgst.String(), maxReferrerManifest)
	if err != nil {
		return nil, "", err
	}
	m, err := manifest.Verify(body, want)
	if err != nil {
		s.metrics.upstream.WithLabelValues("manifest", "mismatch").Inc()
		return nil, "", err
	}
	if _, err := artifactSubject(m); err == nil {
		if err := storeManifest(ctx, ms, m); err != nil {
			return nil, "", err
		}
		s.metrics.upstream.WithLabelValues("manifest", "ok").Inc()
	}
	s.graph.Record(m.Digest, m.Refs)
	return m, "upstream", nil
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
			if m, _, err := s.storedReferrer(ctx, req, p); err == nil {
				if subj, err = artifactSubject(m); err == nil {
					ok = true
					s.referrers.subjects.Add(req.name.At(p), subj)
				}
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

// storedReferrer reads the manifest dgst of req's repository from storage
// alone, checked against its digest.
func (s *Server) storedReferrer(ctx context.Context, req *request, dgst digest.Digest) (*manifest.Manifest, string, error) {
	ms, err := s.manifestService(ctx, req)
	if err != nil {
		return nil, "", err
	}
	stored, err := ms.Get(ctx, dgst)
	if err != nil {
		return nil, "", err
	}
	m, err := storedManifest(stored, v1.Descriptor{Digest: dgst, Size: -1})
	return m, "cache", err
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
		if e.MediaType == v1.MediaTypeImageManifest && !imageConfigTypes[e.ArtifactType] {
			out = append(out, e)
		}
	}
	return out, nil
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
