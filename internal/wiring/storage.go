package wiring

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/distribution/distribution/v3/registry/storage"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"

	"github.com/trustproxy/trustproxy/config"
	"github.com/trustproxy/trustproxy/internal/fill"

	// The drivers every build has; cmd/trustproxy links the cloud ones.
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
)

// newDriver opens the distribution storage driver cfg names, with its
// parameters (config validation ensured exactly one).
func newDriver(ctx context.Context, cfg map[string]map[string]any) (storagedriver.StorageDriver, error) {
	for name, params := range cfg {
		d, err := factory.Create(ctx, name, params)
		if err != nil {
			return nil, fmt.Errorf("storage driver %s: %w", name, err)
		}
		return d, nil
	}
	return nil, errors.New("storage: no driver configured")
}

// repositoriesRoot is where distribution keeps repositories, and under
// each its _uploads; PurgeUploads walks it.
const repositoriesRoot = "/docker/registry/v2/repositories"

// staleUploadAge is the age past which an upload belongs to no live fill.
// distribution dates an upload by its startedat file, written when the fill
// began, not by its last write (as spool files are dated), so the bound is
// the longest a fill may run: its deadline for a blob of unknown size.
// Another process sharing the storage may be filling younger ones.
func staleUploadAge(lim config.Limits) time.Duration {
	return max(2*lim.BlobIdleTimeout, fill.Budget(-1, lim))
}

// purgeUploads deletes the uploads under d started more than age ago. A
// fill writes through a distribution blob writer, which cancels its upload
// when the fill fails or is cancelled; only a process killed mid-fill leaves
// one behind. Failures are logged: the uploads stay until the next start.
func purgeUploads(ctx context.Context, d storagedriver.StorageDriver, age time.Duration, log *slog.Logger) {
	if _, err := d.Stat(ctx, repositoriesRoot); err != nil {
		if !errors.As(err, &storagedriver.PathNotFoundError{}) {
			log.Warn("cannot purge stale uploads", "err", err)
		}
		return // new storage: nothing to purge
	}
	deleted, errs := storage.PurgeUploads(ctx, d, time.Now().Add(-age), true)
	if d.Name() == s3Driver {
		for _, dir := range deleted {
			if err := abortMultipart(ctx, d, dir+"/data"); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		log.Warn("cannot purge every stale upload", "removed", len(deleted), "err", errors.Join(errs...))
		return
	}
	log.Info("stale uploads purged", "removed", len(deleted), "older_than", age)
}

// s3Driver is the name distribution's s3 driver gives itself (Name).
const s3Driver = "s3aws"

// abortMultipart aborts the multipart uploads in progress at path. On S3 an
// upload's data is a multipart upload until it is committed, not an
// object: PurgeUploads deletes the upload's directory (its startedat and
// hash states) and leaves the parts, which the bucket keeps, and bills,
// until they are aborted. Opening path to append finds such an upload,
// and cancelling that writer aborts it; once none is left, opening fails
// with PathNotFoundError.
func abortMultipart(ctx context.Context, d storagedriver.StorageDriver, path string) error {
	for range 8 { // one upload per fill; a few more if a writer was restarted
		w, err := d.Writer(ctx, path, true)
		if errors.As(err, &storagedriver.PathNotFoundError{}) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("find the multipart upload of %s: %w", path, err)
		}
		if err := w.Cancel(ctx); err != nil {
			return fmt.Errorf("abort the multipart upload of %s: %w", path, err)
		}
	}
	return fmt.Errorf("multipart uploads of %s still in progress after 8 aborts; abort them with the bucket's tools", path)
}
