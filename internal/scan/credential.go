package scan

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// A Grant is what a scan credential allows: pulling one manifest of one
// repository, and the blobs and platform manifests it refers to, until
// Expires. It passes the trust check like any pull; only the scan gate is
// skipped, for that digest, and only until a report that arrived after the
// credential was minted fails the policy (Gate.CheckCredential).
type Grant struct {
	Repository string        `json:"repo"` // the GUN
	Digest     digest.Digest `json:"digest"`
	Expires    time.Time     `json:"exp"`
	// Report is when the report of Digest that was stored when the
	// credential was minted had been received; zero when there was none.
	// Any other report arrived since.
	Report time.Time `json:"report,omitzero"`
}

// Credentials mints and checks the pull credentials of scan requests: a
// grant and its HMAC-SHA256 under a key only trustproxy holds.
type Credentials struct {
	key []byte
	now func() time.Time
}

// credentialPrefix marks a bearer token as a scan credential.
const credentialPrefix = "tpscan."

// maxCredential bounds the Authorization value examined.
const maxCredential = 4096

// NewCredentials returns Credentials under key, which must be at least 32
// bytes: credentials minted under another key do not pass.
func NewCredentials(key []byte) (*Credentials, error) {
	if len(key) < 32 {
		return nil, fmt.Errorf("the scan credential key is %d bytes, want at least 32", len(key))
	}
	return &Credentials{key: key, now: time.Now}, nil
}

// LoadKey returns the credential key kept in the file at path, creating it
// (32 random bytes, mode 0600) when it does not exist: processes that share
// a data directory (serve, and check --scan) share their credentials.
func LoadKey(path string) ([]byte, error) {
	key, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		key = make([]byte, 32)
		_, _ = rand.Read(key)
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			return LoadKey(path) // another process made it first
		}
		if err != nil {
			return nil, fmt.Errorf("scan credential key: %w", err)
		}
		_, werr := f.Write(key)
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			os.Remove(path)
			return nil, fmt.Errorf("scan credential key: %w", werr)
		}
		return key, nil
	}
	if err != nil {
		return nil, fmt.Errorf("scan credential key: %w", err)
	}
	if len(key) < 32 {
		return nil, fmt.Errorf("scan credential key %s is %d bytes, want 32: delete it to make a new one", path, len(key))
	}
	return key, nil
}

// Mint returns the Authorization header value of g.
func (c *Credentials) Mint(g Grant) string {
	payload, _ := json.Marshal(g)
	p := base64.RawURLEncoding.EncodeToString(payload)
	return "Bearer " + credentialPrefix + p + "." + base64.RawURLEncoding.EncodeToString(c.mac(p))
}

func (c *Credentials) mac(payload string) []byte {
	m := hmac.New(sha256.New, c.key)
	m.Write([]byte(payload))
	return m.Sum(nil)
}

// Check reads an Authorization header value. ok is false when it is not a
// scan credential at all (no header, or another kind); err says why a scan
// credential does not pass: forged, damaged or expired.
func (c *Credentials) Check(authorization string) (g Grant, ok bool, err error) {
	token, isBearer := strings.CutPrefix(authorization, "Bearer ")
	if !isBearer || !strings.HasPrefix(token, credentialPrefix) {
		return Grant{}, false, nil
	}
	if len(token) > maxCredential {
		return Grant{}, true, errors.New("the scan credential is too long")
	}
	p, sig, found := strings.Cut(strings.TrimPrefix(token, credentialPrefix), ".")
	mac, derr := base64.RawURLEncoding.DecodeString(sig)
	if !found || derr != nil || !hmac.Equal(mac, c.mac(p)) {
		return Grant{}, true, errors.New("the scan credential was not minted by this trustproxy")
	}
	payload, err := base64.RawURLEncoding.DecodeString(p)
	if err == nil {
		err = json.Unmarshal(payload, &g)
	}
	if err == nil {
		err = g.Digest.Validate()
	}
	if err != nil {
		return Grant{}, true, fmt.Errorf("the scan credential does not read: %w", err)
	}
	if !c.now().Before(g.Expires) {
		return Grant{}, true, fmt.Errorf("the scan credential expired at %s", g.Expires.UTC().Format(time.RFC3339))
	}
	return g, true, nil
}
