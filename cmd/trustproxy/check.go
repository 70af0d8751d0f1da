package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
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
	Source     string      `json:"source,omitempty"`
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

// checkError is what check --json prints when it reaches no decision.
type checkError struct {
	Verdict string `json:"verdict"` // "error"
	Error   string `json:"error"`
}

// check prints the decision on image, as serve would decide a pull of it,
// as text or, with asJSON, as a checkReport. Its exit status is 0 when the
// image would be served (audit included), 1 when refused, 2 when no
// decision was reached (the error printed on stderr, and with asJSON as a
// checkError on stdout).
func check(ctx context.Context, cfg *config.Config, image string, rescan, asJSON bool, stdout, stderr io.Writer, log *slog.Logger) error {
	rep, err := decideCheck(ctx, cfg, image, rescan, log)
	if err != nil {
		fmt.Fprintln(stderr, "trustproxy check:", err)
		if asJSON {
			_ = writeJSON(stdout, checkError{Verdict: "error", Error: err.Error()})
		}
		return exitError(2)
	}
	if asJSON {
		err = writeJSON(stdout, rep)
	} else {
		err = writeCheckText(stdout, rep)
	}
	if err != nil {
		return err
	}
	if rep.Verdict == string(proxy.Denied) {
		return exitError(1)
	}
	return nil
}

// decideCheck opens trustproxy on cfg and decides on image.
func decideCheck(ctx context.Context, cfg *config.Config, image string, rescan bool, log *slog.Logger) (*checkReport, error) {
	p, err := wiring.Open(ctx, cfg, log, prometheus.NewRegistry())
	if err != nil {
		return nil, err
	}
	defer p.Close(context.WithoutCancel(ctx))
	d, err := p.Check(ctx, image, rescan)
	if err != nil {
		return nil, err
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
	rep.Source = d.Source
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
	return &rep, nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// writeCheckText prints rep for a person: the verdict and its reason first,
// then what it rests on.
func writeCheckText(w io.Writer, rep *checkReport) error {
	var b strings.Builder
	sep := ":"
	if strings.Contains(rep.Ref, ":") { // a digest
		sep = "@"
	}
	fmt.Fprintf(&b, "%s%s%s %s (%s)\n", rep.Repository, sep, rep.Ref, rep.Verdict, rep.Reason)
	if rep.Message != "" {
		fmt.Fprintf(&b, "  why:        %s\n", rep.Message)
	}
	if r := rep.Rule; r != nil {
		fmt.Fprintf(&b, "  rule:       trust.rules[%d] %s (%s)\n", r.Index, r.Repositories, r.Mode)
	}
	if rep.Digest != "" {
		fmt.Fprintf(&b, "  digest:     %s", rep.Digest)
		if rep.Size > 0 {
			fmt.Fprintf(&b, " (%d bytes)", rep.Size)
		}
		b.WriteString("\n")
	}
	if rep.Role != "" {
		fmt.Fprintf(&b, "  signed in:  %s by %s\n", rep.Role, strings.Join(rep.Signers, ", "))
		if rep.Source != "" {
			fmt.Fprintf(&b, "  source:     %s\n", rep.Source)
		}
	}
	if t := rep.TrustData; t != nil {
		fmt.Fprintf(&b, "  trust data: refreshed %s, expires %s, trust server %s\n",
			t.Refreshed.Format(time.RFC3339), t.Expires.Format(time.RFC3339), t.TrustServer)
	}
	if s := rep.Scan; s != nil {
		verdict := "failed"
		if s.Passed {
			verdict = "passed"
		}
		fmt.Fprintf(&b, "  scan:       %s, %d vulnerabilities", verdict, s.Found)
		if s.Source != "" {
			fmt.Fprintf(&b, ", from %s", s.Source)
		}
		if s.Detail != "" {
			fmt.Fprintf(&b, ": %s", s.Detail)
		}
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}
