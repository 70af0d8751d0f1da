// Package fill decides how one cold blob is fetched once, hashed,
// committed and streamed to every client that asks for it meanwhile, on
// this replica and, through the fill locks on Redis, on the others.
//
// It is handed a blob already decided on: its repository, its verified
// digest and (when a verified manifest lists it) its length, the upstream it
// comes from and the storage it goes to. It never decides whether a blob may
// be served. What it finds wrong it returns as its own errors, which the
// proxy turns into refusals: *MismatchError (the bytes are not the blob),
// *AbortedError (the client got part of a body that then failed),
// ErrClientGone, ErrClosing. A client never holds a complete blob that did
// not verify, and nothing is committed unless it verified.
package fill
