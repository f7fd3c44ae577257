package qcow2

// Read-write images whose header, active L1 table or refcount table has
// refcount 0 (format/untrusted.go, qcow2.md §3.2 row 10): opened, with
// every allocation refused. The first refused allocation marks the image
// corrupt (markDamaged: corrupt bit, QEMU's "Marking image as corrupt"
// line, EIO), as QEMU's overlap check does when its allocator hands out
// that metadata; nothing is written over it. check -r all rebuilds the
// refcounts, and the reload after it clears the state.

import (
	"errors"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// untrustedOf runs the refcount check ReadImage deferred on im (a
// read-write open, the reload after a repair): the value for
// mu.untrusted, or an I/O error. It reads refcount blocks: call it
// without mu held.
func (d *Driver) untrustedOf(im *format.Image) (untrusted, err error) {
	if d.readOnly {
		return nil, nil
	}
	err = im.CheckMetadataRefcounts()
	if errors.Is(err, format.ErrCorrupt) {
		return err, nil
	}
	return nil, err
}

// refuseUntrustedAlloc fails an allocation for purpose (format.
// AllocL2Table or "") while the refcounts cannot be trusted; nil
// otherwise. REQUIRES: metaLock held.
func (d metaIO) refuseUntrustedAlloc(co *aio.Co, purpose string) error {
	d.mu.Lock()
	cause := d.mu.untrusted
	d.mu.Unlock()
	if cause == nil {
		return nil
	}
	// No flush first: this can run inside one (allocCluster).
	return d.markDamaged(co, &format.UntrustedAllocError{Purpose: purpose, Cause: cause}, false)
}
