//go:build invariants || race

package invariants

// Enabled is true in builds with the invariants or race tag. Checks that cost
// on hot paths are guarded by it, so the branch compiles away otherwise.
const Enabled = true
