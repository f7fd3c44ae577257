package qcow2

import (
	"errors"
	"slices"
	"syscall"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
)

// CloseWriteBackError is a close whose metadata write-back failed with an
// I/O error and kept failing when tried again. A close makes up to three
// tries of the ordered write-back (every stage of flushMetadata in order,
// then a sync of the file), in the three places QEMU's qcow2 close
// flushes: the block layer's flush before closing (its error is not
// reported: when a later try succeeds, nothing was lost and the close
// succeeds), then its L2 table cache flush (WriteBack) and its refcount
// block cache flush (Retry: nil when that try succeeded). qemu-io prints
// one line for each of the last two that failed (iotest 026). Every try
// keeps the crash-ordering rules, so trying again is as safe as the
// first try, and a transient error loses nothing. The error wraps
// WriteBack, so errors.Is finds its errno.
type CloseWriteBackError struct {
	WriteBack error
	Retry     error
}

func (e *CloseWriteBackError) Error() string { return e.WriteBack.Error() }
func (e *CloseWriteBackError) Unwrap() error { return e.WriteBack }

// closeWriteBack is closeMetadata, tried again after an I/O failure as
// CloseWriteBackError describes. Other failures (a corrupt image, a
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
	if !isIOErr(err) {
		return err
	}
	try := func() error {
		if err := d.closeMetadata(co, nil); err != nil {
			return err
		}
		return d.fileSync(co, nil)
	}
	werr := try()
	if !isIOErr(werr) {
		return werr // written after all (or a failure of another kind)
	}
	return &CloseWriteBackError{WriteBack: werr, Retry: try()}
}

func isIOErr(err error) bool {
	var en syscall.Errno
	return err != nil && errors.As(err, &en)
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
