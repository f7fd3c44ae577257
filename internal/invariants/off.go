//go:build !invariants && !race

package invariants

// Enabled is false in ordinary builds; see on.go.
const Enabled = false
