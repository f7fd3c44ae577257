package qcow2

import (
	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/internal/invariants"
)

// Allocation and refcounts. Everything here REQUIRES metaLock (the
// coroutine mutex that serialises metadata changes) and runs in a
// coroutine; mu is taken only around in-memory updates.
//
// Refcount increments are made in the cached refcount block and marked
// dirty; the block reaches the disk in stage A of flushMetadata, before
// any L2 table or L1 entry that points at the new cluster (R1). Frees are
// deferred (R2): pendingFrees is applied only after a flush made the
// removal of the pointers durable.

// hostFree is a host byte range whose clusters each lose one reference
// once the pointer removal is durable.
type hostFree struct{ off, n int64 }

// refcountBlock returns the refcount block covering host cluster index
// idx, loading it if needed, or nil when the refcount table has no block
// there. errNoSpace when idx lies beyond what the refcount table covers.
func (d metaIO) refcountBlock(co *aio.Co, idx int64) (rb *refBlock, ti, bi int64, err error) {
	cs := d.mu.geo.ClusterSize()
	ti, bi = d.mu.geo.RefcountIndex(idx * cs)
	d.mu.Lock()
	if ti >= int64(len(d.mu.rt)) {
		d.mu.Unlock()
		return nil, ti, bi, errNoSpace
	}
	var derr error
	if d.mu.damage != nil {
		derr = d.mu.damage.RTDamage(ti)
	}
	off := int64(d.mu.rt[ti])
	rb = d.mu.rb[off]
	d.mu.Unlock()
	if derr != nil {
		// Allocating or freeing here would trust (or write) a refcount
		// block that is not one.
		return nil, ti, bi, d.markDamaged(co, derr, false)
	}
	if off == 0 || rb != nil {
		return rb, ti, bi, nil
	}
	buf := make([]byte, cs)
	if err := d.fileRead(co, nil, buf, off); err != nil {
		return nil, ti, bi, err
	}
	d.mu.Lock()
	if d.mu.rb[off] == nil {
		d.mu.rb[off] = &refBlock{buf: buf}
	}
	rb = d.mu.rb[off]
	d.mu.Unlock()
	return rb, ti, bi, nil
}

// allocCluster finds a free host cluster, gives it refcount 1 and returns
// its offset. A missing refcount block is created on the way, describing
// itself (it covers its own cluster), like QEMU's alloc_refcount_block.
func (d metaIO) allocCluster(co *aio.Co) (int64, error) {
	d.event(block.DbgClusterAlloc)
	if err := d.refuseUntrustedAlloc(co, ""); err != nil { // untrusted.go
		return 0, err
	}
	cs := d.mu.geo.ClusterSize()
	order := d.mu.geo.RefcountOrder
	for {
		idx := max(d.mu.freeIdx, 1) // R5: never cluster 0
		if reuse, err := d.reuseBeforeGrow(co, idx); err != nil {
			return 0, err
		} else if reuse {
			continue
		}
		rb, ti, bi, err := d.refcountBlock(co, idx)
		if err == errNoSpace {
			if err := d.growRefcountTable(co); err != nil {
				return 0, err
			}
			continue
		}
		if err != nil {
			return 0, err
		}
		if _, bogus := d.mu.damageTargets[idx*cs]; bogus {
			d.mu.freeIdx = idx + 1 // pointed at by a damaged entry: never handed out
			continue
		}
		if rb == nil {
			d.event(block.DbgRefblockAlloc)
			// No refcount block: every cluster it would cover is free.
			// Put the new block where QEMU does (alloc_place.go): past
			// the caller's run, or idx itself; in its own range, so its
			// own refcount lives in it. Stage A writes the block, stage B
			// the table entry (R3: block durable before the pointer).
			bidx := d.refblockSlot(idx)
			off := bidx * cs
			if d.overlapsMetadata(off, cs) {
				return 0, d.markCorrupt(co, off, "refcount block allocation")
			}
			buf := make([]byte, cs)
			if err := format.RefcountSet(buf, order, bi+bidx-idx, 1); err != nil {
				return 0, err
			}
			d.mu.Lock()
			d.mu.rb[off] = &refBlock{buf: buf, dirty: true, fresh: true}
			d.mu.rt[ti] = uint64(off)
			d.meta.add(off)
			d.mu.dirtyRT[ti] = true
			d.growFile(off + cs)
			if bidx == idx {
				d.mu.freeIdx = idx + 1
			}
			d.mu.Unlock()
			continue
		}
		d.mu.Lock()
		rc, err := format.RefcountGet(rb.buf, order, bi)
		if err != nil {
			d.mu.Unlock()
			return 0, err
		}
		if rc != 0 {
			d.mu.freeIdx = idx + 1
			d.mu.Unlock()
			continue
		}
		off := idx * cs
		if d.overlapsMetadataLocked(off, cs) {
			d.mu.Unlock()
			return 0, d.markCorrupt(co, off, "allocation")
		}
		d.refcountUpdateEvents() // close_report.go
		if err := format.RefcountSet(rb.buf, order, bi, 1); err != nil {
			d.mu.Unlock()
			return 0, err
		}
		rb.dirty = true
		d.mu.freeIdx = idx + 1
		d.growFile(off + cs)
		d.ranAllocLocked() // alloc_place.go
		d.mu.Unlock()
		d.pack.forget(off, cs) // compress_pack.go
		return off, nil
	}
}

// reuseBeforeGrow: when the search for a free cluster reaches the end of
// the image while freed clusters wait for a flush (R2 defers their
// decrements), it flushes, so they are reused before the file grows, as
// QEMU reuses a discarded cluster at once (it orders the writes with
// cache dependencies instead). Reports whether it applied frees, so the
// caller searches again from the lowered freeIdx. The cost is one
// metadata flush per discard-then-grow, not per allocation.
func (d metaIO) reuseBeforeGrow(co *aio.Co, idx int64) (bool, error) {
	d.mu.Lock()
	atEnd := idx*d.mu.geo.ClusterSize() >= d.mu.geo.FileSize
	pending := len(d.mu.pendingFrees) > 0
	d.mu.Unlock()
	if !atEnd || !pending {
		return false, nil
	}
	if err := d.flushMetadata(co, nil); err != nil {
		return false, err
	}
	return true, nil
}

// growFile records that the image now ends at least at end, so entries
// pointing there decode (Geometry.FileSize is the end-of-file check).
// REQUIRES: mu held.
func (d metaIO) growFile(end int64) {
	if end > d.mu.geo.FileSize {
		d.mu.geo.FileSize = end
		d.fileEnd.Store(end)
	}
}

// applyFrees decrements the refcount of every cluster in pendingFrees.
// REQUIRES: the pointer removals they stand for are durable (R2).
func (d metaIO) applyFrees(co *aio.Co) error {
	d.mu.Lock()
	frees := d.mu.pendingFrees
	d.mu.pendingFrees = nil
	d.mu.Unlock()
	if len(frees) == 0 {
		return nil
	}
	// Requests that mapped a cluster before its pointer went away may
	// still be using it: let them finish before it can be reused.
	d.waitIOEpoch(co)
	cs := d.mu.geo.ClusterSize()
	for _, f := range frees {
		for c := f.off &^ (cs - 1); c < f.off+f.n; c += cs {
			if err := d.decref(co, c); err != nil {
				return err
			}
		}
	}
	return nil
}

func (d metaIO) decref(co *aio.Co, off int64) error {
	d.event(block.DbgClusterFree)
	cs := d.mu.geo.ClusterSize()
	rb, _, bi, err := d.refcountBlock(co, off/cs)
	if err != nil {
		return err
	}
	if rb == nil {
		return format.Corrupt("refcount", uint64(off), "freeing a cluster without a refcount block")
	}
	d.refcountUpdateEvents() // close_report.go
	d.mu.Lock()
	defer d.mu.Unlock()
	rc, err := format.RefcountGet(rb.buf, d.mu.geo.RefcountOrder, bi)
	if err != nil {
		return err
	}
	if rc == 0 {
		return format.Corrupt("refcount", uint64(off), "freeing a cluster whose refcount is already 0")
	}
	if err := format.RefcountSet(rb.buf, d.mu.geo.RefcountOrder, bi, rc-1); err != nil {
		return err
	}
	rb.dirty = true
	if rc == 1 {
		if invariants.Enabled {
			if err := d.checkUnreferencedLocked(off); err != nil {
				failInvariant(err)
			}
		}
		d.l2.drop(off)
		d.mu.zcache.buf = nil
		d.pack.forget(off, cs) // compress_pack.go
		if off/cs < d.mu.freeIdx {
			d.mu.freeIdx = off / cs
		}
	}
	return nil
}

// l2ForWrite returns the cached, pinned (unpin with l2Unpin) L2 table for L1 index l1i, allocating a
// new one when the entry is empty and copying a shared one (COPIED clear,
// after a snapshot) — in both cases the new table is dirty and the L1
// entry is updated in memory and queued for stage D.
func (d metaIO) l2ForWrite(co *aio.Co, parent *block.Request, l1i int64) (*l2Table, int64, error) {
	d.mu.Lock()
	if l1i >= int64(len(d.mu.l1)) {
		d.mu.Unlock()
		return nil, 0, format.Corrupt("l1_size", uint64(len(d.mu.l1)), "guest offset beyond the L1 table")
	}
	var derr error
	if d.mu.damage != nil {
		derr = d.mu.damage.L1Damage(l1i)
	}
	l2Off, copied, err := d.mu.geo.DecodeL1Entry(d.mu.l1[l1i])
	d.mu.Unlock()
	if derr != nil {
		return nil, 0, d.markDamaged(co, derr, true)
	}
	if err != nil {
		return nil, 0, format.WithField(err, format.Indexed("l1_table", uint64(l1i)))
	}
	var old []byte
	if l2Off != 0 {
		t, err := d.l2Acquire(co, parent, l2Off)
		if err != nil {
			return nil, 0, err
		}
		if copied {
			return t, l2Off, nil
		}
		// Shared with a snapshot: copy it and let it go, so no pin is
		// held while the new table takes a slot.
		old = make([]byte, d.mu.geo.ClusterSize())
		d.mu.Lock()
		copy(old, t.buf)
		d.mu.Unlock()
		d.l2Unpin(t)
	}
	// New table (zeros), or a copy of a shared one.
	if err := d.refuseUntrustedAlloc(co, format.AllocL2Table); err != nil { // untrusted.go
		return nil, 0, err
	}
	newOff, err := d.allocCluster(co)
	if err != nil {
		return nil, 0, err
	}
	if err := d.allocL2Flush(co); err != nil { // overlap_inactive.go
		return nil, 0, d.abortAlloc(newOff, err)
	}
	if err := d.lazyTableRefcounts(co, parent); err != nil { // lazy.go
		return nil, 0, d.abortAlloc(newOff, err)
	}
	nt, err := d.l2Create(co, parent, newOff, old)
	if err != nil {
		return nil, 0, d.abortAlloc(newOff, err)
	}
	d.mu.Lock()
	if old != nil {
		// The old table stays referenced by a snapshot; the active L1
		// drops its reference once the new L1 entry is durable.
		d.mu.pendingFrees = append(d.mu.pendingFrees, hostFree{l2Off, 1})
	}
	e, _ := d.mu.geo.EncodeL1Entry(newOff, true)
	storeL1(d.mu.l1, l1i, e)
	d.meta.add(newOff)
	d.mu.newL2 = append(d.mu.newL2, newOff) // l2_alloc_write at its first write (close_report.go)
	if old != nil {
		d.meta.del(l2Off) // now only a snapshot's (inactive) table
	}
	d.mu.dirtyL1[l1i] = true
	d.mu.Unlock()
	return nt, newOff, nil
}

// lockEntry waits until no allocation of the guest cluster at off is in
// flight, brings its L2 table in pinned for writing, takes mu and decodes
// the cluster's entry (e, and the subcluster bitmap bm on extended-L2
// images). On success the caller holds mu and the pin and releases them
// with `defer d.l2Unpin(t)` then `defer d.mu.Unlock()`; on error it holds
// neither; a busy cluster returns an *errWait for the function that took
// metaLock. REQUIRES: metaLock held; it never releases it.
func (d writer) lockEntry(co *aio.Co, r *block.Request, off int64) (t *l2Table, l2i int64, le format.L2Entry, e, bm uint64, err error) {
	l1i, l2i, _ := d.mu.geo.Split(off)
	if err = d.admitted(co, off/d.mu.geo.ClusterSize(), 1); err != nil {
		return nil, 0, le, 0, 0, err // an *errWait: nothing held
	}
	var l2Off int64
	if t, l2Off, err = d.l2ForWrite(co, r, l1i); err != nil {
		return nil, 0, le, 0, 0, err
	}
	d.mu.Lock()
	e, bm, _ = d.mu.geo.L2EntryAt(t.buf, l2i)
	if le, err = d.mu.geo.DecodeL2Entry(e, bm); err != nil {
		d.mu.Unlock()
		d.l2Unpin(t)
		return nil, 0, le, 0, 0, format.L2EntryAt(err, l2Off, l2i) // located, as QEMU words it
	}
	return t, l2i, le, e, bm, nil
}

// setL2Entry stores entry e at index i of table t. REQUIRES: mu held.
func (d metaIO) setL2EntryLocked(t *l2Table, i int64, e uint64) {
	if invariants.Enabled {
		if err := d.checkRefcountedLocked(e); err != nil {
			failInvariant(err)
		}
	}
	// One atomic store: lock-free readers (fast.go) may be reading the
	// entry; the table's sequence tells them it changed.
	t.t.SetWord(int(i*d.mu.geo.L2EntrySize()/8), e)
	d.l2.markDirty(t)
}

func (d metaIO) l2Unpin(t *l2Table) {
	d.l2Release(t)
}

// growRefcountTable replaces the refcount table with a larger one (QEMU's
// qcow2_refcount_area, simplified), when an allocation reaches a cluster
// the current table cannot describe. The new table and any refcount blocks
// it needs go at the end of the image, in an area that describes itself:
//
//  1. flushMetadata, so nothing else is dirty;
//  2. refcounts of the area's clusters set to 1, in existing blocks or in
//     new blocks placed right after the new table; blocks written, new
//     table written; fsync (R3: the new structures are durable first);
//  3. one 12-byte header write of refcount_table_offset and
//     refcount_table_clusters (R6); fsync;
//  4. the old table's clusters are freed after that (R2).
//
// REQUIRES: metaLock held.
func (d metaIO) growRefcountTable(co *aio.Co) error {
	d.event(block.DbgReftableGrow)
	if err := d.flushMetadata(co, nil); err != nil {
		return err
	}
	cs := d.mu.geo.ClusterSize()
	perBlock := d.mu.geo.RefcountBlockEntries()
	d.mu.Lock()
	oldRT := d.mu.rt
	oldOff, oldClusters := int64(d.mu.hdr.RefcountTableOffset), int64(d.mu.hdr.RefcountTableClusters)
	start := (d.mu.geo.FileSize + cs - 1) / cs
	d.mu.Unlock()
	has := func(ti int64) bool { return ti < int64(len(oldRT)) && oldRT[ti] != 0 }

	// Fixed point: table clusters t and new blocks b so that the table
	// holds an entry for every block covering [start, start+t+b).
	t, b := max(oldClusters*2, 1), int64(0)
	for i := 0; ; i++ {
		if i > 64 {
			return format.Limit("refcount_table_clusters", uint64(t), "refcount table growth does not converge")
		}
		end := start + t + b
		nb := int64(0)
		for ti := start / perBlock; ti <= (end-1)/perBlock; ti++ {
			if !has(ti) {
				nb++
			}
		}
		nt := max(t, ((end-1)/perBlock+1)*8/cs+1)
		if nb == b && nt == t {
			break
		}
		b, t = nb, nt
	}
	if t*cs > format.MaxRefcountTableBytes {
		return format.Limit("refcount_table_clusters", uint64(t), "refcount table would exceed its limit")
	}
	tableOff := start * cs
	end := start + t + b
	newRT := make([]uint64, t*cs/8)
	copy(newRT, oldRT)
	blocks := make(map[int64][]byte)
	next := start + t
	for ti := start / perBlock; ti <= (end-1)/perBlock; ti++ {
		if !has(ti) {
			newRT[ti] = uint64(next * cs)
			blocks[next*cs] = make([]byte, cs)
			next++
		}
	}
	// Refcount 1 for every cluster of the area.
	for c := start; c < end; c++ {
		ti, bi := c/perBlock, c%perBlock
		var buf []byte
		if has(ti) {
			rb, _, _, err := d.refcountBlock(co, c)
			if err != nil {
				return err
			}
			d.mu.Lock()
			rb.dirty = true
			buf = rb.buf
			d.mu.Unlock()
		} else {
			buf = blocks[int64(newRT[ti])]
		}
		d.mu.Lock()
		err := format.RefcountSet(buf, d.mu.geo.RefcountOrder, bi, 1)
		d.mu.Unlock()
		if err != nil {
			return err
		}
	}
	// Step 2: existing blocks (stage A of a flush) and the new structures.
	if err := d.flushStages(co, nil); err != nil {
		return err
	}
	d.event(block.DbgRefblockAllocWriteBlocks)
	for off, buf := range blocks {
		if err := d.fileWrite(co, nil, buf, off); err != nil {
			return err
		}
	}
	tb := make([]byte, t*cs)
	for i, e := range newRT {
		putU64(tb[i*8:], e)
	}
	d.event(block.DbgRefblockAllocWriteTable)
	if err := d.fileWrite(co, nil, tb, tableOff); err != nil {
		return err
	}
	if err := d.fileSync(co, nil); err != nil {
		return err
	}
	// Step 3: switch.
	var hb [12]byte
	putU64(hb[:], uint64(tableOff))
	hb[8], hb[9], hb[10], hb[11] = byte(t>>24), byte(t>>16), byte(t>>8), byte(t)
	d.event(block.DbgRefblockAllocSwitchTable)
	if err := d.fileWrite(co, nil, hb[:], 48); err != nil {
		return err
	}
	if err := d.fileSync(co, nil); err != nil {
		return err
	}
	d.mu.Lock()
	d.mu.rt = newRT
	d.mu.hdr.RefcountTableOffset = uint64(tableOff)
	d.mu.hdr.RefcountTableClusters = uint32(t)
	for off, buf := range blocks {
		d.mu.rb[off] = &refBlock{buf: buf}
		d.meta.add(off)
	}
	d.growFile(end * cs)
	d.publishLocked()
	// Step 4: the old table is unreachable and durable so: free it.
	d.mu.pendingFrees = append(d.mu.pendingFrees, hostFree{oldOff, oldClusters * cs})
	d.mu.Unlock()
	return nil
}
