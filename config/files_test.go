package config

import (
	"slices"
	"strings"
	"testing"
)

// TestRestartNeeded: the settings built into what runs are named, the ones
// a reload changes are not, and KeepRestartSettings keeps the running
// values of the former only.
func TestRestartNeeded(t *testing.T) {
	load := func(yaml string) *Config {
		t.Helper()
		c, err := Load(strings.NewReader(yaml), nil)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	running := load("listen: 127.0.0.1:5000\ntrust: {refresh_ttl: 1m}\n")
	next := load("listen: 127.0.0.1:6000\nlimits: {upstream_timeout: 5s}\ntrust: {refresh_ttl: 2m}\nlog: {level: warn}\n")
	if got := running.RestartNeeded(next); !slices.Equal(got, []string{"listen", "limits"}) {
		t.Errorf("RestartNeeded = %v, want [listen limits]", got)
	}
	kept := running.KeepRestartSettings(next)
	if kept.Listen != running.Listen || kept.Limits != running.Limits || kept.Trust.RefreshTTL != next.Trust.RefreshTTL || kept.Log.Level != "warn" {
		t.Errorf("KeepRestartSettings: listen %s limits %+v refresh_ttl %s log %s", kept.Listen, kept.Limits, kept.Trust.RefreshTTL, kept.Log.Level)
	}
	if got := running.RestartNeeded(kept); len(got) != 0 {
		t.Errorf("what is kept still needs a restart: %v", got)
	}
}
