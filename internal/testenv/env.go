package testenv

import "testing"

// Env is an upstream registry and a Notary server, both started for one test.
type Env struct {
	Registry *Registry
	Notary   *Notary
}

// New starts an Env; t.Cleanup stops it.
func New(t testing.TB) *Env {
	t.Helper()
	return &Env{Registry: NewRegistry(t), Notary: StartNotary(t)}
}
