package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version is ringblk's release; the commit comes from the build
// (VersionLine). Keep it equal to plugin.Version.
const Version = "0.1.0-dev"

// Commit is the commit the binary was built from when the link stamped it
// (cmd/ringblk's main.commit, -ldflags "-X main.commit=…"); main sets it
// before running a command. Empty: the go command's VCS stamp is used.
var Commit string

// VersionLine is what --version prints: the release, the commit the
// binary was built from (with "-dirty" for uncommitted changes), and the
// Go release, from the build information the go command records.
func VersionLine() string {
	rev, dirty := Commit, ""
	goVersion := runtime.Version()
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if rev == "" {
					rev = s.Value
				}
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "-dirty"
				}
			}
		}
	}
	if rev == "" {
		rev = "unknown"
	}
	if len(rev) > 12 && rev != Commit {
		rev = rev[:12] // a full vcs.revision; a stamped commit is used as given
	}
	return fmt.Sprintf("ringblk version %s (commit %s%s, %s)", Version, rev, dirty, goVersion)
}
