package qcow2

import (
	"errors"
	"fmt"
	"slices"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Degraded open (docs/design/qcow2-repair.md, "Degraded open"). An image
// whose active L1 table or refcount table has damaged entries (reserved
// bits, an unaligned offset, a table or block past the end of the file,
// as in a truncated copy) opens anyway, as in QEMU, so that check can
// report and repair it and the undamaged part can be read:
//
//   - a read of a guest range whose L1 entry is damaged fails (ErrCorrupt,
//     naming the entry); reads elsewhere work;
//   - a write or write-zeroes/discard whose range has a damaged L1 entry,
//     and any allocation or free that needs a refcount block through a
//     damaged refcount table entry, marks the image corrupt (the header's
//     corrupt bit, on version 3) and fails; from then on every request
//     fails, as after an overlap-check hit;
//   - a write that meets a damaged L2 entry (damagedWriteErr) marks the
//     image corrupt too (L2 tables are not read at open);
//   - snapshot operations and amend refuse to run on a damaged image;
//   - the damaged entries are never followed: nothing reads or writes at
//     their offsets and the file never grows to reach them.
//
// The set of damaged entries is fixed at open (and after a repair): an
// entry past the end of the file stays damaged when later allocations
// grow the file past its offset.

// setDamage records im's damaged entries. REQUIRES: mu held, or the
// driver not yet shared (Open).
func (d *Driver) setDamage(im *format.Image) {
	d.mu.damageTargets = nil
	if im.DamagedL1.Len() == 0 && im.DamagedRT.Len() == 0 {
		d.mu.damage = nil
		return
	}
	// The clusters the damaged entries point into are never allocated:
	// once the file grew over one, a later open would take the entry as
	// valid and read whatever was put there as a table.
	d.mu.damageTargets = make(map[int64]struct{})
	cs := im.Geometry.ClusterSize()
	target := func(off uint64) {
		if o := int64(off) &^ (cs - 1); o > 0 {
			d.mu.damageTargets[o] = struct{}{}
		}
	}
	for i, e := range im.L1 {
		if im.DamagedL1.Has(int64(i)) {
			target(e & format.OffsetMask)
		}
	}
	for i, e := range im.RefcountTable {
		if im.DamagedRT.Has(int64(i)) {
			target(e &^ format.ReftableReserved)
		}
	}
	// A copy, for messages: the driver's tables change, the damaged
	// entries in the copy do not.
	d.mu.damage = &format.Image{Header: im.Header, Geometry: im.Geometry, FileSize: im.FileSize,
		L1: slices.Clone(im.L1), RefcountTable: slices.Clone(im.RefcountTable),
		DamagedL1: im.DamagedL1, DamagedRT: im.DamagedRT}
}

// damageInRangeLocked returns the damage of the first damaged L1 entry
// covering guest bytes [off, off+n). REQUIRES: mu held.
func (d metaIO) damageInRangeLocked(off, n int64) error {
	dm := d.mu.damage
	if dm == nil || dm.DamagedL1.Len() == 0 || n <= 0 {
		return nil
	}
	cov := d.mu.geo.L1Coverage()
	for i := off / cov; i <= (off+n-1)/cov; i++ {
		if err := dm.L1Damage(i); err != nil {
			return err
		}
	}
	return nil
}

// damagedLocked fails operations that walk or rewrite whole tables
// (snapshots, amend) on a damaged image. REQUIRES: mu held.
func (d metaIO) damagedLocked() error {
	dm := d.mu.damage
	if dm == nil {
		return nil
	}
	var first error
	if i := dm.DamagedL1.First(); i >= 0 {
		first = dm.L1Damage(i)
	} else {
		first = dm.RTDamage(dm.DamagedRT.First())
	}
	return fmt.Errorf("qcow2: image has %d damaged L1 and %d damaged refcount table entries (first: %w); repair it with check -r all first",
		dm.DamagedL1.Len(), dm.DamagedRT.Len(), first)
}

// refuseDamagedWrite marks the image corrupt and fails when the guest
// range [off, off+n) of a write lies under a damaged L1 entry.
// REQUIRES: metaLock held.
func (d metaIO) refuseDamagedWrite(co *aio.Co, off, n int64) error {
	d.mu.Lock()
	err := d.damageInRangeLocked(off, n)
	d.mu.Unlock()
	if err != nil {
		return d.markDamaged(co, err, true)
	}
	return nil
}

// damagedWriteErr turns a corrupt-metadata error met by a write (an L2
// entry with reserved bits, an unaligned offset, a cluster past the end of
// the file...) into the corrupt mark, as QEMU does for invalid entries
// found at run time on a read-write image. Other errors, and images already
// marked, pass through. REQUIRES: metaLock held, no L2 table pinned.
func (d metaIO) damagedWriteErr(co *aio.Co, err error) error {
	if !errors.Is(err, format.ErrCorrupt) {
		return err
	}
	d.mu.Lock()
	marked := d.mu.corruptErr != nil
	d.mu.Unlock()
	if marked {
		return err
	}
	return d.markDamaged(co, err, true)
}

// markDamaged is markCorrupt for a write that would use damaged metadata:
// the image gets the corrupt bit (once, version 3) and every request
// fails from now on, with an error naming the damage. Unlike an overlap
// hit, nothing wrong was written: with flush set, the metadata of the
// writes that did succeed is written back first, so they are not lost
// (the refcount path cannot: it may run inside a flush).
// REQUIRES: metaLock held.
func (d metaIO) markDamaged(co *aio.Co, cause error, flush bool) error {
	if flush {
		d.mu.Lock()
		marked := d.mu.corruptErr != nil
		d.mu.Unlock()
		if !marked {
			if ferr := d.flushMetadata(co, nil); ferr != nil {
				cause = errors.Join(cause, ferr)
			}
		}
	}
	err := fmt.Errorf("qcow2: marking image as corrupt: a write would use damaged metadata (%w); repair it with check -r all", cause)
	d.mu.Lock()
	first := d.mu.corruptErr == nil
	if first {
		d.setCorruptLocked(err)
	}
	incompat := d.mu.hdr.IncompatibleFeatures | format.IncompatCorrupt
	v3 := d.mu.hdr.Version >= 3 && !d.readOnly
	d.mu.Unlock()
	if first {
		reportCorruption(cause)
	}
	if first && v3 {
		var b [8]byte
		putU64(b[:], incompat)
		if d.fileWrite(co, nil, b[:], 72) == nil {
			d.fileSync(co, nil)
		}
		d.mu.Lock()
		d.mu.hdr.IncompatibleFeatures = incompat
		d.mu.Unlock()
	}
	if !first {
		d.mu.Lock()
		err = d.mu.corruptErr
		d.mu.Unlock()
	}
	return err
}
