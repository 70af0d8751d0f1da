package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/s3"
)

// SeaweedFSVersion is the version of SeaweedFS's weed command the S3 tests
// run: scripts/test builds it from its Go module (docs/scaling.md says why
// SeaweedFS).
const SeaweedFSVersion = "v0.0.0-20261109003541-7506e5f91cd6"

// S3 is one bucket of an S3-compatible server on 127.0.0.1, with one
// identity allowed everything on it. The server is SeaweedFS's `weed server
// -s3` (master, volume server, filer and S3 gateway in one process), one per
// test binary: started by the first StartS3, it serves every later test a
// bucket of its own, and is stopped by StopS3 (a package's TestMain) or,
// at the latest, with the test binary.
type S3 struct {
	Endpoint  string // http://127.0.0.1:port of the S3 API
	Bucket    string
	AccessKey string
	SecretKey string
	Region    string

	client *s3.S3
}

// The credentials and region of the shared server's one identity.
const (
	s3AccessKey = "trustproxy-test"
	s3SecretKey = "trustproxy-test-secret-key"
	s3Region    = "us-east-1"
)

// weed is the test binary's SeaweedFS server, started once: starting one
// takes about 12 s on 2 shared cores, a new bucket on it a fraction of that.
var weed struct {
	once    sync.Once
	srv     *weedServer
	err     error
	buckets atomic.Int64 // buckets made, for unique names
}

type weedServer struct {
	endpoint string
	dir      string // its data, identities and log; removed by StopS3
	cmd      *exec.Cmd
	client   *s3.S3
}

// StartS3 makes a new, empty bucket for t on the test binary's weed server,
// starting the server first if no test has yet. weed is looked up on PATH,
// or in GOBIN or GOPATH's bin; a missing one fails t, naming the command
// that builds it. The bucket is emptied and deleted at t.Cleanup.
func StartS3(t testing.TB) *S3 {
	t.Helper()
	bin := lookWeed()
	if bin == "" {
		t.Fatalf("weed (SeaweedFS, the S3 server of the object storage tests) is not on PATH nor in GOBIN or GOPATH/bin: run scripts/test, which builds it, "+
			"or build it yourself: go mod download github.com/seaweedfs/seaweedfs@%[1]s && cd \"$(go env GOMODCACHE)/github.com/seaweedfs/seaweedfs@%[1]s\" && go build -o \"$(go env GOPATH)/bin/weed\" ./weed",
			SeaweedFSVersion)
	}
	weed.once.Do(func() {
		begin := time.Now()
		weed.srv, weed.err = startWeed(bin)
		if weed.err == nil {
			t.Logf("weed server -s3 on %s took writes %s after it started", weed.srv.endpoint, time.Since(begin).Round(time.Millisecond))
		}
	})
	if weed.err != nil {
		t.Fatal(weed.err)
	}
	srv := weed.srv
	s := &S3{Endpoint: srv.endpoint, Bucket: fmt.Sprintf("trustproxy-%d", weed.buckets.Add(1)), AccessKey: s3AccessKey, SecretKey: s3SecretKey, Region: s3Region, client: srv.client}
	if err := srv.ready(t.Context(), s.Bucket); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.remove(context.Background()); err != nil {
			t.Logf("remove bucket %s: %v", s.Bucket, err)
		}
	})
	return s
}

// StopS3 stops the test binary's weed server, if one started, and removes
// its data. A TestMain calls it after m.Run; without it the server dies
// with the test binary (its parent-death signal) and leaves its data in
// the temporary directory.
func StopS3() {
	if srv := weed.srv; srv != nil {
		_ = srv.cmd.Process.Kill()
		_ = srv.cmd.Wait()
		_ = os.RemoveAll(srv.dir)
	}
}

// startWeed starts bin as `weed server -s3` on free ports of 127.0.0.1,
// with its data in a new temporary directory, and waits until its S3 gateway
// answers.
func startWeed(bin string) (_ *weedServer, err error) {
	dir, err := os.MkdirTemp("", "trustproxy-weed-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(dir)
		}
	}()
	identities := map[string]any{"identities": []any{map[string]any{
		"name":        "trustproxy",
		"credentials": []any{map[string]string{"accessKey": s3AccessKey, "secretKey": s3SecretKey}},
		"actions":     []string{"Admin", "Read", "List", "Tagging", "Write"},
	}}}
	cfg, _ := json.Marshal(identities)
	cfgFile := filepath.Join(dir, "s3.json")
	if err := os.WriteFile(cfgFile, cfg, 0o600); err != nil {
		return nil, err
	}
	ports := make([]string, 8)
	for i := range ports {
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		_, ports[i], _ = net.SplitHostPort(addr)
	}
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, err
	}
	srv := &weedServer{endpoint: "http://127.0.0.1:" + ports[6], dir: dir}
	// Every bucket is a collection of its own, given volumes as it is
	// first written: volume.max bounds how many buckets hold data at once
	// (each test deletes its bucket, and the collection's volumes, at its
	// end).
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
		return nil, err
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Dir = dir
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start weed: %w", err)
	}
	srv.cmd = cmd
	defer func() {
		if err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()
	sess, err := session.NewSession(&aws.Config{
		Endpoint:         aws.String(srv.endpoint),
		Region:           aws.String(s3Region),
		Credentials:      credentials.NewStaticCredentials(s3AccessKey, s3SecretKey, ""),
		S3ForcePathStyle: aws.Bool(true),
		DisableSSL:       aws.Bool(true),
		HTTPClient:       &http.Client{Timeout: 10 * time.Second},
	})
	if err != nil {
		return nil, err
	}
	srv.client = s3.New(sess)
	// The S3 gateway answers once the master, a volume server and the
	// filer are up.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := srv.ready(ctx, "trustproxy-ready"); err != nil {
		return nil, err
	}
	_, _ = srv.client.DeleteBucketWithContext(ctx, &s3.DeleteBucketInput{Bucket: aws.String("trustproxy-ready")})
	return srv, nil
}

// ready creates bucket and waits until it takes a write: a new bucket's
// first write waits for volumes to be grown for it.
func (srv *weedServer) ready(ctx context.Context, bucket string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	retry := func(what string, op func() error) error {
		for {
			err := op()
			if err == nil {
				return nil
			}
			select {
			case <-ctx.Done():
				b, _ := os.ReadFile(filepath.Join(srv.dir, "weed.log"))
				return fmt.Errorf("weed's S3 gateway on %s: %s: %w\n%s", srv.endpoint, what, err, tail(b, 4000))
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	if err := retry("create bucket "+bucket, func() error {
		_, err := srv.client.CreateBucketWithContext(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)})
		return err
	}); err != nil {
		return err
	}
	key := aws.String("ready")
	if err := retry("a first write to bucket "+bucket, func() error {
		_, err := srv.client.PutObjectWithContext(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: key, Body: bytes.NewReader([]byte("ok"))})
		return err
	}); err != nil {
		return err
	}
	_, err := srv.client.DeleteObjectWithContext(ctx, &s3.DeleteObjectInput{Bucket: aws.String(bucket), Key: key})
	return err
}

// remove aborts the bucket's multipart uploads, deletes its objects and
// then the bucket (and with it its collection's volumes).
func (s *S3) remove(ctx context.Context) error {
	b := aws.String(s.Bucket)
	ups, err := s.client.ListMultipartUploadsWithContext(ctx, &s3.ListMultipartUploadsInput{Bucket: b})
	if err != nil {
		return err
	}
	for _, u := range ups.Uploads {
		if _, err := s.client.AbortMultipartUploadWithContext(ctx, &s3.AbortMultipartUploadInput{Bucket: b, Key: u.Key, UploadId: u.UploadId}); err != nil {
			return err
		}
	}
	var errs []error
	err = s.client.ListObjectsV2PagesWithContext(ctx, &s3.ListObjectsV2Input{Bucket: b}, func(p *s3.ListObjectsV2Output, _ bool) bool {
		for _, o := range p.Contents {
			if _, err := s.client.DeleteObjectWithContext(ctx, &s3.DeleteObjectInput{Bucket: b, Key: o.Key}); err != nil {
				errs = append(errs, err)
			}
		}
		return true
	})
	if err = errors.Join(append(errs, err)...); err != nil {
		return err
	}
	_, err = s.client.DeleteBucketWithContext(ctx, &s3.DeleteBucketInput{Bucket: b})
	return err
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

// UploadedParts counts the parts uploaded to the multipart uploads in
// progress under prefix.
func (s *S3) UploadedParts(t testing.TB, prefix string) int {
	t.Helper()
	out, err := s.client.ListMultipartUploadsWithContext(t.Context(), &s3.ListMultipartUploadsInput{Bucket: aws.String(s.Bucket), Prefix: aws.String(prefix)})
	if err != nil {
		t.Fatalf("list multipart uploads under s3://%s/%s: %v", s.Bucket, prefix, err)
	}
	n := 0
	for _, u := range out.Uploads {
		parts, err := s.client.ListPartsWithContext(t.Context(), &s3.ListPartsInput{Bucket: aws.String(s.Bucket), Key: u.Key, UploadId: u.UploadId})
		if err != nil {
			t.Fatalf("list parts of s3://%s/%s: %v", s.Bucket, *u.Key, err)
		}
		n += len(parts.Parts)
	}
	return n
}

// LeftUploads lists the uploads left in the bucket: the keys of objects
// under a repository's _uploads (an upload's startedat), and of multipart
// uploads in progress (an upload's data, until it is committed or aborted).
func (s *S3) LeftUploads(t testing.TB) []string {
	t.Helper()
	var left []string
	for _, k := range s.Keys(t, "docker/registry/v2/repositories/") {
		if strings.Contains(k, "/_uploads/") {
			left = append(left, k)
		}
	}
	return append(left, s.Uploads(t, "docker/")...)
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
