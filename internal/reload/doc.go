// Package reload decides when trustproxy takes a new configuration while it
// runs, and what of it: on SIGHUP, and when the configuration file or a
// file it names (signer keys, CA bundles, secrets) changes, the file is
// loaded and validated whole (config.LoadFile); an invalid one is refused
// with the error naming the field, and the running configuration stays.
// A valid one is applied at once to the requests that arrive from then on,
// except the settings that need a restart (config.Config.RestartNeeded),
// which keep their running values and are logged. Each replica reloads its
// own file; the configuration's fingerprint (a hash of the file and of every
// file it names) is on /readyz and in trustproxy_config_info, so that an
// operator sees when every replica runs the same one.
package reload
