package qcow2

import (
	"slices"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Shrinking the virtual disk (QEMU 7.2's qcow2 shrink, qemu-img resize
// --shrink and qemu-io truncate). Under metaLock, after the refusals of
// truncateLocked (a version 2 image with snapshots, bitmaps that cannot be resized):
//
//  1. every whole cluster from the new size rounded up to a cluster to the
//     end of what the L1 table reaches loses its entry (entry and subcluster bitmap 0: a full
//     discard, as QEMU's, so a later growth reads the backing file or
//     zeros there, never a zero flag left behind); a table shared with a
//     snapshot is copied first (l2ForWrite), the snapshot keeps its
//     clusters. The partial last cluster keeps its data, as in QEMU;
//     flushMetadata makes the removals durable, then frees (R2);
//  2. L1 entries past the new size are zeroed on disk (one write, fsync),
//     then their L2 tables are freed (R2). The L1 table keeps its size
//     and place, as QEMU's does (l1_size may exceed what the size needs);
//  3. refcount blocks that count nothing but themselves lose their
//     refcount table entry (R3 in reverse: entry removed and durable
//     before the block's cluster is forgotten);
//  4. one synced 8-byte header write of the size (R6);
//  5. host clusters freed by 1-3 that nobody references any more are
//     discarded on the file (hole punch: before metaLock is released, so
//     no allocation can have reused them, R9), and the file is cut after
//     its last referenced cluster.
//
// A crash between the steps leaves the old size with some clusters past
// the new end discarded (they read as zeros or from the backing file) and
// at most leaked clusters; never a pointer to a freed cluster.
func (d maintOps) shrinkLocked(co *aio.Co, r *block.Request, old, size int64) error {
	if err := d.prepareWrite(co, r); err != nil {
		return err
	}
	if err := d.flushMetadata(co, r); err != nil {
		return err
	}
	cs := d.mu.geo.ClusterSize()
	var freed []int64 // host cluster offsets that lost a reference

	// Step 1, up to the reach of the whole L1 table: every L2 table that
	// step 2 frees has lost its entries first (so no data cluster keeps a
	// count for a table that is gone, VM state past the old end included).
	d.mu.Lock()
	reach := int64(len(d.mu.l1))
	d.mu.Unlock()
	cov := d.mu.geo.L1Coverage()
	for off := (size + cs - 1) &^ (cs - 1); off/cov < reach; {
		next, err := d.dropEntry(co, r, off, &freed)
		if wait := waitFor(err); wait != nil {
			// An allocating write of this cluster is in flight: wait for
			// it without metaLock, then look at the cluster again.
			d.metaLock.unlock()
			wait(co)
			d.metaLock.lock(co)
			continue
		}
		if err != nil {
			return err
		}
		off = next
	}
	if err := d.flushMetadata(co, r); err != nil {
		return err
	}

	// Step 2.
	if err := d.shrinkL1(co, r, size, &freed); err != nil {
		return err
	}
	if err := d.flushMetadata(co, r); err != nil {
		return err
	}

	// Step 3.
	if err := d.dropUnusedRefblocks(co, r, &freed); err != nil {
		return err
	}

	// Step 4 (an external data file is cut first, datafile.go).
	if err := d.truncateData(co, r, size); err != nil {
		return err
	}
	if err := d.writeSize(co, r, size); err != nil {
		return err
	}

	// Step 5: like QEMU, a failure to give space back is not the resize's
	// failure (the image is consistent without it).
	if err := d.punchFreed(co, r, freed); err != nil {
		return nil
	}
	d.cutFileTail(co, r)
	return nil
}

// dropEntry removes the entry of the whole cluster at guest offset off
// (step 1 of shrinkLocked) and returns the next guest offset to look at:
// past the whole L1 entry when it has no L2 table. REQUIRES: metaLock
// held; an *errWait comes back with nothing changed.
func (d maintOps) dropEntry(co *aio.Co, r *block.Request, off int64, freed *[]int64) (int64, error) {
	cs := d.mu.geo.ClusterSize()
	l1i, _, _ := d.mu.geo.Split(off)
	d.mu.Lock()
	var e1 uint64
	if l1i < int64(len(d.mu.l1)) {
		e1 = d.mu.l1[l1i]
	}
	d.mu.Unlock()
	if e1&format.OffsetMask == 0 {
		span := d.mu.geo.L1Coverage()
		return (off/span + 1) * span, nil
	}
	t, l2i, le, e, bm, err := d.lockEntry(co, r, off)
	if err != nil {
		return 0, err
	}
	defer d.l2Unpin(t)
	defer d.mu.Unlock()
	if e == 0 && bm == 0 {
		return off + cs, nil
	}
	d.setL2EntryLocked(t, l2i, 0)
	if d.mu.geo.ExtendedL2 {
		d.setL2BitmapLocked(t, l2i, 0)
	}
	switch {
	case d.mu.hdr.IncompatibleFeatures&format.IncompatDataFile != 0:
		// Data in an external data file has no refcounts in the image
		// (its clusters sit at the guest offsets): nothing to free.
	case le.Type == format.Compressed:
		c := le.Compressed
		d.mu.pendingFrees = append(d.mu.pendingFrees, hostFree{c.HostOff, c.Size()})
		for h := c.HostOff &^ (cs - 1); h < c.HostOff+c.Size(); h += cs {
			*freed = append(*freed, h)
		}
	case le.HostOff != 0:
		d.mu.pendingFrees = append(d.mu.pendingFrees, hostFree{le.HostOff, 1})
		*freed = append(*freed, le.HostOff)
	}
	return off + cs, nil
}

// shrinkL1 zeroes the L1 entries the disk of size bytes does not need
// and frees their L2 tables (step 2). REQUIRES: metaLock held, nothing
// dirty (the entries of those tables were dropped and flushed).
func (d maintOps) shrinkL1(co *aio.Co, r *block.Request, size int64, freed *[]int64) error {
	need := int64(format.L1EntriesFor(uint64(size), d.mu.geo.ClusterBits, d.mu.geo.ExtendedL2))
	d.mu.Lock()
	n := int64(len(d.mu.l1))
	any := false
	for i := need; i < n; i++ {
		if d.mu.l1[i] != 0 {
			any = true
			break
		}
	}
	l1Off := int64(d.mu.hdr.L1Offset)
	d.mu.Unlock()
	if !any {
		return nil
	}
	if err := d.fileWrite(co, r, make([]byte, (n-need)*8), l1Off+need*8); err != nil {
		return err
	}
	if err := d.fileSync(co, r); err != nil {
		return err
	}
	d.mu.Lock()
	for i := need; i < n; i++ {
		l2Off := int64(d.mu.l1[i] & format.OffsetMask)
		storeL1(d.mu.l1, i, 0)
		if l2Off == 0 {
			continue
		}
		d.meta.del(l2Off)
		d.mu.pendingFrees = append(d.mu.pendingFrees, hostFree{l2Off, 1})
		*freed = append(*freed, l2Off)
	}
	d.publishLocked()
	d.mu.Unlock()
	return nil
}

// dropUnusedRefblocks removes the refcount table entries of refcount
// blocks that count no cluster but (possibly) their own (step 3, QEMU's
// qcow2_shrink_reftable). The table keeps its size. REQUIRES: metaLock
// held, nothing dirty.
func (d maintOps) dropUnusedRefblocks(co *aio.Co, r *block.Request, freed *[]int64) error {
	cs := d.mu.geo.ClusterSize()
	order := d.mu.geo.RefcountOrder
	per := d.mu.geo.RefcountBlockEntries()
	d.mu.Lock()
	rtLen := int64(len(d.mu.rt))
	d.mu.Unlock()
	type drop struct{ ti, off int64 }
	var drops []drop
	for ti := int64(0); ti < rtLen; ti++ {
		d.mu.Lock()
		off := int64(d.mu.rt[ti] & format.OffsetMask)
		d.mu.Unlock()
		if off == 0 {
			continue
		}
		rb, _, _, err := d.refcountBlock(co, ti*per)
		if err != nil {
			return err
		}
		if rb == nil {
			continue
		}
		self := off/cs/per == ti
		unused := true
		d.mu.Lock()
		for bi := int64(0); bi < per && unused; bi++ {
			if self && bi == off/cs%per {
				continue
			}
			rc, err := format.RefcountGet(rb.buf, order, bi)
			if err != nil {
				d.mu.Unlock()
				return err
			}
			unused = rc == 0
		}
		d.mu.Unlock()
		if unused {
			drops = append(drops, drop{ti, off})
		}
	}
	if len(drops) == 0 {
		return nil
	}
	d.mu.Lock()
	for _, dr := range drops {
		d.mu.rt[dr.ti] = 0
		d.mu.dirtyRT[dr.ti] = true
	}
	d.mu.Unlock()
	// Stage B writes the entries and syncs: the blocks are unreachable.
	if err := d.flushMetadata(co, r); err != nil {
		return err
	}
	d.mu.Lock()
	for _, dr := range drops {
		delete(d.mu.rb, dr.off)
		d.meta.del(dr.off)
		*freed = append(*freed, dr.off)
		if dr.off/cs/per != dr.ti {
			// Counted in another block: that count goes now.
			d.mu.pendingFrees = append(d.mu.pendingFrees, hostFree{dr.off, 1})
		} else if dr.off/cs < d.mu.freeIdx {
			d.mu.freeIdx = dr.off / cs
		}
	}
	d.publishLocked()
	d.mu.Unlock()
	return d.flushMetadata(co, r)
}

// punchFreed discards on the file every host cluster of freed that has
// refcount 0 now, one request per contiguous run. REQUIRES: metaLock
// held since the clusters were freed (nothing reused them).
func (d maintOps) punchFreed(co *aio.Co, r *block.Request, freed []int64) error {
	if len(freed) == 0 {
		return nil
	}
	cs := d.mu.geo.ClusterSize()
	slices.Sort(freed)
	freed = slices.Compact(freed)
	var runOff, runLen int64
	flush := func() error {
		if runLen == 0 {
			return nil
		}
		err := d.childIO(co, r, d.file, block.OpDiscard, runOff, nil, runLen)
		runLen = 0
		return err
	}
	for _, h := range freed {
		rc, err := d.refcountOf(co, h)
		if err != nil {
			return err
		}
		if rc != 0 {
			continue
		}
		if runLen > 0 && runOff+runLen == h {
			runLen += cs
			continue
		}
		if err := flush(); err != nil {
			return err
		}
		runOff, runLen = h, cs
	}
	return flush()
}

// cutFileTail truncates the file after its last cluster with a nonzero
// refcount, when the file is longer. Errors are ignored: a longer file
// is a valid image. REQUIRES: metaLock held, nothing dirty.
func (d maintOps) cutFileTail(co *aio.Co, r *block.Request) {
	cs := d.mu.geo.ClusterSize()
	fileLen, err := d.file.Node().Length()
	if err != nil {
		return
	}
	last := int64(-1)
	for c := (fileLen+cs-1)/cs - 1; c >= 0; c-- {
		rc, err := d.refcountOf(co, c*cs)
		if err != nil {
			return
		}
		if rc != 0 {
			last = c
			break
		}
	}
	end := (last + 1) * cs
	if last < 0 || end >= fileLen {
		return
	}
	if d.childIO(co, r, d.file, block.OpTruncate, end, nil, 0) != nil {
		return
	}
	d.mu.Lock()
	d.mu.geo.FileSize = end
	if d.mu.freeIdx > end/cs {
		d.mu.freeIdx = end / cs
	}
	d.publishLocked()
	d.mu.Unlock()
}
