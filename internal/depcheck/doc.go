// Package depcheck holds the test that pins which of trustproxy's packages
// may import which: the layers of docs/ARCHITECTURE.md, checked on every
// test run. It has no code.
package depcheck
