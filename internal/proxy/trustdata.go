package proxy

import (
	"errors"
	"net/http"
	"strconv"
)

// serveTrustData answers GET and HEAD /v2/<gun>/_trust/tuf/<file>, notary's
// read API, for clients with DOCKER_CONTENT_TRUST=1: the signed bytes of
// the trust data trustproxy itself fetched and verified for the
// repository, as the trust server signed them, so that the client verifies
// them again. A refusal, whatever its reason, is 404 METADATA_NOT_FOUND
// naming it: a notary client then stops, where on a 5xx it retries.
func (s *Server) serveTrustData(w http.ResponseWriter, r *http.Request, req *request) error {
	d, err := s.decide(r.Context(), req, decideOptions{})
	if refusal, ok := errors.AsType[*Refusal](err); ok {
		return &trustDataRefusal{refusal}
	}
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(d.metadata)))
	h.Set("Cache-Control", "no-cache")
	if r.Method == http.MethodHead {
		return nil
	}
	_, _ = w.Write(d.metadata)
	return nil
}
