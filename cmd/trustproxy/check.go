package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/proxy"
	"github.com/trustproxy/trustproxy/internal/wiring"
)

// checkReport is what `trustproxy check` prints: the decision a pull of the
// image would get, the rule that decided, and the trust data behind it.
type checkReport struct {
	Repository string      `json:"repository"`
	Ref        string      `json:"ref"`
	Verdict    string      `json:"verdict"`
	Reason     string      `json:"reason"`
	Message    string      `json:"message,omitempty"`
	Rule       *checkRule  `json:"rule"`
	Digest     string      `json:"digest,omitempty"`
	Size       int64       `json:"size,omitempty"`
	Role       string      `json:"role,omitempty"`
	Signers    []string    `json:"signers,omitempty"`
	TrustData  *checkTrust `json:"trust_data,omitempty"`
	Scan       *checkScan  `json:"scan,omitempty"`
}

type checkScan struct {
	Passed   bool      `json:"passed"`
	Detail   string    `json:"detail,omitempty"`
	Source   string    `json:"source,omitempty"`
	Received time.Time `json:"received,omitzero"`
	Found    int       `json:"vulnerabilities"`
}

type checkRule struct {
	Index        int    `json:"index"`
	Repositories string `json:"repositories"`
	Mode         string `json:"mode"`
}

type checkTrust struct {
	Refreshed   time.Time `json:"refreshed"`
	Expires     time.Time `json:"expires"`
	TrustServer string    `json:"trust_server"`
}

// check prints the decision on image, as serve would decide a pull of it.
// It exits 1 when the image would be refused.
func check(ctx context.Context, cfg *config.Config, image string, rescan bool, stdout io.Writer, log *slog.Logger) error {
	p, err := wiring.Open(ctx, cfg, log, prometheus.NewRegistry())
	if err != nil {
		return err
	}
	defer p.Close(context.WithoutCancel(ctx))
	d, err := p.Check(ctx, image, rescan)
	if err != nil {
		return err
	}
	rep := checkReport{Repository: d.Repository, Ref: d.Ref, Verdict: string(d.Verdict), Reason: string(d.Reason), Message: d.Message}
	if r := d.Rule; r != nil {
		rep.Rule = &checkRule{Index: r.Index, Repositories: r.Repositories, Mode: string(r.Mode)}
	}
	if d.Digest != "" {
		rep.Digest, rep.Size = d.Digest.String(), max(d.Size, 0)
	}
	if t := d.Target; t != nil {
		rep.Role, rep.Signers = t.Role, t.Signers
	}
	if s := d.Trust; s != nil {
		rep.TrustData = &checkTrust{Refreshed: s.Refreshed.UTC(), Expires: s.Expires.UTC(), TrustServer: "ok"}
		if s.Unreachable != "" {
			rep.TrustData.TrustServer = "unreachable: " + s.Unreachable
		}
	}
	if v := d.Scan; v != nil {
		rep.Scan = &checkScan{Passed: v.Pass, Detail: v.Detail, Source: v.Source, Received: v.Received}
		if v.Report != nil {
			rep.Scan.Found = len(v.Report.Vulnerabilities)
		}
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(rep); err != nil {
		return err
	}
	if d.Verdict == proxy.Denied {
		return exitError(1)
	}
	return nil
}
