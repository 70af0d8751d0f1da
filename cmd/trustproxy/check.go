package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/distribution/reference"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// check says whether image would be served: the signed digest and signers,
// or the refusal. It exits 1 when refused.
func check(ctx context.Context, cfg *config.Config, image string, stdout io.Writer, log *slog.Logger) error {
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return fmt.Errorf("image %q: %w", image, err)
	}
	tag := "latest"
	if t, ok := named.(reference.Tagged); ok {
		tag = t.Tag()
	}
	gun := reference.Domain(named) + "/" + reference.Path(named)
	v, err := trust.New(cfg, log, prometheus.NewRegistry())
	if err != nil {
		return fmt.Errorf("trust: %w", err)
	}
	out := map[string]any{"repository": gun, "tag": tag}
	rule := cfg.Trust.RuleFor(gun)
	snap, err := v.Snapshot(ctx, gun, rule)
	var target trust.Target
	if err == nil {
		target, err = snap.Resolve(tag)
	}
	if d, ok := named.(reference.Digested); ok && err == nil && target.Digest != d.Digest() {
		err = fmt.Errorf("the signed digest of %s is %s, not %s", tag, target.Digest, d.Digest())
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if snap != nil {
		out["trust_data"] = trustData(snap)
	}
	if err != nil {
		out["verdict"] = "refused"
		out["message"] = err.Error()
		if r, ok := errors.AsType[*trust.RefusalError](err); ok {
			out["reason"] = r.Reason
		}
		_ = enc.Encode(out)
		return exitError(1)
	}
	out["verdict"] = "served"
	out["digest"] = target.Digest
	out["size"] = target.Size
	out["role"] = target.Role
	out["signers"] = target.Signers
	out["mode"] = strings.ToLower(string(rule.Mode))
	return enc.Encode(out)
}

// trustData describes how fresh the trust data behind a verdict is.
func trustData(s *trust.Snapshot) map[string]any {
	m := map[string]any{"refreshed": s.Refreshed.UTC(), "expires": s.Expires.UTC()}
	if s.Unreachable != "" {
		m["trust_server"] = "unreachable: " + s.Unreachable
	} else {
		m["trust_server"] = "ok"
	}
	return m
}
