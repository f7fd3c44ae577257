// Package invariants gates assertions that are too costly for hot paths in
// ordinary builds. `make test` builds with -tags invariants, and -race enables
// them too.
package invariants

import "fmt"

// Check panics with an "assertion failed" message when cond is false.
// Call it as `if invariants.Enabled { invariants.Check(x >= 0, "...") }`
// where the check costs something; cheap trust-boundary checks may call it
// unconditionally.
func Check(cond bool, format string, args ...any) {
	if !cond {
		panic("assertion failed: " + fmt.Sprintf(format, args...))
	}
}
