package qemuio

import "github.com/ringblk/ringblk/block"

// Write-through cache modes. In QEMU, cache=writethrough (and directsync)
// turns the device's write cache off: the block backend flushes the whole
// node after every write it completes, so a format driver's metadata
// (qcow2's L2 tables and, without lazy refcounts, its refcount blocks) is
// durable when the write returns, not only the data. The file's O_DSYNC
// (drivers/raw) covers the data alone; qemu-io's write commands add FUA,
// which ringblk's format drivers honour with the same metadata flush (a
// compressed write is followed by a flush instead). Crash tests that kill
// qemu-io after a write (iotest 039) rely on it.

// writeThrough reports whether the session's cache mode flushes after
// every write.
func (s *ioSession) writeThrough() bool {
	return s.bo.Cache == "writethrough" || s.bo.Cache == "directsync"
}

// writeThroughFlags is block.FUA in a write-through cache mode.
func (s *ioSession) writeThroughFlags() block.Flags {
	if s.writeThrough() {
		return block.FUA
	}
	return 0
}
