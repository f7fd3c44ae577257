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
//     flushMetadata) — what QEMU's flush of its L2 table cache does,
//     which writes the refcount blocks the tables depend on first;
//   - Refblocks: a second try of the refcount blocks left dirty alone,
//     then a sync of the file — QEMU's flush of its refcount block cache.
//     nil when it succeeded.
//
// Writing refcount blocks alone is always safe (R1: a refcount ahead of
// its pointer is a leak at worst). The error wraps WriteBack, so
// errors.Is finds its errno.
type CloseWriteBackError struct {
	WriteBack error
	Refblocks error
}

func (e *CloseWriteBackError) Error() string { return e.WriteBack.Error() }
func (e *CloseWriteBackError) Unwrap() error { return e.WriteBack }

// closeWriteBack is closeMetadata, with an I/O failure retried for the
// refcount blocks and reported as a *CloseWriteBackError. Other failures
// (a corrupt image, a refused write) are returned as they are.
// REQUIRES: metaLock held.
func (d metaIO) closeWriteBack(co *aio.Co) error {
	err := d.closeMetadata(co, nil)
	var en syscall.Errno
	if err == nil || !errors.As(err, &en) {
		return err
	}
	return &CloseWriteBackError{WriteBack: err, Refblocks: d.retryRefblocks(co)}
}

// retryRefblocks writes every dirty refcount block (lazy mode or not: the
// image is closing) and syncs the file. REQUIRES: metaLock held.
func (d metaIO) retryRefblocks(co *aio.Co) error {
	d.mu.Lock()
	var rbs []int64
	for off, b := range d.mu.rb {
		if b.dirty {
			rbs = append(rbs, off)
		}
	}
	d.mu.Unlock()
	slices.Sort(rbs)
	for _, off := range rbs {
		d.mu.Lock()
		b := d.mu.rb[off]
		d.mu.Unlock()
		d.event(block.DbgRefblockUpdatePart)
		if err := d.writeMeta(co, nil, b.buf, off); err != nil {
			return err
		}
	}
	if err := d.fileSync(co, nil); err != nil {
		return err
	}
	d.mu.Lock()
	for _, off := range rbs {
		d.mu.rb[off].dirty = false
	}
	d.mu.Unlock()
	return nil
}
