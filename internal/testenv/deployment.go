package testenv

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Deployment is what the trustproxy replicas of one deployment share: a Redis, a storage
// directory (or an S3 bucket) and the state key. Each replica has a data directory of its own.
type Deployment struct {
	Redis   *Redis
	Storage string // storage.filesystem.rootdirectory; "" with S3
	S3      *S3    // the bucket of storage.s3, when not nil

	stateKeyFile string // StateKey, for redis.state_key_file
	passwordFile string // the Redis's password, for redis.password_file; "" when it has none
}

// NewDeployment makes a storage directory for replicas to share on r, and the files
// that hold the deployment's state key (StateKey) and r's password.
func NewDeployment(t testing.TB, r *Redis) *Deployment {
	t.Helper()
	d := &Deployment{Redis: r, Storage: t.TempDir(), stateKeyFile: StateKeyFile(t, StateKey)}
	if r.password != "" {
		d.passwordFile = filepath.Join(t.TempDir(), "redis-password")
		writeFile(t, d.passwordFile, []byte(r.password+"\n"))
	}
	return d
}

// NewS3Deployment is NewDeployment with the replicas' storage in the bucket of s.
func NewS3Deployment(t testing.TB, r *Redis, s *S3) *Deployment {
	t.Helper()
	d := NewDeployment(t, r)
	d.Storage, d.S3 = "", s
	return d
}

// YAML is the configuration the replicas share, as top-level YAML: the storage directory,
// and the redis section with the Redis's address, its password file (when it has a
// password), the further fields redisFields ("replica_url: http://…") and the
// deployment's state key file, unless redisFields name another.
func (d *Deployment) YAML(redisFields ...string) string {
	fields := []string{"addrs: [" + d.Redis.Addr() + "]"}
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
