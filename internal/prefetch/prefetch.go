// Package prefetch asks the CPU to start loading a cache line that the
// caller will read soon, without waiting for it: a cache miss that would
// stall a dependent load later overlaps with other work instead.
//
// The qcow2 read path uses it to fetch the L2 entries of a whole plugged
// batch of requests before mapping the first one (drivers/qcow2/batch.go):
// on random reads over a large image those entries are mostly not in any
// CPU cache, and one miss per request was the largest cost the driver
// added over the raw file.
package prefetch

// Line hints that the cache line holding addr will be read soon. It never
// faults, whatever addr is, and returns at once. On architectures without
// an implementation it does nothing.
//
// addr is a uintptr, not a pointer: the hint does not keep anything alive.
func Line(addr uintptr) { line(addr) }
