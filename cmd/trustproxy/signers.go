package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/trust"
)

// listSigners prints each signer of cfg: its public_key file and the key
// IDs of every key in it, in both forms, the key_ids the configuration
// lists, and the rules that trust it.
func listSigners(cfg *config.Config, stdout io.Writer) error {
	if len(cfg.Trust.Signers) == 0 {
		fmt.Fprintln(stdout, "no signers configured (trust.signers): rules without signers accept any key the repository's root delegates to")
		return nil
	}
	for i, s := range cfg.Trust.Signers {
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		fmt.Fprintf(stdout, "%s\n", s.Name)
		if s.PublicKey != "" {
			b, err := os.ReadFile(s.PublicKey)
			if err != nil {
				return fmt.Errorf("trust.signers[%d].public_key: %w", i, err)
			}
			ids, err := trust.KeyIDs(b)
			if err != nil {
				return fmt.Errorf("trust.signers[%d].public_key %s: %w", i, s.PublicKey, err)
			}
			fmt.Fprintf(stdout, "  public_key: %s\n", s.PublicKey)
			writeKeyIDs(stdout, "  ", ids)
		}
		if len(s.KeyIDs) > 0 {
			fmt.Fprintf(stdout, "  key_ids: %s\n", strings.Join(s.KeyIDs, ", "))
		}
		var rules []string
		for j, r := range cfg.Trust.Rules {
			if slices.Contains(r.Signers, s.Name) {
				rules = append(rules, fmt.Sprintf("%d (%s)", j, r.Repositories))
			}
		}
		if len(rules) == 0 {
			fmt.Fprintln(stdout, "  rules: none (no rule names this signer)")
		} else {
			fmt.Fprintf(stdout, "  rules: %s\n", strings.Join(rules, ", "))
		}
	}
	return nil
}

// addSigner prints the trust.signers entry for the key or certificate in
// file (what `docker trust key generate NAME` writes as NAME.pub, or a
// certificate), its key IDs, and, for a certificate, the ID that
// trust.pinning.certs pins a repository's root by.
func addSigner(name, file string, stdout io.Writer) error {
	if strings.TrimSpace(name) == "" {
		return errors.New("the signer needs a name: trustproxy signers add NAME FILE")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	ids, err := trust.KeyIDs(b)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	if file, err = filepath.Abs(file); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "# under trust.signers, then name %s in the signers of the rules that trust it:\n", name)
	entry, err := yaml.Marshal([]config.Signer{{Name: name, PublicKey: file}})
	if err != nil {
		return err
	}
	stdout.Write(entry)
	writeKeyIDs(stdout, "# ", ids)
	for _, id := range ids {
		if id.Certificate != "" {
			fmt.Fprintf(stdout, "# if this certificate is a repository's root, trust.pinning.certs pins it as %s\n", id.Certificate)
		}
	}
	return nil
}

// writeKeyIDs prints ids, each line led by indent.
func writeKeyIDs(w io.Writer, indent string, ids []trust.KeyID) {
	for _, id := range ids {
		if id.Certificate != "" {
			fmt.Fprintf(w, "%scertificate key ID (as targets.json lists it): %s (certificate valid until %s)\n", indent, id.Certificate, id.Expires.UTC().Format("2006-01-02"))
		}
		fmt.Fprintf(w, "%skey ID (as notary key list shows it):          %s\n", indent, id.Key)
	}
}
