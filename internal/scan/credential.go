package scan

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// A Grant is what a scan credential allows: pulling one manifest of one
// repository, and the blobs and platform manifests it refers to, until
// Expires. It passes the trust check like any pull; only the scan gate is
// skipped, for that digest.
type Grant struct {
	Repository string        `json:"repo"` // the GUN
	Digest     digest.Digest `json:"digest"`
	Expires    time.Time     `json:"exp"`
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

// NewCredentials returns Credentials under a fresh random key: credentials
// minted by another process do not pass.
func NewCredentials() *Credentials {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	return &Credentials{key: key, now: time.Now}
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
