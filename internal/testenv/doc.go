// Package testenv starts real components on 127.0.0.1 for trustproxy's tests, and stops
// them with t.Cleanup. Nothing in it is a mock of trustproxy's own code.
//
//   - NewRegistry: a distribution v3 registry (registry/handlers with the filesystem driver in a temporary folder)
//     in-process behind an httptest server, as the upstream. It counts requests and the
//     blob bytes it sends (BlobBytes), can be given a Fault (CorruptBody, Truncate, Delay) and can be stopped mid-test.
//     With TokenAuth it wants tokens (auth: token), and Push gets them.
//   - NewTokenServer: a registry token service (Docker token spec, JWTs distribution and
//     notary-server verify), a fake of an outside party: users, anonymous pulls for some
//     repositories, short lifetimes, counted requests, SetDown. Challenge is a Fault
//     naming a realm of the test's choosing; NewCapture records whatever reaches an
//     address (nothing should); NewCredentialHelper and DockerConfig are a docker
//     credential helper (a shell script on PATH) and a docker config.json.
//   - Image, ImageFor, Index: deterministic Docker schema2 images and manifest lists that
//     dockerd can pull, made with go-containerregistry; OCIImage, OCIIndex: OCI images
//     (one random layer) and image indexes; RawImage, RawImageFor: images whose layers
//     are raw pseudo-random bytes, cheap to make at any size, for pulls that check digests.
//   - StartNotary: /usr/bin/notary-server as a subprocess (memory storage, local signer,
//     TLS from a CA made in t.TempDir()), behind a TLS front whose URL clients use. The
//     front counts requests, can Replay a Recording of older metadata and can be SetDown.
//     With NotaryTokenAuth, notary-server wants tokens, and testenv's signing gets them.
//   - Notary.Init, AddDelegation, Sign: publish trust data with the notary CLI, straight to
//     notary-server, with keys from NewKey. Notary.Publish does a whole repository (root,
//     targets, a Releases delegation, its tags) with the notary client library in tens of
//     milliseconds, for tests and benchmarks that need many.
//   - NewTUFRepo: a TUF repository made with notary's testutils, and a TUFServer serving
//     notary's read API from whatever the test makes of it (swizzled metadata, overrides
//     per role, basic auth): states notary-server never serves. It counts requests by role.
//   - StartRedis, StartRedisTLS: redis-server as a subprocess; NewDeployment: what the
//     replicas of one deployment share on it (the Redis, a storage directory, the state
//     key), and the YAML that says so. StartSentinel (a master, two replicas, three
//     Sentinels) and StartCluster (three masters, a replica each), with
//     NewSentinelDeployment and NewClusterDeployment: Redis with failover, tuned to fail
//     over within seconds of a node's SIGKILL (Redis.Kill; Pause and Resume stop and
//     continue a node with SIGSTOP and SIGCONT).
//   - StartS3: a bucket of its own for each test on one SeaweedFS server per test binary
//     (`weed server -s3`, built by scripts/test), started by the first test that asks and
//     stopped by StopS3 in the package's TestMain.
//   - StartScanner: a Harbor scanner adapter (API v1.2) with canned reports, the one
//     fake: a real scanner needs its vulnerability database. Like Trivy's adapter it
//     pulls the manifest and config it scans from the scan request's registry, with the
//     request's authorization, and fails the scan when that pull fails.
//   - PeakRSS: a process's peak resident set (VmHWM), for tests that run trustproxy
//     processes and report their memory.
//   - Throttle: a TCP relay on 127.0.0.1 that passes a server's answers at a bounded rate,
//     so that a blob takes seconds to arrive.
//   - StartDockerd, StartDockerdConfig: a private dockerd (its own roots, socket and
//     daemon.json) and the docker CLI against it. StartContainerd: a standalone containerd
//     with a config.toml of the test's, for ctr and for its CRI plugin (CRIPull makes the
//     PullImage call a kubelet makes).
//   - DocBlocks, Snippet: the fenced code blocks of a Markdown document and the one marked
//     <!-- snippet: NAME -->, placeholders substituted, so that tests run what a document
//     tells users to run.
//   - Golden: compares a test's output with its testdata/*.golden file; -update (registered
//     here, once) rewrites the file.
//
// It needs the Debian packages notary (notary, notary-server) installed, and docker.io and
// containerd for the daemons:
//
//	apt-get install -y notary docker.io containerd
//
// A missing binary fails the test with that hint. The registry and notary client log
// through logrus' standard logger, which the package silences.
package testenv
