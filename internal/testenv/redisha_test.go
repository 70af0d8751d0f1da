package testenv

import (
	"context"
	"testing"
	"time"
)

// TestSentinelFailsOver: the Sentinels promote a replica within seconds of
// the master's SIGKILL, and a client of the deployment writes to it.
func TestSentinelFailsOver(t *testing.T) {
	s := StartSentinel(t, "sentinel-secret")
	d := NewSentinelDeployment(t, s)
	ctx := context.Background()
	c := d.Client(t)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	old := s.Master()
	old.Kill()
	killed := time.Now()
	m := s.WaitFailover(old)
	t.Logf("sentinel promoted %s %s after the master's kill", m.Addr(), time.Since(killed).Round(time.Millisecond))
	for deadline := time.Now().Add(10 * time.Second); c.Set(ctx, "k2", "v", 0).Err() != nil; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no write to the new master within 10s")
		}
	}
}

// TestClusterFailsOver: a replica takes over the slots of a master killed
// with SIGKILL, and a client of the deployment writes to them.
func TestClusterFailsOver(t *testing.T) {
	c := StartCluster(t, "cluster-secret")
	d := NewClusterDeployment(t, c)
	ctx := context.Background()
	rc := d.Client(t)
	for _, k := range []string{"a", "b", "c", "d"} {
		if err := rc.Set(ctx, k, "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	old := c.MasterOf("a")
	old.Kill()
	killed := time.Now()
	c.WaitHealthy()
	t.Logf("the cluster is whole again %s after a master's kill; a now served by %s", time.Since(killed).Round(time.Millisecond), c.MasterOf("a").Addr())
	for deadline := time.Now().Add(10 * time.Second); rc.Set(ctx, "a", "w", 0).Err() != nil; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no write to a within 10s of the failover")
		}
	}
}
