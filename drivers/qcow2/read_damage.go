package qcow2

import (
	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Reads that meet an L2 entry QEMU treats as corruption at run time (an
// invalid extended-L2 subcluster bitmap, an unaligned data cluster
// offset; format.IsL2EntryCorruption). QEMU's read path then marks a
// writable image corrupt (the header's corrupt bit, every later request
// fails) and a read-only one only reports it, once ("Image is corrupt",
// non-fatal); the read fails with EIO either way (iotests 271, 060).
// Other decode errors fail the read as before: QEMU's I/O paths do not
// look at reserved bits or offsets past the end of the file.

// readDamage turns err, the error a guest read met mapping its range, into
// that corruption event. Other errors pass through. It runs in the read's
// coroutine with no lock held: marking takes metaLock and writes the
// header (markDamaged flushes the metadata of earlier writes first, as for
// a write that meets damage).
func (d reader) readDamage(co *aio.Co, err error) error {
	if err == nil || !format.IsL2EntryCorruption(err) {
		return err
	}
	cause := format.ReadPath(err)
	if d.readOnly {
		d.mu.Lock()
		first := !d.mu.nonFatalSignaled && d.mu.corruptErr == nil
		d.mu.nonFatalSignaled = true
		d.mu.Unlock()
		if first {
			reportNonFatalCorruption(cause)
		}
		return err
	}
	d.metaLock.lock(co)
	defer d.metaLock.unlock()
	return d.markDamaged(co, cause, true)
}

// failRead completes r with err, a mapping error met under mu; the
// corruption event (readDamage) needs a coroutine. A separate function,
// so that the read path's own closure captures nothing more (the hot
// path stays allocation-free).
func (d reader) failRead(r *block.Request, err error) {
	if !format.IsL2EntryCorruption(err) {
		r.Complete(d.formatErr(block.OpRead, r.Off, err))
		return
	}
	r.Context().Go(func(co *aio.Co) {
		r.CompleteLater(d.formatErr(block.OpRead, r.Off, d.readDamage(co, err)))
	})
}
