// Package invariants is the module's one assertion idiom: a condition
// tested inline, and a cold, formatted failure called only when it fails.
//
//	if invariants.Enabled && n.inFlight.load() != 0 {
//		invariants.Failf("block: node %s busy after drain-all", n.name)
//	}
//
// Enabled is a constant: false in ordinary builds, true with -tags
// invariants (as `make test` builds) or -race, so a guarded check compiles
// away where it would cost on a hot path. A check that is one compare and
// guards against misuse by a caller (drained end without begin, a request
// released twice) leaves out Enabled and runs in every build.
//
// Failf is never inlined and does the formatting; the arguments are
// converted to interfaces (boxed) only inside the failing branch, so a
// passing check costs the compare and nothing else. Never pass arguments
// to a function that formats before the condition is known to fail.
package invariants

import "fmt"

// Prefix starts every assertion panic, so tests and operators can tell a
// broken invariant from an operating error.
const Prefix = "assertion failed: "

// Failf panics with Prefix and the formatted message. Call it only on the
// failing branch of a check (see the package comment).
//
//go:noinline
func Failf(format string, args ...any) {
	panic(Prefix + fmt.Sprintf(format, args...))
}
