package proxy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"
)

// maxTagsPage bounds one page of tags/list.
const maxTagsPage = 1000

// signatureTag says whether tag names signatures or attestations rather
// than an image: cosign's referrers tags (sha256-<hex>) and legacy
// sha256-<hex>.sig, .att and .sbom tags.
func signatureTag(tag string) bool {
	return strings.HasPrefix(tag, "sha256-") || strings.HasSuffix(tag, ".sig") || strings.HasSuffix(tag, ".att") || strings.HasSuffix(tag, ".sbom")
}

// serveTags answers /v2/<name>/tags/list with the tags that verify, sorted,
// paginated with n and last as the distribution spec says. A rule in audit
// mode lists the upstream's tags (its first maxTagsPage), as it serves them.
// A rule listing cosign (but for require: all with Notary) lists the
// upstream's tags too, without signature tags: cosign signs digests, so a
// tag is only a name until it is pulled and its digest verified.
func (s *Server) serveTags(w http.ResponseWriter, r *http.Request, req *request) error {
	d, err := s.decide(r.Context(), req, decideOptions{})
	if err != nil {
		return err
	}
	var tags []string
	if d.upstream || d.tagsUp {
		if tags, err = req.from.Tags(r.Context(), req.name.Path(), maxTagsPage); err != nil {
			return err
		}
		if d.tagsUp {
			tags = slices.DeleteFunc(tags, signatureTag)
			if d.Trust != nil { // require: any with Notary: its signed tags too
				for tag := range d.Trust.Targets {
					if !slices.Contains(tags, tag) {
						tags = append(tags, tag)
					}
				}
			}
		}
	} else {
		for tag := range d.Trust.Targets {
			tags = append(tags, tag)
		}
	}
	slices.Sort(tags)
	q := r.URL.Query()
	n := maxTagsPage
	if v := q.Get("n"); v != "" {
		k, err := strconv.Atoi(v)
		if err != nil || k < 0 {
			return &requestError{errcode.ErrorCodePaginationNumberInvalid, fmt.Sprintf("invalid n %q", v)}
		}
		n = min(k, maxTagsPage)
	}
	if last := q.Get("last"); last != "" {
		i, _ := slices.BinarySearch(tags, last)
		for i < len(tags) && tags[i] <= last {
			i++
		}
		tags = tags[i:]
	}
	if len(tags) > n {
		tags = tags[:n]
		if n > 0 {
			q.Set("n", strconv.Itoa(n))
			q.Set("last", tags[n-1])
			next := url.URL{Path: r.URL.Path, RawQuery: q.Encode()}
			w.Header().Set("Link", fmt.Sprintf("<%s>; rel=\"next\"", next.String()))
		}
	}
	if tags == nil {
		tags = []string{}
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{req.name.Path(), tags})
}
