package trust

import (
	"fmt"
)

// Reason is the kind of a refusal. Operators grep logs and metrics for it.
// These are trust's reasons; the proxy adds its own (what the content, not
// the trust data, gave away).
type Reason string

const (
	NoTrustServer    Reason = "no_trust_server"   // the upstream has no Notary server configured
	NoTrustData      Reason = "no_trust_data"     // the GUN has no trust data on the Notary server
	NotPinned        Reason = "root_not_pinned"   // the root is not pinned and TOFU is off, or it fails the pin
	NotSigned        Reason = "not_signed"        // the tag or digest is not a signed target
	UntrustedSigner  Reason = "untrusted_signer"  // signed, but by no signer the rule trusts
	Expired          Reason = "expired"           // trust metadata has expired
	InvalidMetadata  Reason = "invalid_metadata"  // signatures, thresholds, hashes or sizes do not verify
	Rollback         Reason = "rollback"          // the server offered older metadata than already seen
	TrustUnavailable Reason = "trust_unavailable" // the Notary server is unreachable and nothing usable is cached
	NoRule           Reason = "no_rule"           // no rule matches the GUN
)

// A RefusalError says why GUN:Ref is refused. Its message is written for a
// person: it names the reason and what to do about it.
type RefusalError struct {
	GUN    string
	Ref    string // tag or digest; empty when the whole repository is refused
	Reason Reason
	Detail string // what happened, for a person
	Err    error  // the error behind it, if any
}

func (e *RefusalError) Error() string {
	name := e.GUN
	if e.Ref != "" {
		sep := ":"
		if len(e.Ref) > 7 && e.Ref[:7] == "sha256:" {
			sep = "@"
		}
		name += sep + e.Ref
	}
	msg := fmt.Sprintf("refused (%s): %s", e.Reason, e.Detail)
	if name != "" {
		msg = name + " " + msg
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *RefusalError) Unwrap() error { return e.Err }

// WithRef returns a copy of e about ref.
func (e *RefusalError) WithRef(ref string) *RefusalError {
	c := *e
	c.Ref = ref
	return &c
}
