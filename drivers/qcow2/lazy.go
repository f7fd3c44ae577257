package qcow2

import (
	"slices"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Lazy refcounts (compatible feature bit 0, version 3 only).
//
// With lazy refcounts an image may be left with stale refcounts as long as
// the dirty bit (incompatible bit 0) is set on disk: whoever opens it
// read-write next rebuilds them from the references (openRepair). The
// driver uses that the way QEMU does: a flush writes L2 tables and L1
// entries but not the refcount blocks, so a guest flush costs one fsync
// stage less (R1's "refcount block before pointer" ordering is replaced
// by the dirty bit). Before the first flush that skips a dirty refcount
// block, the dirty bit is written and synced (R10); a clean close writes
// every refcount block, syncs, and only then clears the bit.
//
// Refcount blocks are still written eagerly when a refcount table entry
// is dirty (a new block must be on disk before the entry that points at it,
// R3), when the table grows, and before a check or repair reads them.

// LazyMode is DriverOptions.LazyRefcounts.
type LazyMode int8

const (
	LazyFromHeader LazyMode = iota // the image's compatible bit 0
	LazyOn                         // lazy for this open, whatever the bit says
	LazyOff                        // eager for this open, whatever the bit says
)

// lazyState is the lazy refcount state of a read-write driver. Guarded by
// Driver.mu; changed only under metaLock.
type lazyState struct {
	on          bool // the image has lazy refcounts and is open read-write
	dirtyOnDisk bool // the dirty bit is set in the file
	ownDirty    bool // this driver set it (a clean close clears it)
	force       bool // the running flush must write refcount blocks
	// needRepair is set for a dirty or corrupt image opened with
	// DriverOptions.CheckOpen: writes fail until a repair succeeds.
	needRepair bool
}

// initLazy sets the lazy state after the header is read at open.
func (d *Driver) initLazy() {
	on := d.mu.hdr.CompatibleFeatures&format.CompatLazyRefcounts != 0
	switch d.opts.LazyRefcounts {
	case LazyOn:
		on = true
	case LazyOff:
		on = false
	}
	d.mu.lazy.on = !d.readOnly && d.mu.hdr.Version >= 3 && on
	d.mu.lazy.dirtyOnDisk = d.mu.hdr.IncompatibleFeatures&format.IncompatDirty != 0
}

// lazySkipsLocked reports whether a flush may leave dirty refcount blocks
// in memory: lazy mode, the dirty bit durable, no forced write, and no
// refcount table entry waiting for its block. REQUIRES: mu held.
func (d metaIO) lazySkipsLocked() bool {
	return d.mu.lazy.on && d.mu.lazy.dirtyOnDisk && !d.mu.lazy.force && len(d.mu.dirtyRT) == 0
}

// lazySkipRefblocks decides, at stage A of a flush with dirty refcount
// blocks, whether they may stay in memory; in lazy mode it first makes
// the dirty bit durable (R10). REQUIRES: metaLock held.
func (d metaIO) lazySkipRefblocks(co *aio.Co, parent *block.Request) (bool, error) {
	d.mu.Lock()
	can := d.mu.lazy.on && !d.mu.lazy.force && len(d.mu.dirtyRT) == 0
	set := d.mu.lazy.dirtyOnDisk
	d.mu.Unlock()
	if !can {
		return false, nil
	}
	if !set {
		if err := d.writeIncompat(co, parent, format.IncompatDirty, 0); err != nil {
			return false, err
		}
		d.mu.Lock()
		d.mu.lazy.dirtyOnDisk, d.mu.lazy.ownDirty = true, true
		d.mu.Unlock()
	}
	return true, nil
}

// writeIncompat sets and clears bits of the incompatible features field
// with one synced 8-byte header write (R6).
func (d metaIO) writeIncompat(co *aio.Co, parent *block.Request, set, clr uint64) error {
	d.mu.Lock()
	v := (d.mu.hdr.IncompatibleFeatures | set) &^ clr
	d.mu.Unlock()
	var b [8]byte
	putU64(b[:], v)
	if err := d.fileWrite(co, parent, b[:], 72); err != nil {
		return err
	}
	if err := d.fileSync(co, parent); err != nil {
		return err
	}
	d.mu.Lock()
	d.mu.hdr.IncompatibleFeatures = v
	d.mu.Unlock()
	return nil
}

// flushAllMetadata is flushMetadata with every refcount block written,
// lazy mode or not (checks and clean closes). REQUIRES: metaLock held.
func (d metaIO) flushAllMetadata(co *aio.Co, parent *block.Request) error {
	d.mu.Lock()
	d.mu.lazy.force = true
	d.mu.Unlock()
	err := d.flushMetadata(co, parent)
	d.mu.Lock()
	d.mu.lazy.force = false
	d.mu.Unlock()
	return err
}

// closeMetadata is the clean close: everything written and synced, then
// the dirty bit this driver set is cleared (R10: only after every refcount
// block is durable). A dirty bit found at open (CheckOpen without a
// repair) is left alone. REQUIRES: metaLock held.
func (d metaIO) closeMetadata(co *aio.Co, parent *block.Request) error {
	d.mu.Lock()
	quiet := d.mu.corruptErr != nil && d.l2.dirty == 0 && len(d.mu.dirtyRT) == 0 && len(d.mu.dirtyL1) == 0 &&
		len(d.mu.pendingFrees) == 0 && !d.anyDirtyRefblockLocked()
	d.mu.Unlock()
	if quiet {
		// Marked corrupt, but nothing is waiting to be written: the
		// failure was reported by the request that caused it, and the
		// close itself loses nothing.
		return nil
	}
	if err := d.flushAllMetadata(co, parent); err != nil {
		return err
	}
	d.mu.Lock()
	clearBit := d.mu.lazy.ownDirty && d.mu.lazy.dirtyOnDisk && !d.mu.lazy.needRepair
	d.mu.Unlock()
	if !clearBit {
		return nil
	}
	if err := d.writeIncompat(co, parent, 0, format.IncompatDirty); err != nil {
		return err
	}
	d.mu.Lock()
	d.mu.lazy.dirtyOnDisk, d.mu.lazy.ownDirty = false, false
	d.mu.Unlock()
	return nil
}

// errNeedsRepair refuses writes to a dirty or corrupt image opened for a
// check (DriverOptions.CheckOpen) until a repair succeeded.
var errNeedsRepair = &format.FormatError{Field: "incompatible_features", Reason: "image is dirty or corrupt and was opened for checking; repair it (check -r all) before writing", Err: format.ErrCorrupt}

// repairPending returns errNeedsRepair while writes must wait for a
// repair. REQUIRES: mu held.
func (d metaIO) repairPendingLocked() error {
	if d.mu.lazy.needRepair {
		return errNeedsRepair
	}
	return nil
}

// lazyTableRefcounts keeps the refcounts of metadata out of lazy mode: an
// L2 table just allocated has the dirty refcount blocks (its own refcount
// among them) written and synced at once, before the table is created
// and linked, as QEMU's l2_allocate flushes its refcount cache. A crash
// in lazy mode therefore leaves stale refcounts for guest data clusters
// only, never for a table that maps them (R10; iotests 039 and 061 print
// exactly those). Without lazy mode, stage A of the flush that links the
// table already gives the order, and nothing is written here.
// REQUIRES: metaLock held.
func (d metaIO) lazyTableRefcounts(co *aio.Co, parent *block.Request) error {
	d.mu.Lock()
	var rbs []int64
	if d.mu.lazy.on {
		for off, b := range d.mu.rb {
			if b.dirty {
				rbs = append(rbs, off)
			}
		}
	}
	d.mu.Unlock()
	if len(rbs) == 0 {
		return nil
	}
	slices.Sort(rbs)
	for _, off := range rbs {
		d.mu.Lock()
		b := d.mu.rb[off]
		d.mu.Unlock()
		d.refblockWriteEvents(b) // close_report.go
		if err := d.writeMeta(co, parent, b.buf, off); err != nil {
			return err
		}
	}
	if err := d.fileSync(co, parent); err != nil {
		return err
	}
	d.mu.Lock()
	for _, off := range rbs {
		d.mu.rb[off].dirty, d.mu.rb[off].fresh = false, false
	}
	d.mu.Unlock()
	return nil
}
