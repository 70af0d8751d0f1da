// Package severity is the scale of vulnerability severities, Unknown to
// Critical, as the Harbor scanner adapter spec enumerates them
// (github.com/goharbor/pluggable-scanner-spec): its words are defined here,
// once.
//
// It is a package of its own because config and internal/scan both need the
// scale and internal/scan imports config: config parses a scan policy's
// threshold into a Level at load, from the lower-case words the
// configuration documents (UnmarshalText, UnmarshalYAML), and internal/scan
// parses the severities of scanner reports, in any case as adapters spell
// them (Parse), and compares them with that threshold. It decides nothing:
// what blocks an image is internal/scan's.
package severity
