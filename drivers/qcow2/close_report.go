package qcow2

import (
	"errors"
	"slices"
	"syscall"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
)

// CloseWriteBackError is a close whose metadata write-back failed with an
// I/O error. It reports the failure in the two steps QEMU's qcow2 close
// reports it (qemu-io prints one line for each that failed, iotest 026):
//
//   - WriteBack: the ordered write-back of everything dirty (refcount
//     blocks, table entries, L2 tables, L1 entries, each stage synced:
//     flushMetadata), then a sync of the file — what QEMU's flush of its
//     L2 table cache does, which writes the refcount blocks the tables
//     depend on first;
//   - Retry: a second try of the same write-back and sync, in QEMU's
//     place of its refcount block cache flush. nil when it succeeded: a
//     transient error loses nothing (QEMU retries only its refcount
//     blocks; retrying everything keeps more, and every stage keeps the
//     crash-ordering rules, so a second try is as safe as the first).
//
// The error wraps WriteBack, so errors.Is finds its errno.
type CloseWriteBackError struct {
	WriteBack error
	Retry     error
}

func (e *CloseWriteBackError) Error() string { return e.WriteBack.Error() }
func (e *CloseWriteBackError) Unwrap() error { return e.WriteBack }

// closeWriteBack is closeMetadata, with an I/O failure retried once and
// reported as a *CloseWriteBackError. Other failures (a corrupt image, a
// refused write) are returned as they are. REQUIRES: metaLock held.
func (d metaIO) closeWriteBack(co *aio.Co) error {
	err := d.closeMetadata(co, nil)
	d.mu.Lock()
	resync := err == nil && d.mu.failedWrite && d.mu.corruptErr == nil
	d.mu.Unlock()
	if resync {
		// A write failed since the last sync and nothing synced since:
		// what reached the file is unknown, so the close syncs it and
		// reports a failure (QEMU's close flushes the file whenever it
		// was written since its last flush).
		err = d.fileSync(co, nil)
	}
	var en syscall.Errno
	if err == nil || !errors.As(err, &en) {
		return err
	}
	rerr := d.closeMetadata(co, nil)
	if rerr == nil {
		rerr = d.fileSync(co, nil)
	}
	return &CloseWriteBackError{WriteBack: err, Retry: rerr}
}

// Debug events of metadata write-back where it differs from QEMU's
// timing: QEMU writes a new L2 table and a new refcount block inside the
// request that allocated it; this driver writes them at the next flush
// (stages A and C), and raises QEMU's events right before those writes,
// so an error injected on them fails the flush that writes them (in
// qemu-io's writethrough mode, the write itself).

// refcountUpdateEvents: a refcount changes in an existing block (QEMU's
// alloc_refcount_block, which finds the block and loads it).
// Either lock state: it only calls the filter.
func (d metaIO) refcountUpdateEvents() {
	d.event(block.DbgRefblockAlloc)
	d.event(block.DbgRefblockLoad)
}

// refblockWriteEvents: refcount block b is about to be written; a new one
// raises refblock_alloc_write first (QEMU writes a new block right after
// creating it).
func (d metaIO) refblockWriteEvents(b *refBlock) {
	d.mu.Lock()
	fresh := b.fresh
	d.mu.Unlock()
	if fresh {
		d.event(block.DbgRefblockAllocWrite)
	}
	d.event(block.DbgRefblockUpdatePart)
}

// l2WriteEvents: the L2 table at off is about to be written; one
// allocated since the last stage C raises l2_alloc_write first (QEMU's
// l2_allocate before it writes the new table). REQUIRES: metaLock held.
func (d metaIO) l2WriteEvents(off int64) {
	d.mu.Lock()
	fresh := slices.Contains(d.mu.newL2, off)
	d.mu.Unlock()
	if fresh {
		d.event(block.DbgL2AllocWrite)
	}
	d.event(block.DbgL2Update)
}

// noteFailedWrite records that a write or flush of the file failed (error
// paths only); noteSynced that a sync of the file succeeded since.
func (d *Driver) noteFailedWrite() {
	d.mu.Lock()
	d.mu.failedWrite = true
	d.mu.Unlock()
}

func (d *Driver) noteSynced() {
	d.mu.Lock()
	d.mu.failedWrite = false
	d.mu.Unlock()
}
