package trustserver

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
)

// Server serves the trust data of the repositories made with NewRepo through
// notary's read API. It is safe for concurrent use: requests are served while
// repositories publish.
type Server struct {
	mu sync.RWMutex
	// files maps a GUN to its published metadata, keyed by the name a client
	// asks for without ".json": "root", "2.root", "targets.<sha256 hex>", ...
	files map[string]map[string][]byte
}

var _ http.Handler = (*Server)(nil)

// New returns a Server with no repositories.
func New() *Server {
	return &Server{files: make(map[string]map[string][]byte)}
}

// ServeHTTP answers GET and HEAD for
//
//	/v2/                                  200 {}
//	/_notary_server/health                200 {}
//	/v2/<gun>/_trust/tuf/<role>.json      the current metadata of role
//	/v2/<gun>/_trust/tuf/<N>.<role>.json  version N of role
//	/v2/<gun>/_trust/tuf/<role>.<hex>.json  the version of role whose sha256 or sha512 is hex
//
// where role is root, targets, snapshot, timestamp or a delegation such as
// targets/releases. Anything else is 404 with notary-server's error body;
// other methods are 405.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "The operation is unsupported.")
		return
	}
	p := r.URL.Path
	if p == "/v2/" || p == "/_notary_server/health" {
		writeJSON(w, []byte("{}"))
		return
	}
	b, ok := s.lookup(p)
	if !ok {
		// notary-server answers every unknown route and unknown metadata alike.
		writeError(w, http.StatusNotFound, "METADATA_NOT_FOUND", "You have requested metadata that does not exist.")
		return
	}
	writeJSON(w, b)
}

// lookup returns the published file at path p, if any.
func (s *Server) lookup(p string) ([]byte, bool) {
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return nil, false
	}
	gun, file, ok := strings.Cut(rest, "/_trust/tuf/")
	if !ok || gun == "" {
		return nil, false
	}
	name, ok := strings.CutSuffix(file, ".json")
	if !ok || name == "" {
		return nil, false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	b, ok := s.files[gun][name]
	return b, ok
}

// publish adds files to gun's published metadata in one step, so a client
// never sees a snapshot without the targets it names.
func (s *Server) publish(gun string, files map[string][]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.files[gun]
	if m == nil {
		m = make(map[string][]byte)
		s.files[gun] = m
	}
	for name, b := range files {
		m[name] = b
	}
}

func writeJSON(w http.ResponseWriter, b []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b) // a failed write means the client went away; nothing to tell it
}

// writeError writes the error body of notary-server (distribution's errcode
// format), which notary's client reads.
func writeError(w http.ResponseWriter, status int, code, message string) {
	type errorBody struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	b, _ := json.Marshal(struct {
		Errors []errorBody `json:"errors"`
	}{[]errorBody{{code, message}}})
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b) // a failed write means the client went away; nothing to tell it
}
