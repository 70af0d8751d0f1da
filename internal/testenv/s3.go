package testenv

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/s3"
)

// SeaweedFSVersion is the version of SeaweedFS's weed command the S3 tests
// run: scripts/test builds it with go install (docs/scaling.md says why
// SeaweedFS).
const SeaweedFSVersion = "v0.0.0-20261109003541-7506e5f91cd6"

// S3 is an S3-compatible server on 127.0.0.1: SeaweedFS's `weed server -s3`
// (master, volume server, filer and S3 gateway in one process), with its
// data under a t.TempDir(), one bucket and one identity allowed everything
// on it. It is killed at t.Cleanup.
type S3 struct {
	Endpoint  string // http://127.0.0.1:port of the S3 API
	Bucket    string
	AccessKey string
	SecretKey string
	Region    string

	client *s3.S3
	cmd    *exec.Cmd
}

// StartS3 starts weed (from PATH, or GOBIN, or GOPATH's bin) and creates
// the bucket. A missing weed fails t, naming the command that installs it.
func StartS3(t testing.TB) *S3 {
	t.Helper()
	bin := lookWeed()
	if bin == "" {
		t.Fatalf("weed (SeaweedFS, the S3 server of the object storage tests) is not on PATH nor in GOBIN or GOPATH/bin: run scripts/test, which builds it, "+
			"or build it yourself: go mod download github.com/seaweedfs/seaweedfs@%[1]s && cd \"$(go env GOMODCACHE)/github.com/seaweedfs/seaweedfs@%[1]s\" && go build -o \"$(go env GOPATH)/bin/weed\" ./weed",
			SeaweedFSVersion)
	}
	dir := t.TempDir()
	s := &S3{Bucket: "trustproxy", AccessKey: "trustproxy-test", SecretKey: "trustproxy-test-secret-key", Region: "us-east-1"}
	identities := map[string]any{"identities": []any{map[string]any{
		"name":        "trustproxy",
		"credentials": []any{map[string]string{"accessKey": s.AccessKey, "secretKey": s.SecretKey}},
		"actions":     []string{"Admin", "Read", "List", "Tagging", "Write"},
	}}}
	cfg, _ := json.Marshal(identities)
	cfgFile := filepath.Join(dir, "s3.json")
	writeFile(t, cfgFile, cfg)
	ports := make([]string, 8)
	for i := range ports {
		addr, err := freeAddr()
		if err != nil {
			t.Fatal(err)
		}
		_, ports[i], _ = net.SplitHostPort(addr)
	}
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		t.Fatal(err)
	}
	s.Endpoint = "http://127.0.0.1:" + ports[6]
	args := []string{"server", "-s3",
		"-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-dir=" + data,
		"-master.port=" + ports[0], "-master.port.grpc=" + ports[1], "-master.telemetry=false",
		"-master.volumeSizeLimitMB=64", "-volume.max=32",
		"-volume.port=" + ports[2], "-volume.port.grpc=" + ports[3],
		"-filer.port=" + ports[4], "-filer.port.grpc=" + ports[5], "-filer.localSocket=" + filepath.Join(dir, "filer.sock"),
		"-s3.port=" + ports[6], "-s3.port.grpc=" + ports[7], "-s3.localSocket=" + filepath.Join(dir, "s3.sock"),
		"-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.config=" + cfgFile,
	}
	cmd := exec.Command(bin, args...)
	log, err := os.Create(filepath.Join(dir, "weed.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Dir = dir
	begin := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start weed: %v", err)
	}
	s.cmd = cmd
	t.Cleanup(s.stop)

	sess, err := session.NewSession(&aws.Config{
		Endpoint:         aws.String(s.Endpoint),
		Region:           aws.String(s.Region),
		Credentials:      credentials.NewStaticCredentials(s.AccessKey, s.SecretKey, ""),
		S3ForcePathStyle: aws.Bool(true),
		DisableSSL:       aws.Bool(true),
		HTTPClient:       &http.Client{Timeout: 10 * time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	s.client = s3.New(sess)
	// The S3 gateway answers once the master, a volume server and the
	// filer are up; the bucket is created as soon as it does.
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		_, err := s.client.CreateBucketWithContext(t.Context(), &s3.CreateBucketInput{Bucket: aws.String(s.Bucket)})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "weed.log"))
			t.Fatalf("weed's S3 gateway on %s: no bucket after 60s: %v\n%s", s.Endpoint, err, tail(b, 4000))
		}
	}
	// A first object written proves a volume can take writes.
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		_, err := s.client.PutObjectWithContext(t.Context(), &s3.PutObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String("ready"), Body: bytes.NewReader([]byte("ok"))})
		if err == nil {
			_, _ = s.client.DeleteObjectWithContext(t.Context(), &s3.DeleteObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String("ready")})
			t.Logf("weed server -s3 on %s took writes %s after it started", s.Endpoint, time.Since(begin).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "weed.log"))
			t.Fatalf("weed's S3 gateway on %s takes no writes after 60s: %v\n%s", s.Endpoint, err, tail(b, 4000))
		}
	}
	return s
}

// lookWeed finds the weed command on PATH, else where go install puts it.
func lookWeed() string {
	if p, err := exec.LookPath("weed"); err == nil {
		return p
	}
	var dirs []string
	if gobin := os.Getenv("GOBIN"); gobin != "" {
		dirs = append(dirs, gobin)
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		if home, err := os.UserHomeDir(); err == nil {
			gopath = filepath.Join(home, "go")
		}
	}
	for _, p := range filepath.SplitList(gopath) {
		dirs = append(dirs, filepath.Join(p, "bin"))
	}
	for _, d := range dirs {
		if fi, err := os.Stat(filepath.Join(d, "weed")); err == nil && !fi.IsDir() {
			return filepath.Join(d, "weed")
		}
	}
	return ""
}

func (s *S3) stop() {
	if s.cmd != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
	}
}

// Params are the s3 storage driver's parameters for the bucket, as
// trustproxy's storage section takes them (distribution's s3-aws driver).
func (s *S3) Params() map[string]any {
	return map[string]any{
		"regionendpoint": s.Endpoint, "forcepathstyle": true, "region": s.Region, "bucket": s.Bucket,
		"accesskey": s.AccessKey, "secretkey": s.SecretKey, "secure": false, "chunksize": 5 << 20,
	}
}

// StorageYAML is trustproxy's storage section for the bucket, one line of
// flow YAML.
func (s *S3) StorageYAML() string {
	return fmt.Sprintf("storage: {s3: {regionendpoint: %q, forcepathstyle: true, region: %s, bucket: %s, accesskey: %s, secretkey: %s, secure: false, chunksize: %d}}",
		s.Endpoint, s.Region, s.Bucket, s.AccessKey, s.SecretKey, 5<<20)
}

// Client is an S3 client with the bucket's credentials: what another
// writer of the bucket can do.
func (s *S3) Client() *s3.S3 { return s.client }

// Keys lists the object keys under prefix (no leading slash).
func (s *S3) Keys(t testing.TB, prefix string) []string {
	t.Helper()
	var keys []string
	err := s.client.ListObjectsV2PagesWithContext(t.Context(), &s3.ListObjectsV2Input{Bucket: aws.String(s.Bucket), Prefix: aws.String(prefix)},
		func(p *s3.ListObjectsV2Output, _ bool) bool {
			for _, o := range p.Contents {
				keys = append(keys, *o.Key)
			}
			return true
		})
	if err != nil {
		t.Fatalf("list s3://%s/%s: %v", s.Bucket, prefix, err)
	}
	return keys
}

// Uploads lists the keys of the multipart uploads in progress under prefix.
func (s *S3) Uploads(t testing.TB, prefix string) []string {
	t.Helper()
	out, err := s.client.ListMultipartUploadsWithContext(t.Context(), &s3.ListMultipartUploadsInput{Bucket: aws.String(s.Bucket), Prefix: aws.String(prefix)})
	if err != nil {
		t.Fatalf("list multipart uploads under s3://%s/%s: %v", s.Bucket, prefix, err)
	}
	var keys []string
	for _, u := range out.Uploads {
		keys = append(keys, *u.Key)
	}
	return keys
}

// Get reads the object key; nil when there is none.
func (s *S3) Get(t testing.TB, key string) []byte {
	t.Helper()
	out, err := s.client.GetObjectWithContext(t.Context(), &s3.GetObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(key)})
	if err != nil {
		if strings.Contains(err.Error(), s3.ErrCodeNoSuchKey) {
			return nil
		}
		t.Fatalf("get s3://%s/%s: %v", s.Bucket, key, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	if err != nil {
		t.Fatalf("read s3://%s/%s: %v", s.Bucket, key, err)
	}
	return b
}

// Put writes b as the object key, as any writer of the bucket may.
func (s *S3) Put(t testing.TB, key string, b []byte) {
	t.Helper()
	_, err := s.client.PutObjectWithContext(t.Context(), &s3.PutObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(key), Body: bytes.NewReader(b),
		ContentLength: aws.Int64(int64(len(b)))})
	if err != nil {
		t.Fatalf("put s3://%s/%s: %v", s.Bucket, key, err)
	}
}

// BlobKey is the key of blob d's bytes in the bucket (distribution's layout
// under the driver's root).
func BlobKey(d string) string {
	algo, hex, _ := strings.Cut(d, ":")
	return "docker/registry/v2/blobs/" + algo + "/" + hex[:2] + "/" + hex + "/data"
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
