package testenv

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// Deployment is what the trustproxy replicas of one deployment share: a Redis (one
// node, Sentinels and their nodes, or a Cluster), a storage directory (or an S3 bucket)
// and the state key. Each replica has a data directory of its own.
type Deployment struct {
	Redis    *Redis    // a single node; nil with Sentinel or Cluster
	Sentinel *Sentinel // nil unless NewSentinelDeployment
	Cluster  *Cluster  // nil unless NewClusterDeployment
	Storage  string    // storage.filesystem.rootdirectory; "" with S3
	S3       *S3       // the bucket of storage.s3, when not nil

	addrs    []string // redis.addrs
	password string
	fields   []string // further redis fields of the mode (master_name)

	stateKeyFile string // StateKey, for redis.state_key_file
	passwordFile string // the Redis's password, for redis.password_file; "" when it has none
}

// NewDeployment makes a storage directory for replicas to share on r, and the files
// that hold the deployment's state key (StateKey) and r's password.
func NewDeployment(t testing.TB, r *Redis) *Deployment {
	t.Helper()
	d := &Deployment{Redis: r, addrs: []string{r.Addr()}, password: r.password}
	d.init(t)
	return d
}

// NewS3Deployment is NewDeployment with the replicas' storage in the bucket of s.
func NewS3Deployment(t testing.TB, r *Redis, s *S3) *Deployment {
	t.Helper()
	d := NewDeployment(t, r)
	d.Storage, d.S3 = "", s
	return d
}

// NewSentinelDeployment is NewDeployment on the Sentinels of s: redis.addrs are the
// Sentinels and redis.master_name is SentinelMaster.
func NewSentinelDeployment(t testing.TB, s *Sentinel) *Deployment {
	t.Helper()
	d := &Deployment{Sentinel: s, addrs: s.Addrs(), password: s.password, fields: []string{"master_name: " + SentinelMaster}}
	d.init(t)
	if s.sentinelPassword != "" {
		f := filepath.Join(t.TempDir(), "sentinel-password")
		writeFile(t, f, []byte(s.sentinelPassword+"\n"))
		d.fields = append(d.fields, "sentinel_password_file: "+f)
	}
	return d
}

// NewClusterDeployment is NewDeployment on the Cluster c: redis.addrs are its masters.
func NewClusterDeployment(t testing.TB, c *Cluster) *Deployment {
	t.Helper()
	d := &Deployment{Cluster: c, addrs: c.Addrs(), password: c.password}
	d.init(t)
	return d
}

// Through is d with replicas reaching its single Redis at addr (a Front) instead.
func (d *Deployment) Through(addr string) *Deployment {
	c := *d
	c.addrs = []string{addr}
	return &c
}

func (d *Deployment) init(t testing.TB) {
	d.Storage, d.stateKeyFile = t.TempDir(), StateKeyFile(t, StateKey)
	if d.password != "" {
		d.passwordFile = filepath.Join(t.TempDir(), "redis-password")
		writeFile(t, d.passwordFile, []byte(d.password+"\n"))
	}
}

// Client is a go-redis client of the deployment's Redis, in its mode, for a test to
// read or change what the replicas share; closed at t.Cleanup.
func (d *Deployment) Client(t testing.TB) goredis.UniversalClient {
	t.Helper()
	opts := &goredis.UniversalOptions{Addrs: d.addrs, Password: d.password}
	var c goredis.UniversalClient
	switch {
	case d.Sentinel != nil:
		opts.MasterName, opts.SentinelPassword = SentinelMaster, d.Sentinel.sentinelPassword
		c = goredis.NewUniversalClient(opts)
	case d.Cluster != nil:
		co := opts.Cluster()
		co.ClusterStateReloadInterval = time.Second // see a failover's new masters soon
		c = goredis.NewClusterClient(co)
	default:
		c = goredis.NewUniversalClient(opts)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// YAML is the configuration the replicas share, as top-level YAML: the storage directory,
// and the redis section with the Redis's address, its password file (when it has a
// password), the further fields redisFields ("replica_url: http://…") and the
// deployment's state key file, unless redisFields name another.
func (d *Deployment) YAML(redisFields ...string) string {
	fields := append([]string{"addrs: [" + strings.Join(d.addrs, ", ") + "]"}, d.fields...)
	if d.passwordFile != "" {
		fields = append(fields, "password_file: "+d.passwordFile)
	}
	fields = append(fields, redisFields...)
	if !slices.ContainsFunc(fields, func(f string) bool { return strings.HasPrefix(f, "state_key_file:") }) {
		fields = append(fields, "state_key_file: "+d.stateKeyFile)
	}
	storage := "storage: {filesystem: {rootdirectory: " + d.Storage + "}}"
	if d.S3 != nil {
		storage = d.S3.StorageYAML()
	}
	return fmt.Sprintf("%s\nredis: {%s}\n", storage, strings.Join(fields, ", "))
}
