package main

// Storage drivers beyond filesystem and inmemory (which internal/proxy links):
// distribution's cloud drivers, selected by name in the config's storage section.
import (
	_ "github.com/distribution/distribution/v3/registry/storage/driver/azure"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/gcs"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"
)
