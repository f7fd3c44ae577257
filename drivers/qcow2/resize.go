package qcow2

import (
	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Truncate sets the virtual disk size to r.Off bytes (QEMU's
// qcow2_co_truncate with preallocation=off). Shrinking is shrinkLocked
// (shrink.go); growing is below. The new size must be a multiple of 512,
// as in QEMU.
//
//  1. flushMetadata: nothing dirty is left behind;
//  2. if the L1 table is too small, growL1 (R3);
//  3. if a backing file is longer than the old size, hideBacking: the new
//     area is zeroed (zero flags) and those entries made durable;
//  4. one 8-byte synced header write of size (R6), after the metadata it
//     needs is durable.
func (d *Driver) Truncate(r *block.Request) {
	r.Context().Go(func(co *aio.Co) {
		d.metaLock.lock(co)
		err := maintOf(d).truncateLocked(co, r, r.Off)
		for wait := waitFor(err); wait != nil; wait = waitFor(err) {
			// A busy cluster while zeroing past the old size: nothing of
			// the new size is in force (hideBacking put the old one back),
			// and every step before is idempotent, so run it again.
			d.metaLock.unlock()
			wait(co)
			d.metaLock.lock(co)
			err = maintOf(d).truncateLocked(co, r, r.Off)
		}
		d.metaLock.unlock()
		r.CompleteLater(d.formatErr(block.OpTruncate, r.Off, err))
	})
}

func (d maintOps) truncateLocked(co *aio.Co, r *block.Request, size int64) error {
	d.mu.Lock()
	old := d.mu.geo.Size
	v2Snaps := d.mu.hdr.Version < 3 && len(d.mu.snaps) > 0
	d.mu.Unlock()
	switch {
	case v2Snaps && size != old:
		// As QEMU: a version 2 snapshot entry may lack its disk size.
		return format.Unsupported("version", 2, "Can't resize a v2 image which has snapshots") // QEMU's words
	case size%512 != 0:
		return format.OutOfRange("size", uint64(size), "the new size must be a multiple of 512")
	case size > format.MaxImageSize:
		return format.Limit("size", uint64(size), "virtual size above 2^61")
	case size == old:
		return nil
	}
	// Persistent bitmaps are resized with the node (block's truncate
	// completion) and stored with the new size at close; a bitmap that
	// cannot be resized refuses it (bitmaps.go).
	if err := d.truncateBitmapsCheck(); err != nil {
		return err
	}
	if size < old {
		return d.shrinkLocked(co, r, old, size) // shrink.go
	}
	need := format.L1EntriesFor(uint64(size), d.mu.geo.ClusterBits, d.mu.geo.ExtendedL2)
	if need*8 > format.MaxL1Bytes {
		return format.Limit("l1_size", need, "image size is too large for this cluster size")
	}
	// A backing file longer than the old size would show through the new
	// area: it must read as zeros (QEMU's bdrv_co_truncate asks for a
	// zeroing truncate then). Version 2 has no zero flag, and QEMU 7.2
	// refuses rather than write real zeros; so do we, before any change.
	hide := d.backing != nil && d.backingSize > old
	if hide && !d.mu.geo.ZeroFlag && !d.mu.geo.ExtendedL2 {
		return format.Unsupported("version", 2, "Failed to zero out new clusters: a version 2 image cannot hide its backing file past the old size (upgrade with amend -o compat=1.1)")
	}
	if err := d.prepareWrite(co, r); err != nil {
		return err
	}
	if err := d.flushMetadata(co, r); err != nil {
		return err
	}
	if need > uint64(len(d.mu.l1)) {
		if err := d.growL1(co, r, int64(need)); err != nil {
			return err
		}
	}
	if hide {
		if err := d.hideBacking(co, r, old, size); err != nil {
			return err
		}
	}
	if err := d.truncateData(co, r, size); err != nil { // datafile.go
		return err
	}
	return d.writeSize(co, r, size)
}

// hideBacking makes guest bytes [old, size) read as zeros whatever the
// backing file holds there, as QEMU 7.2's zeroing truncate does: the
// part of the last old cluster (subcluster with extended L2) past old
// gets real zeros (a copy-on-write of the rest from the backing file),
// everything from the next (sub)cluster boundary on gets the zero flag.
// The entries are durable before the header announces the new size, so
// a crash leaves the old size with harmless zero entries past it, never
// the new size with the backing file showing. REQUIRES: metaLock held,
// L1 large enough for size.
// writeSize records size in the header (its 8-byte field at offset 24),
// syncs the file and publishes the new geometry. The last step of a
// resize, growing or shrinking. REQUIRES: metaLock held.
func (d maintOps) writeSize(co *aio.Co, r *block.Request, size int64) error {
	var b [8]byte
	putU64(b[:], uint64(size))
	if err := d.fileWrite(co, r, b[:], 24); err != nil {
		return err
	}
	if err := d.fileSync(co, r); err != nil {
		return err
	}
	d.mu.Lock()
	d.mu.geo.Size = size
	d.mu.hdr.Size = uint64(size)
	d.publishLocked()
	d.mu.Unlock()
	return nil
}

func (d maintOps) hideBacking(co *aio.Co, r *block.Request, old, size int64) (err error) {
	d.mu.Lock()
	d.mu.geo.Size = size // the zeroing works on the grown disk
	d.publishLocked()
	d.mu.Unlock()
	defer func() {
		if err != nil {
			d.mu.Lock()
			d.mu.geo.Size = old
			d.publishLocked()
			d.mu.Unlock()
		}
	}()
	// An *errWait comes back out (size restored above); Truncate waits and
	// runs truncateLocked again, which zeroes from old again.
	pos := old
	if err := d.zeroRangeLocked(co, r, &pos, size, modeZero); err != nil {
		return err
	}
	if err := d.zeroLastClusterExtL2(co, r, old, size); err != nil { // resize_extl2.go
		return err
	}
	return d.flushMetadata(co, r)
}

// growL1 moves the active L1 table to n entries at the end of the image:
// allocate contiguous clusters, write the whole new table and fsync (R3),
// then one 12-byte synced header write of l1_size and l1_table_offset
// (R6), then free the old table's clusters (R2: after the switch is
// durable). REQUIRES: metaLock held, no dirty metadata.
func (d maintOps) growL1(co *aio.Co, r *block.Request, n int64) error {
	cs := d.mu.geo.ClusterSize()
	clusters := (n*8 + cs - 1) / cs
	d.event(block.DbgL1GrowAllocTable)
	start, err := d.allocContiguous(co, clusters)
	if err != nil {
		return err
	}
	// Until the header write is issued nothing points at the new table:
	// a failure gives its clusters back (QEMU frees them too).
	abort := func(err error) error {
		for c := int64(0); c < clusters; c++ {
			d.abortAlloc(start+c*cs, nil)
		}
		return err
	}
	d.mu.Lock()
	oldOff, oldLen := int64(d.mu.hdr.L1Offset), int64(len(d.mu.l1))
	tb := make([]byte, n*8)
	for i, e := range d.mu.l1 {
		putU64(tb[i*8:], e)
	}
	d.mu.Unlock()
	// The allocation is refcounted in memory only: stage A first (R1).
	if err := d.flushMetadata(co, r); err != nil {
		return abort(err)
	}
	d.event(block.DbgL1GrowWriteTable)
	if err := d.fileWrite(co, r, tb, start); err != nil {
		return abort(err)
	}
	if err := d.fileSync(co, r); err != nil {
		return abort(err)
	}
	var hb [12]byte
	hb[0], hb[1], hb[2], hb[3] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	putU64(hb[4:], uint64(start))
	d.event(block.DbgL1GrowActivateTable)
	if err := d.fileWrite(co, r, hb[:], 36); err != nil {
		return err
	}
	if err := d.fileSync(co, r); err != nil {
		return err
	}
	d.mu.Lock()
	l1 := make([]uint64, n)
	copy(l1, d.mu.l1)
	d.mu.l1 = l1
	d.mu.hdr.L1Offset, d.mu.hdr.L1Entries = uint64(start), uint32(n)
	d.publishLocked()
	if oldLen > 0 {
		d.mu.pendingFrees = append(d.mu.pendingFrees, hostFree{oldOff, oldLen * 8})
	}
	d.mu.Unlock()
	return nil
}

// allocContiguous allocates n contiguous clusters and returns the first
// one's offset. It takes clusters one by one as allocCluster hands them
// out from the end of the file (clusters freed in this session may come
// first: reuseBeforeGrow) and keeps every one until the last n form a
// run: a free cluster that stands alone, or a refcount block created on
// the way, only starts the run again. Keeping them (instead of giving a failed try back and starting
// over) matters: given back, the same clusters come out again in the
// same order. The run is announced, so a new refcount block goes past it
// where there is room (alloc_place.go). Every cluster outside the run is
// given back at the end (a leak at worst, if we crash).
func (d metaIO) allocContiguous(co *aio.Co, n int64) (int64, error) {
	cs := d.mu.geo.ClusterSize()
	d.mu.Lock()
	saved := d.mu.freeIdx
	// Bound: every cluster below the end of the file, then n at the end,
	// and one refcount block per block's range among them.
	limit := (d.mu.geo.FileSize+cs-1)/cs + 2*n + 2*(n/d.mu.geo.RefcountBlockEntries()+1)
	d.mu.freeIdx = (d.mu.geo.FileSize + cs - 1) / cs // from the end (reuse may still take a freed run first)
	d.mu.Unlock()
	d.setAllocRun(n)
	defer func() {
		d.setAllocRun(0)
		d.mu.Lock()
		d.mu.freeIdx = min(d.mu.freeIdx, saved)
		d.mu.Unlock()
	}()
	var got []int64
	run := int64(0)
	for int64(len(got)) < limit {
		off, err := d.allocCluster(co)
		if err != nil {
			for _, g := range got {
				d.abortAlloc(g, nil)
			}
			return 0, err
		}
		if run > 0 && off == got[len(got)-1]+cs {
			run++
		} else {
			run = 1
		}
		got = append(got, off)
		if run == n {
			start := off - (n-1)*cs
			for _, g := range got[:len(got)-int(n)] {
				d.abortAlloc(g, nil)
			}
			return start, nil
		}
	}
	for _, g := range got {
		d.abortAlloc(g, nil)
	}
	// The run needs refcount blocks of its own (alloc_area.go).
	return d.allocArea(co, n)
}
