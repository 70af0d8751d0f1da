package testenv

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
)

// tokenTransport is how testenv's own clients (the notary library signing, direct reads
// of notary-server) get through token auth, as the notary CLI does with its tokenAuth:
// a request answered 401 with a Bearer challenge is sent again with a token that the
// challenge's realm issued for the challenge's scope, asked for with user's Basic
// credentials. It keeps no tokens: testenv's requests are few.
type tokenTransport struct {
	base       http.RoundTripper
	user, pass string
}

var challengeParam = regexp.MustCompile(`(\w+)="([^"]*)"`)

func (t *tokenTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	params := map[string]string{}
	for _, m := range challengeParam.FindAllStringSubmatch(resp.Header.Get("WWW-Authenticate"), -1) {
		params[m[1]] = m[2]
	}
	if params["realm"] == "" || (req.Body != nil && req.GetBody == nil) {
		return resp, nil
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	tok, err := t.token(req, params)
	if err != nil {
		return nil, err
	}
	again := req.Clone(req.Context())
	if req.GetBody != nil {
		if again.Body, err = req.GetBody(); err != nil {
			return nil, err
		}
	}
	again.Header.Set("Authorization", "Bearer "+tok)
	return t.base.RoundTrip(again)
}

func (t *tokenTransport) token(req *http.Request, params map[string]string) (string, error) {
	u, err := url.Parse(params["realm"])
	if err != nil {
		return "", err
	}
	q := u.Query()
	q.Set("service", params["service"])
	if params["scope"] != "" {
		q.Set("scope", params["scope"])
	}
	u.RawQuery = q.Encode()
	treq, err := http.NewRequestWithContext(req.Context(), http.MethodGet, u.String(), nil)
	if err != nil {
		return "", err
	}
	treq.SetBasicAuth(t.user, t.pass)
	resp, err := t.base.RoundTrip(treq)
	if err != nil {
		return "", fmt.Errorf("token for %s: %w", req.URL.Path, err)
	}
	defer resp.Body.Close()
	var body struct {
		Token string `json:"token"`
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("token for %s: %s", req.URL.Path, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.Token == "" {
		return "", fmt.Errorf("token for %s: unreadable answer: %v", req.URL.Path, err)
	}
	return body.Token, nil
}
