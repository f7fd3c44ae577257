package loader

import "runtime/debug"

// Compare exposes compare to the tests.
func Compare(path string, plugin, host *debug.BuildInfo) error { return compare(path, plugin, host) }
