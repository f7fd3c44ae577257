package qcow2

// The driver's methods are grouped by what they do, each group a type
// over the one *Driver (docs/design/qcow2-metadata.md). The groups form a
// chain, each able to call the ones below it (the embedded value) and the
// Driver's core, never the ones above:
//
//	Driver       the block.Driver API, open/close, the published view and
//	             I/O epochs, child I/O helpers
//	metaIO       the metadata object's operations: L2 tier-1 loads and
//	             pins, allocation and refcounts, the ordered flush (R12),
//	             lazy refcounts, damage, overlap checks (R5), invariants
//	reader       the read path: lock-free fast path, locked mapping, the
//	             coroutine slow path, batching
//	writer       the write path: in place, allocating (R4, R8, R11), zero
//	             writes and discards, subclusters, compressed writes
//	snapshotOps  internal snapshots (create, apply, delete; R7)
//	maintOps     amend, check and repair, resize (above snapshotOps:
//	             amend rewrites the snapshot table)
//
// Ownership: every group works on the Driver's state under the Driver's
// rules — in-memory metadata under Driver.mu, changes of it under
// metaLock (a coroutine mutex held across metadata I/O), the fast paths'
// inputs through atomics (fast.go). A group value is the *Driver and
// nothing else; making one costs a pointer copy.

type metaIO struct{ *Driver }

type reader struct{ metaIO }

type writer struct{ reader }

type snapshotOps struct{ writer }

type maintOps struct{ snapshotOps }

func metaOf(d *Driver) metaIO      { return metaIO{d} }
func readerOf(d *Driver) reader    { return reader{metaIO{d}} }
func writerOf(d *Driver) writer    { return writer{reader{metaIO{d}}} }
func snapOf(d *Driver) snapshotOps { return snapshotOps{writerOf(d)} }
func maintOf(d *Driver) maintOps   { return maintOps{snapOf(d)} }
