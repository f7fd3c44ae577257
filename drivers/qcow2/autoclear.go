package qcow2

import (
	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// clearUnknownAutoclear clears the autoclear bits this package does not
// know (R10) with a synced 8-byte header write. A write clears them
// before it starts (prepareWrite); a repair clears them too, so
// `check -r` leaves a header whose every autoclear bit is vouched for, as
// qemu-img's read-write open does (iotest 036). Known bits (bitmaps,
// raw external data) are left to their owners. REQUIRES: metaLock held.
func (d maintOps) clearUnknownAutoclear(co *aio.Co, r *block.Request) error {
	d.mu.Lock()
	v3 := d.mu.hdr.Version >= 3
	old := d.mu.hdr.AutoclearFeatures
	d.mu.Unlock()
	v := old & format.AutoclearKnown
	if !v3 || v == old {
		return nil
	}
	var b [8]byte
	putU64(b[:], v)
	if err := d.fileWrite(co, r, b[:], 88); err != nil {
		return err
	}
	if err := d.fileSync(co, r); err != nil {
		return err
	}
	d.mu.Lock()
	d.mu.hdr.AutoclearFeatures = v
	d.mu.Unlock()
	return nil
}
