package qcow2

import (
	"math/bits"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Writes, write-zeroes and discards on images with extended L2 entries
// (32 subclusters per cluster), following QEMU 7.2.
//
// A write touches subclusters sc0..sc1 of one cluster:
//
//	cluster                           what happens
//	NORMAL+COPIED, sc0..sc1 allocated in place, no metadata (the fast path)
//	NORMAL+COPIED, some not allocated in place; the unallocated touched
//	                                  subclusters are completed from their
//	                                  current content (backing or zeros) and
//	                                  marked allocated
//	no host cluster                   new host cluster; only sc0..sc1 are
//	                                  written (partial ones completed from
//	                                  backing or zeros) and marked
//	                                  allocated; the other subclusters keep
//	                                  their state, so unallocated ones still
//	                                  read from the backing file
//	NORMAL, shared (no COPIED)        new host cluster; the span from the
//	                                  first to the last allocated or touched
//	                                  subcluster is copied and marked
//	                                  allocated; the old cluster is released
//	COMPRESSED                        new host cluster, whole cluster copied
//
// Write-zeroes: whole subclusters get the zero bit (allocated bit
// cleared; the host cluster stays). A whole cluster gets an all-zero
// bitmap, and loses its host cluster with MayUnmap (or when compressed).
// A partial subcluster that already reads as zero is marked zero as a
// whole; other partial subclusters get real zeros written. A compressed
// cluster that is not zeroed whole gets real zeros (QEMU's -ENOTSUP
// fallback). Discard: whole clusters only; the entry becomes 0 with an
// all-zero bitmap (the old host cluster is freed), unless the cluster has
// no host cluster and there is no backing file.
//
// Crash ordering is the one of ordinary allocating writes: data and COW
// bytes are written (and, through cowPending, synced before any L2 table
// goes out: R4) before the bitmap or entry that makes them visible; an
// in-place completion of unallocated subclusters is such a case too,
// because the bytes under an unallocated subcluster are stale.

// scMask returns the allocation bits of subclusters first..last.
func scMask(first, last int64) uint64 {
	return (uint64(1)<<uint(last+1) - 1) &^ (uint64(1)<<uint(first) - 1)
}

// subclustersAllocated reports whether every subcluster of g that [in, in+k)
// (offsets inside one cluster, k > 0) touches is allocated in bitmap.
func subclustersAllocated(g *format.Geometry, bitmap uint64, in, k int64) bool {
	sb := g.ClusterBits - 5
	m := scMask(in>>sb, (in+k-1)>>sb)
	return bitmap&m == m
}

// setL2BitmapLocked stores the subcluster bitmap of entry i of table t.
// REQUIRES: mu held, extended L2.
func (d metaIO) setL2BitmapLocked(t *l2Table, i int64, bitmap uint64) {
	t.t.SetWord(int(i*2+1), bitmap) // atomic: lock-free readers (fast.go)
	d.l2.markDirty(t)
}

// subPlan is what planSubclusters decided for a write of k guest bytes at
// in inside the cluster at start of an extended-L2 image: direct (every
// touched subcluster of a COPIED cluster allocated: the bytes go to host+in
// and nothing changes), or [lo, hi) of host written (the data plus what
// completes the subclusters that become allocated) by subclusterIO and
// linked by commitSubclusters. Owned by the coroutine of the write.
type subPlan struct {
	t         *l2Table // pinned until commitSubclusters (or the direct write)
	l2i, gc   int64
	le        format.L2Entry
	bm        uint64
	inPlace   bool // COPIED cluster: host is le's own, nothing to allocate
	direct    bool
	host      int64
	lo, hi    int64
	start, in int64
	k         int64
	fl        *inflightAlloc
	// wait, when set, means nothing was planned or held: run it with
	// metaLock released, then plan again (admit).
	wait func(*aio.Co)
}

// planSubclusters plans a write of k bytes at guest offset off inside one
// cluster of an extended-L2 image: the L2 table pinned, the host cluster
// allocated unless the cluster is COPIED, the guest cluster in flight
// (R8). It does no data I/O. run, when not nil, carries host clusters
// allocated together for the write's next clusters (alloc_run_extl2.go). When the cluster is busy (admit) it plans
// nothing and returns the wait in p.wait. REQUIRES: metaLock held; it
// never releases it.
func (d writer) planSubclusters(co *aio.Co, r *block.Request, off, k int64, run *hostRun) (p subPlan, err error) {
	cs, scs := d.mu.geo.ClusterSize(), d.mu.geo.SubclusterSize()
	l1i, l2i, in := d.mu.geo.Split(off)
	p.gc, p.l2i, p.in, p.k, p.start = off/cs, l2i, in, k, off-in
	if p.wait = d.admit(co, p.gc, 1); p.wait != nil {
		return p, nil
	}
	var l2Off int64
	if p.t, l2Off, err = d.l2ForWrite(co, r, l1i); err != nil {
		return p, err
	}
	d.mu.Lock()
	e, bm, _ := d.mu.geo.L2EntryAt(p.t.buf, l2i)
	le, err := d.mu.geo.DecodeL2Entry(e, bm)
	valid := min(cs, d.mapEndLocked(p.start)-p.start) // the last cluster may be partial
	d.mu.Unlock()
	if err != nil {
		d.l2Unpin(p.t)
		return p, format.L2EntryAt(err, l2Off, l2i) // located, as QEMU words it
	}
	p.le, p.bm = le, bm
	sc0, sc1 := in/scs, (in+k-1)/scs
	touched := scMask(sc0, sc1)
	p.inPlace = le.Type == format.Normal && le.Copied
	if p.inPlace && bm&touched == touched {
		// R7: in place only into COPIED clusters.
		p.direct, p.host = true, le.HostOff
		if d.dataOverlaps(p.host+in, k) { // datafile.go
			d.l2Unpin(p.t)
			return p, d.markCorrupt(co, p.host+in, "data write")
		}
		return p, nil
	}
	// [lo, hi) is the part of the cluster written: the data plus what
	// completes the subclusters that become allocated.
	lo, hi := in, in+k
	switch {
	case p.inPlace:
		if bm&scMask(sc0, sc0) == 0 {
			lo = sc0 * scs
		}
		if bm&scMask(sc1, sc1) == 0 {
			hi = min((sc1+1)*scs, valid)
		}
	case le.Type == format.Compressed:
		lo, hi = 0, valid
	default:
		lo, hi = sc0*scs, min((sc1+1)*scs, valid)
		if alloc := bm & format.BitmapAllocMask; le.Type == format.Normal && alloc != 0 {
			first, last := int64(bits.TrailingZeros64(alloc)), int64(63-bits.LeadingZeros64(alloc))
			lo, hi = min(lo, first*scs), max(hi, min((last+1)*scs, valid))
		}
	}
	p.lo, p.hi = lo, hi
	if p.inPlace {
		p.host = le.HostOff
		if d.dataOverlaps(p.host+lo, hi-lo) { // datafile.go
			d.l2Unpin(p.t)
			return p, d.markCorrupt(co, p.host+lo, "data write")
		}
	} else if p.host, err = d.allocForSub(co, run, p.t, l2i, p.start); err != nil { // alloc_run_extl2.go
		d.l2Unpin(p.t)
		return p, err
	}
	p.fl = d.markInflight(p.gc, 1)
	return p, nil
}

// subclusterIO writes [lo, hi) of the plan's host cluster: the guest bytes
// and, around them, the current content of the subclusters they complete.
// It needs no lock: the guest cluster is in flight and a new host cluster
// is the plan's alone.
func (d writer) subclusterIO(co *aio.Co, r *block.Request, win [][]byte, p *subPlan) error {
	lo, hi, in, k, start, host := p.lo, p.hi, p.in, p.k, p.start, p.host
	if lo == in && hi == in+k {
		d.event(block.DbgWriteAIO)
		return d.childIO(co, r, d.data, block.OpWrite, host+in, win, k)
	}
	buf := make([]byte, hi-lo)
	var err error
	if lo < in {
		err = d.readGuest(co, r, [][]byte{buf[:in-lo]}, start+lo, in-lo)
	}
	if err == nil && in+k < hi {
		err = d.readGuest(co, r, [][]byte{buf[in+k-lo:]}, start+in+k, hi-in-k)
	}
	if err == nil {
		block.CopyFromIov(buf[in-lo:in-lo+k], win, 0)
		err = d.fileWrite(co, r, buf, host+lo)
	}
	return err
}

// commitSubclusters ends a plan after its I/O (ioErr): the subclusters
// written become allocated (and a new cluster is linked, COPIED, the old
// one queued for a free after the next flush: R2); on failure a new
// cluster is given back. The guest cluster leaves the in-flight set and
// the table is unpinned. REQUIRES: metaLock held.
func (d writer) commitSubclusters(p *subPlan, ioErr error) error {
	defer d.l2Unpin(p.t)
	defer d.finishInflight(p.fl, p.gc, 1)
	if ioErr != nil {
		if p.inPlace {
			return ioErr
		}
		return d.abortData(p.host, ioErr) // datafile.go
	}
	scs := d.mu.geo.SubclusterSize()
	le := p.le
	wm := scMask(p.lo/scs, (p.hi-1)/scs)
	nbm := (p.bm | wm) &^ (wm << 32)
	if le.Type == format.Compressed {
		nbm = wm
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mu.cowPending = true
	if !p.inPlace {
		ne, err := d.mu.geo.EncodeL2Entry(format.Normal, p.host, true)
		if err != nil {
			return err
		}
		d.setL2EntryLocked(p.t, p.l2i, ne)
		d.freeDataLocked(le) // datafile.go
	}
	d.setL2BitmapLocked(p.t, p.l2i, nbm)
	return nil
}

// writeSubclusters writes win (k bytes) at guest offset off, inside one
// cluster of an extended-L2 image, for the callers that change metadata
// in one step under metaLock (zero writes): plan, I/O and commit with
// metaLock held throughout. A busy cluster returns an *errWait, which the
// function that took metaLock runs with it released before it plans
// again. writeSlow drives the three steps itself and drops metaLock for
// the I/O. REQUIRES: metaLock held; it never releases it.
func (d writer) writeSubclusters(co *aio.Co, r *block.Request, win [][]byte, off, k int64, run *hostRun) error {
	p, err := d.planSubclusters(co, r, off, k, run)
	switch {
	case err != nil:
		return err
	case p.wait != nil:
		return &errWait{p.wait}
	case p.direct:
		d.event(block.DbgWriteAIO)
		err = d.childIO(co, r, d.data, block.OpWrite, p.host+p.in, win, k)
		d.l2Unpin(p.t)
		return err
	}
	return d.commitSubclusters(&p, d.subclusterIO(co, r, win, &p))
}

// subclusterReadsZero reports whether subcluster sc of le reads as zero.
func (d writer) subclusterReadsZero(le format.L2Entry, sc int64) bool {
	switch d.mu.geo.SubclusterType(le, int(sc)) {
	case format.ZeroPlain, format.ZeroAlloc:
		return true
	case format.Unallocated, format.UnallocatedAlloc:
		return d.backing == nil
	}
	return false
}

// zeroSubclusters is zeroRange for the part [off, off+k) of one cluster of
// an extended-L2 image. REQUIRES: metaLock held.
func (d writer) zeroSubclusters(co *aio.Co, r *block.Request, off, k int64, m zeroMode) error {
	cs, scs := d.mu.geo.ClusterSize(), d.mu.geo.SubclusterSize()
	in := off & (cs - 1)
	d.mu.Lock()
	size := d.mu.geo.Size
	d.mu.Unlock()
	whole := in == 0 && (k == cs || off+k == size)
	le, _, err := d.peekEntry(co, r, off)
	if err == errMiss {
		// Evicted meanwhile: load it again (allocating the table if needed).
		if le, err = d.entryForWrite(co, r, off); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	if m == modeDiscard {
		if !whole || (le.HostOff == 0 && le.Type != format.Compressed && d.backing == nil) {
			return nil
		}
		return d.updateSubclusters(co, r, off, func(le format.L2Entry, e, bm uint64) (uint64, uint64, bool) {
			return 0, format.BitmapZeroMask, true
		})
	}
	if whole {
		return d.updateSubclusters(co, r, off, func(le format.L2Entry, e, bm uint64) (uint64, uint64, bool) {
			if le.Type == format.Compressed || (m == modeZeroUnmap && le.HostOff != 0) {
				return 0, format.BitmapZeroMask, true
			}
			return e, format.BitmapZeroMask, false
		})
	}
	if le.Type == format.Compressed {
		zeros := make([]byte, k)
		return d.writeSubclusters(co, r, [][]byte{zeros}, off, k, nil)
	}
	start := off - in
	var zm uint64
	var zeros []byte
	for sc := in / scs; sc*scs < in+k; sc++ {
		a, b := max(in, sc*scs), min(in+k, (sc+1)*scs)
		full := a == sc*scs && (b == (sc+1)*scs || start+b == size)
		if full || d.subclusterReadsZero(le, sc) {
			zm |= scMask(sc, sc)
			continue
		}
		if zeros == nil {
			zeros = make([]byte, scs)
		}
		if err := d.writeSubclusters(co, r, [][]byte{zeros[:b-a]}, start+a, b-a, nil); err != nil {
			return err
		}
	}
	if zm == 0 {
		return nil
	}
	return d.updateSubclusters(co, r, off, func(le format.L2Entry, e, bm uint64) (uint64, uint64, bool) {
		if le.Type == format.Compressed { // cannot happen: checked above under metaLock
			return e, bm, false
		}
		return e, (bm | zm<<32) &^ zm, false
	})
}

// entryForWrite returns the entry of the cluster at off, loading its L2
// table (allocating it if needed). REQUIRES: metaLock held.
func (d writer) entryForWrite(co *aio.Co, r *block.Request, off int64) (format.L2Entry, error) {
	l1i, l2i, _ := d.mu.geo.Split(off)
	t, l2Off, err := d.l2ForWrite(co, r, l1i)
	if err != nil {
		return format.L2Entry{}, err
	}
	defer d.l2Unpin(t)
	d.mu.Lock()
	defer d.mu.Unlock()
	e, bm, _ := d.mu.geo.L2EntryAt(t.buf, l2i)
	le, err := d.mu.geo.DecodeL2Entry(e, bm)
	if err != nil {
		return le, format.L2EntryAt(err, l2Off, l2i) // located, as QEMU words it
	}
	return le, nil
}

// updateSubclusters replaces the entry and bitmap of the cluster at off
// by what f returns for the current ones, once no allocation of that
// cluster is in flight; when f says so the old host cluster is released
// after the next flush (R2). REQUIRES: metaLock held.
func (d writer) updateSubclusters(co *aio.Co, r *block.Request, off int64, f func(le format.L2Entry, e, bm uint64) (ne, nbm uint64, free bool)) error {
	t, l2i, le, e, bm, err := d.lockEntry(co, r, off)
	if err != nil {
		return err
	}
	defer d.l2Unpin(t)
	defer d.mu.Unlock()
	ne, nbm, free := f(le, e, bm)
	if ne == e && nbm == bm {
		return nil
	}
	if ne != e {
		d.setL2EntryLocked(t, l2i, ne)
	}
	d.setL2BitmapLocked(t, l2i, nbm)
	if free && ne&format.OffsetMask != e&format.OffsetMask || free && le.Type == format.Compressed {
		d.freeDataLocked(le) // datafile.go
	}
	return nil
}
