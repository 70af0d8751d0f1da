package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// SentinelMaster is the name the Sentinels of StartSentinel monitor their
// master under (redis.master_name).
const SentinelMaster = "trustproxy"

// Sentinel is a Redis master with two replicas and three Sentinels
// watching it, all redis-server processes on 127.0.0.1, tuned to fail over
// within a few seconds of the master's death (down-after-milliseconds
// 1500, failover-timeout 6000: with 500 and 2000 the Sentinels of a loaded
// 2-core machine took a starved node for dead, or abandoned a promotion,
// and failed over twice, losing writes to the first). Nodes need password (requirepass and
// masterauth) when it is not empty; the Sentinels need sentinelPassword
// (StartSentinelAuth), none by default.
type Sentinel struct {
	t                testing.TB
	Nodes            []*Redis // Nodes[0] was the first master
	Sentinels        []*Redis
	password         string
	sentinelPassword string
}

// StartSentinel starts the three nodes and the three Sentinels and waits
// until every Sentinel knows both replicas. All stop at t.Cleanup.
func StartSentinel(t testing.TB, password string) *Sentinel {
	t.Helper()
	return StartSentinelAuth(t, password, "")
}

// StartSentinelAuth is StartSentinel with Sentinels that take commands
// only after AUTH with sentinelPassword (and use it with each other).
func StartSentinelAuth(t testing.TB, password, sentinelPassword string) *Sentinel {
	t.Helper()
	s := &Sentinel{t: t, password: password, sentinelPassword: sentinelPassword}
	repl := []string{"--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1"}
	master := newRedis(t, password, repl...)
	master.Start()
	s.Nodes = append(s.Nodes, master)
	mhost, mport, _ := net.SplitHostPort(master.Addr())
	for range 2 {
		r := newRedis(t, password, append(slices.Clone(repl), "--replicaof", mhost, mport)...)
		r.Start()
		s.Nodes = append(s.Nodes, r)
	}
	for range 3 {
		sn := newRedis(t, sentinelPassword)
		conf := []string{
			"sentinel monitor " + SentinelMaster + " " + mhost + " " + mport + " 2",
			"sentinel down-after-milliseconds " + SentinelMaster + " 1500",
			"sentinel failover-timeout " + SentinelMaster + " 6000",
			"sentinel parallel-syncs " + SentinelMaster + " 2",
		}
		if password != "" {
			conf = append(conf, "sentinel auth-pass "+SentinelMaster+" "+password)
		}
		if sentinelPassword != "" {
			conf = append(conf, "sentinel sentinel-pass "+sentinelPassword)
		}
		sn.conf = filepath.Join(sn.dir, "sentinel.conf")
		if err := os.WriteFile(sn.conf, []byte(strings.Join(conf, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		sn.Start()
		s.Sentinels = append(s.Sentinels, sn)
	}
	ctx := context.Background()
	for _, sn := range s.Sentinels {
		c := goredis.NewSentinelClient(&goredis.Options{Addr: sn.Addr(), Password: sentinelPassword})
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			rs, err := c.Replicas(ctx, SentinelMaster).Result()
			if err == nil && len(rs) == 2 {
				break
			}
			if time.Now().After(deadline) {
				c.Close()
				t.Fatalf("sentinel %s does not know both replicas of %s: %v %v", sn.Addr(), master.Addr(), rs, err)
			}
		}
		c.Close()
	}
	return s
}

// Addrs are the Sentinels' addresses, for redis.addrs.
func (s *Sentinel) Addrs() []string {
	var out []string
	for _, sn := range s.Sentinels {
		out = append(out, sn.Addr())
	}
	return out
}

// Master is the node the Sentinels name master now (asked of the first
// one that answers).
func (s *Sentinel) Master() *Redis {
	s.t.Helper()
	for _, sn := range s.Sentinels {
		addr, err := s.names(sn)
		if err != nil {
			continue
		}
		for _, n := range s.Nodes {
			if n.Addr() == addr {
				return n
			}
		}
	}
	s.t.Fatal("no sentinel names a master")
	return nil
}

// agree says whether every Sentinel names m master.
func (s *Sentinel) agree(m *Redis) bool {
	for _, sn := range s.Sentinels {
		if addr, err := s.names(sn); err != nil || addr != m.Addr() {
			return false
		}
	}
	return true
}

// names is the address Sentinel sn names master.
func (s *Sentinel) names(sn *Redis) (string, error) {
	c := goredis.NewSentinelClient(&goredis.Options{Addr: sn.Addr(), Password: s.sentinelPassword})
	defer c.Close()
	addr, err := c.GetMasterAddrByName(context.Background(), SentinelMaster).Result()
	if err != nil {
		return "", err
	}
	if len(addr) != 2 {
		return "", fmt.Errorf("sentinel %s answered %q", sn.Addr(), addr)
	}
	return net.JoinHostPort(addr[0], addr[1]), nil
}

// replicate says whether every running node other than m is a replica of
// m with its link up.
func (s *Sentinel) replicate(m *Redis) bool {
	_, port, _ := net.SplitHostPort(m.Addr())
	for _, n := range s.Nodes {
		if n == m || !n.Running() {
			continue
		}
		cl := n.client()
		info, err := cl.Info(context.Background(), "replication").Result()
		cl.Close()
		if err != nil || !strings.Contains(info, "role:slave\r\n") || !strings.Contains(info, "master_port:"+port+"\r\n") || !strings.Contains(info, "master_link_status:up\r\n") {
			return false
		}
	}
	return true
}

// Replicas are the nodes other than the master, running or not.
func (s *Sentinel) Replicas() []*Redis {
	m := s.Master()
	var out []*Redis
	for _, n := range s.Nodes {
		if n != m {
			out = append(out, n)
		}
	}
	return out
}

// WaitFailover waits until every Sentinel names the same master other
// than old, that node answers as a master and every other running node
// replicates it, and returns it. A client started before asks whichever
// Sentinel it reaches first, and one that has not heard of the failover
// yet names the dead master; and on a loaded machine the Sentinels may
// abandon a first promotion (failover-timeout) and promote another node,
// leaving the first a master of its own for seconds until they turn it
// back into a replica, which drops what was written to it meanwhile.
func (s *Sentinel) WaitFailover(old *Redis) *Redis {
	s.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if m := s.Master(); m != old && nodeRole(m) == "master" && s.agree(m) && s.replicate(m) {
			return m
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("the sentinels did not fail over from %s within 30s", old.Addr())
		}
	}
}

// Cluster is a Redis Cluster of three masters, each with one replica, all
// redis-server processes on 127.0.0.1 (cluster-node-timeout 1000, so a
// replica takes over about two seconds after its master's death).
type Cluster struct {
	t        testing.TB
	Nodes    []*Redis // Nodes[i+3] replicates Nodes[i]
	password string
}

// StartCluster starts the six nodes, gives the masters a third of the
// slots each, makes the others their replicas and waits until the
// cluster is whole. All stop at t.Cleanup.
func StartCluster(t testing.TB, password string) *Cluster {
	t.Helper()
	c := &Cluster{t: t, password: password}
	for range 6 {
		r := newRedis(t, password, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "1000", "--cluster-replica-validity-factor", "0",
			"--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1")
		r.Start()
		c.Nodes = append(c.Nodes, r)
	}
	ctx := context.Background()
	ids := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		cl := n.client()
		id, err := cl.ClusterMyID(ctx).Result()
		if err != nil {
			t.Fatalf("cluster myid of %s: %v", n.Addr(), err)
		}
		ids[i] = id
		if i < 3 {
			lo, hi := i*16384/3, (i+1)*16384/3-1
			if err := cl.ClusterAddSlotsRange(ctx, lo, hi).Err(); err != nil {
				t.Fatalf("cluster addslotsrange on %s: %v", n.Addr(), err)
			}
		}
		if i > 0 {
			host, port, _ := net.SplitHostPort(c.Nodes[0].Addr())
			if err := cl.ClusterMeet(ctx, host, port).Err(); err != nil {
				t.Fatalf("cluster meet from %s: %v", n.Addr(), err)
			}
		}
		cl.Close()
	}
	for i := 3; i < 6; i++ {
		cl := c.Nodes[i].client()
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			err := cl.Do(ctx, "CLUSTER", "REPLICATE", ids[i-3]).Err()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("cluster replicate %s on %s: %v", ids[i-3], c.Nodes[i].Addr(), err)
			}
		}
		cl.Close()
	}
	c.WaitHealthy()
	return c
}

// Addrs are the masters' addresses, the seeds for redis.addrs.
func (c *Cluster) Addrs() []string {
	return []string{c.Nodes[0].Addr(), c.Nodes[1].Addr(), c.Nodes[2].Addr()}
}

// WaitHealthy waits until every running node says cluster_state:ok and
// has as many replicas attached as the cluster has running nodes beyond
// its three masters.
func (c *Cluster) WaitHealthy() {
	c.t.Helper()
	ctx := context.Background()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		ok, masters, running := true, 0, 0
		var last string
		for _, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			running++
			cl := n.client()
			info, err := cl.ClusterInfo(ctx).Result()
			role := nodeRole(n)
			cl.Close()
			if err != nil || !strings.Contains(info, "cluster_state:ok") {
				ok, last = false, fmt.Sprintf("%s: %v %.60q", n.Addr(), err, info)
			}
			if role == "master" {
				masters++
			}
		}
		if ok && masters == 3 && running >= 3 {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("the cluster is not whole after 30s (%d masters of %d nodes running): %s", masters, running, last)
		}
	}
}

// MasterOf is the node that serves key now, as the cluster says.
func (c *Cluster) MasterOf(key string) *Redis {
	c.t.Helper()
	ctx := context.Background()
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		cl := n.client()
		slot, err1 := cl.ClusterKeySlot(ctx, key).Result()
		slots, err2 := cl.ClusterSlots(ctx).Result()
		cl.Close()
		if err1 != nil || err2 != nil {
			continue
		}
		for _, s := range slots {
			if int64(s.Start) <= slot && slot <= int64(s.End) && len(s.Nodes) > 0 {
				for _, m := range c.Nodes {
					if m.Addr() == s.Nodes[0].Addr {
						return m
					}
				}
			}
		}
	}
	c.t.Fatalf("no node of the cluster serves %q", key)
	return nil
}

// client is a plain client of one node (AUTH with its password).
func (r *Redis) client() *goredis.Client {
	return goredis.NewClient(&goredis.Options{Addr: r.addr, Password: r.password, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: 2 * time.Second})
}

// nodeRole is what ROLE says of r: master, slave, or "" when it does not
// answer.
func nodeRole(r *Redis) string {
	if !r.Running() {
		return ""
	}
	cl := r.client()
	defer cl.Close()
	v, err := cl.Do(context.Background(), "ROLE").Slice()
	if err != nil || len(v) == 0 {
		return ""
	}
	s, _ := v[0].(string)
	return s
}

// Describe says, for a failed test's log, what each Redis node of d is
// (running, ROLE, replication offset), which of the keys matching pattern
// it holds with their lengths, and which master each Sentinel names.
func (d *Deployment) Describe(pattern string) string {
	var nodes []*Redis
	switch {
	case d.Sentinel != nil:
		nodes = d.Sentinel.Nodes
	case d.Cluster != nil:
		nodes = d.Cluster.Nodes
	case d.Redis != nil:
		nodes = []*Redis{d.Redis}
	}
	ctx := context.Background()
	var b strings.Builder
	for _, n := range nodes {
		fmt.Fprintf(&b, "node %s: ", n.Addr())
		if !n.Running() {
			b.WriteString("not running\n")
			continue
		}
		cl := n.client()
		info, _ := cl.Info(ctx, "replication").Result()
		var fields []string
		for _, line := range strings.Split(info, "\r\n") {
			if k, _, _ := strings.Cut(line, ":"); k == "role" || k == "master_host" || k == "master_port" || k == "master_link_status" || k == "master_repl_offset" || k == "connected_slaves" {
				fields = append(fields, line)
			}
		}
		keys, err := cl.Keys(ctx, pattern).Result()
		fmt.Fprintf(&b, "%s; keys %q (err %v):", strings.Join(fields, " "), pattern, err)
		for _, k := range keys {
			fmt.Fprintf(&b, " %s (%d bytes)", k, cl.StrLen(ctx, k).Val())
		}
		b.WriteString("\n")
		cl.Close()
	}
	if d.Sentinel != nil {
		for _, sn := range d.Sentinel.Sentinels {
			addr, err := d.Sentinel.names(sn)
			fmt.Fprintf(&b, "sentinel %s names %s (err %v)\n", sn.Addr(), addr, err)
		}
	}
	return b.String()
}
