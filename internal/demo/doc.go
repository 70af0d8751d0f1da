// Package demo sets up trustproxy's self-contained demo: an in-process
// upstream registry holding a signed and an unsigned image, and an in-process
// Notary read API serving their trust data, signed with the notary library.
// It needs no internet and no other program.
package demo
