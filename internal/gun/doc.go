// Package gun names a repository as Docker Content Trust does: the
// configured upstream it is pulled from, then its path there
// (docker.io/library/alpine). A Name is built once, where a request is
// routed to its upstream, and handed on whole: no one splits a GUN again to
// find its upstream. Name.StorageName is the one name the repository has
// in trustproxy's storage.
package gun
