// Package sample builds small, valid, reproducible container images: the
// demo's and the tests'. Images are Docker schema2 with gzip layers and a
// config that dockerd accepts; equal seeds give equal digests.
package sample
