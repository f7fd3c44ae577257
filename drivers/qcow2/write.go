package qcow2

import (
	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Write path.
//
//	Write ─▶ every cluster of the range NORMAL with COPIED, its L2 table
//	         cached, no FUA, header ready (R10), no overlap with metadata
//	        ─▶ in place (R7): one file-child write per host-contiguous run,
//	           no metadata change, no allocation
//	   otherwise ─▶ coroutine under metaLock: cluster by cluster (runs of
//	           whole clusters batched), in place where COPIED, else
//	           allocate + COW + L2 update; the data I/O of an allocation
//	           runs without metaLock, its guest clusters in flight (R8)
//
// An allocating write of one cluster:
//
//  1. L2 table: loaded, or allocated / copied (alloc.go, dirty, L1 entry
//     queued for stage D of the flush: R3).
//  2. allocCluster: refcount 0 → 1 in the cached refcount block (dirty,
//     written in stage A before any pointer: R1).
//  3. Partial cluster: read the cluster's current content through the
//     driver's own read path (old cluster, compressed, backing or zeros),
//     overlay the guest data, write the whole cluster (COW, R4: the L2 entry
//     that makes it visible goes out only after the next fsync).
//  4. Set the L2 entry to offset|COPIED in the cached table (dirty), only
//     now, so concurrent readers see the old mapping until the data is
//     there. The old host cluster, if any, is freed after the next flush
//     made the new entry durable (R2).

// inPlaceLocked appends to s.ext the host runs of [off, off+n) if every
// cluster is NORMAL with COPIED and cached. REQUIRES: mu held.
func (d *Driver) inPlaceLocked(s *reqState, off, n int64) bool {
	cs := d.geo.ClusterSize()
	end := off + n
	if off < 0 || n < 0 || end > d.geo.Size {
		return false
	}
	for off < end {
		l1i, l2i, in := d.geo.Split(off)
		if l1i >= int64(len(d.l1)) {
			return false
		}
		if d.damage != nil && d.damage.DamagedL1.Has(l1i) {
			return false
		}
		l2Off, copied, err := d.geo.DecodeL1Entry(d.l1[l1i])
		if err != nil || l2Off == 0 || !copied {
			return false
		}
		t := d.l2.get(l2Off)
		if t == nil {
			return false
		}
		e, bm, _ := d.geo.L2EntryAt(t.buf, l2i)
		le, err := d.geo.DecodeL2Entry(e, bm)
		if err != nil || le.Type != format.Normal || !le.Copied {
			return false
		}
		k := min(end-off, cs-in)
		if d.geo.ExtendedL2 && !subclustersAllocated(&d.geo, le.Bitmap, in, k) {
			return false
		}
		host := le.HostOff + in
		if d.overlapsMetadataLocked(host, k) {
			return false
		}
		if m := len(s.ext); m > 0 && s.ext[m-1].HostOff+s.ext[m-1].Len == host {
			s.ext[m-1].Len += k
		} else {
			s.ext = append(s.ext, format.Extent{Kind: format.ExtentData, GuestOff: off, Len: k, HostOff: host})
		}
		off += k
	}
	return true
}

// Write writes r.Iov at r.Off.
func (d *Driver) Write(r *block.Request) {
	s := d.states.get(d)
	d.mu.Lock()
	fast := d.corruptErr == nil && d.headerReady && r.Flags&block.FUA == 0 && d.inPlaceLocked(s, r.Off, r.Len)
	if fast {
		s.epoch, s.held = d.holdLocked(), true
	}
	d.mu.Unlock()
	if !fast {
		d.states.put(s)
		r.Context().Go(func(co *aio.Co) {
			err := d.writeSlow(co, r)
			r.CompleteLater(d.formatErr(block.OpWrite, r.Off, err))
		})
		return
	}
	s.r = r
	s.pending = 1
	var skip int64
	for i := range s.ext {
		x := &s.ext[i]
		start := len(s.iov)
		s.iov = iovSlice(s.iov, r.Iov, skip, x.Len)
		sub := r.Sub()
		sub.Op, sub.Off, sub.Len = block.OpWrite, x.HostOff, x.Len
		sub.Iov = s.iov[start:len(s.iov):len(s.iov)]
		s.pending++
		d.file.Submit(sub, s)
		skip += x.Len
	}
	s.release()
}

func (d *Driver) writeSlow(co *aio.Co, r *block.Request) error {
	d.mu.Lock()
	size := d.geo.Size
	d.mu.Unlock()
	if r.Off < 0 || r.Len < 0 || r.Off+r.Len > size {
		return format.OutOfRange("guest_offset", uint64(max(r.Off, 0)), "write outside the virtual disk")
	}
	d.metaLock.lock(co)
	defer d.metaLock.unlock()
	if err := d.prepareWrite(co, r); err != nil {
		return err
	}
	if err := d.refuseDamagedWrite(co, r.Off, r.Len); err != nil {
		return err
	}
	cs := d.geo.ClusterSize()
	var win [][]byte
	var skip int64
	off, end := r.Off, r.Off+r.Len
	for off < end {
		if off&(cs-1) == 0 && end-off >= 2*cs {
			n, err := d.writeFullRun(co, r, skip, off, end-off)
			if err != nil {
				return d.damagedWriteErr(co, err)
			}
			if n > 0 {
				off += n
				skip += n
				continue
			}
		}
		k := min(end-off, cs-off&(cs-1))
		win = iovSlice(win[:0], r.Iov, skip, k)
		if err := d.writeCluster(co, r, win, off, k); err != nil {
			return d.damagedWriteErr(co, err)
		}
		off += k
		skip += k
	}
	if d.needFlush() {
		if err := d.flushMetadata(co, r); err != nil {
			return err
		}
	}
	if r.Flags&block.FUA != 0 {
		if err := d.flushMetadata(co, r); err != nil {
			return err
		}
		return d.fileSync(co, r)
	}
	return nil
}

// prepareWrite fails writes to a corrupt image and, before the first
// write of the session, clears the autoclear bits we do not maintain
// (R10: bitmaps become inconsistent for QEMU instead of stale) with a
// synced 8-byte header write (R6); when bit 0 was set it then drops the
// bitmaps extension and frees the bitmaps' clusters (dropBitmaps).
func (d *Driver) prepareWrite(co *aio.Co, r *block.Request) error {
	d.mu.Lock()
	err, ready := d.corruptErr, d.headerReady
	clr := d.hdr.AutoclearToClear(0)
	if err == nil {
		err = d.repairPendingLocked() // CheckOpen of a dirty image (lazy.go)
	}
	d.mu.Unlock()
	if err != nil {
		return err
	}
	if ready {
		return nil
	}
	if clr != 0 && d.hdr.Version >= 3 {
		var b [8]byte
		v := d.hdr.AutoclearFeatures &^ clr
		putU64(b[:], v)
		if err := d.fileWrite(co, r, b[:], 88); err != nil {
			return err
		}
		if err := d.fileSync(co, r); err != nil {
			return err
		}
		d.mu.Lock()
		d.hdr.AutoclearFeatures = v
		d.mu.Unlock()
		if clr&format.AutoclearBitmaps != 0 {
			if err := d.dropBitmaps(co, r); err != nil {
				return err
			}
		}
	}
	d.mu.Lock()
	d.headerReady = true
	d.mu.Unlock()
	return nil
}

func putU64(b []byte, v uint64) {
	for i := 0; i < 8; i++ {
		b[i] = byte(v >> (56 - 8*i))
	}
}

// writeCluster writes win (k bytes) at guest offset off, inside one
// cluster. REQUIRES: metaLock held.
func (d *Driver) writeCluster(co *aio.Co, r *block.Request, win [][]byte, off, k int64) error {
	if d.geo.ExtendedL2 {
		return d.writeSubclusters(co, r, win, off, k) // subcluster.go
	}
	cs := d.geo.ClusterSize()
	l1i, l2i, in := d.geo.Split(off)
	gc := off / cs
	d.waitInflight(co, gc, 1)
	t, _, err := d.l2ForWrite(co, r, l1i)
	if err != nil {
		return err
	}
	defer d.l2Unpin(t)
	d.mu.Lock()
	e, bm, _ := d.geo.L2EntryAt(t.buf, l2i)
	le, err := d.geo.DecodeL2Entry(e, bm)
	d.mu.Unlock()
	if err != nil {
		return err
	}
	if le.Type == format.Normal && le.Copied {
		// R7: in place only into COPIED clusters.
		host := le.HostOff + in
		if d.overlapsMetadata(host, k) {
			return d.markCorrupt(co, host, "data write")
		}
		return d.childIO(co, r, d.file, block.OpWrite, host, win, k)
	}
	// A preallocated zero cluster of our own (ZERO_ALLOC with COPIED) is
	// reused in place, as QEMU's handle_copied does: it reads as zeros
	// until the entry flips, so writing into it first is invisible, and
	// no refcount changes.
	reuse := le.Type == format.ZeroAlloc && le.Copied
	var newOff int64
	fresh := false
	if reuse {
		newOff = le.HostOff
		if d.overlapsMetadata(newOff, cs) {
			return d.markCorrupt(co, newOff, "data write")
		}
	} else {
		d.mu.Lock()
		fileEnd := d.geo.FileSize
		d.mu.Unlock()
		if newOff, err = d.allocCluster(co); err != nil {
			return err
		}
		// A cluster at or past FileSize (the file's length at open, grown
		// by every allocation since) has never been written: it reads as
		// zeros (holes, or past EOF, which reads zero-fill).
		fresh = newOff >= fileEnd
	}
	start := off - in
	d.mu.Lock()
	valid := min(cs, d.geo.Size-start) // the last cluster may be partial
	d.mu.Unlock()
	// The data (and COW) I/O runs without metaLock, so allocating writes
	// to other clusters proceed meanwhile; the guest cluster is marked in
	// flight, and anything else that would change its entry waits (R8).
	fl := d.markInflight(gc, 1)
	d.metaLock.unlock()
	// R11: the whole host cluster (up to the end of the disk) is written
	// before anything points at it, so every referenced cluster starts
	// inside the file.
	zeroSrc := le.Type == format.ZeroPlain || le.Type == format.ZeroAlloc ||
		(le.Type == format.Unallocated && (d.backing == nil || start >= d.backingSize))
	switch {
	case in == 0 && k == valid:
		err = d.childIO(co, r, d.file, block.OpWrite, newOff, win, k)
	case zeroSrc && fresh:
		// Nothing to zero: only the guest bytes go out. The cluster
		// starts inside the file once they are written (R11).
		err = d.childIO(co, r, d.file, block.OpWrite, newOff+in, win, k)
	case zeroSrc && !d.noFileZeroes.Load():
		// The rest of the cluster reads as zeros: have the file zero the
		// host cluster (ZERO_RANGE: no data copied) and write only the
		// guest bytes, as QEMU does, instead of a cluster-sized buffer.
		err = d.childIO(co, r, d.file, block.OpWriteZeroes, newOff, nil, valid)
		if block.IsKind(err, block.Unsupported) {
			d.noFileZeroes.Store(true)
			err = d.cowWrite(co, r, win, le, start, in, k, valid, newOff)
		} else if err == nil {
			err = d.childIO(co, r, d.file, block.OpWrite, newOff+in, win, k)
		}
	default:
		err = d.cowWrite(co, r, win, le, start, in, k, valid, newOff)
	}
	d.metaLock.lock(co)
	defer d.finishInflight(fl, gc, 1)
	if err != nil {
		if reuse {
			return err
		}
		return d.abortAlloc(newOff, err)
	}
	ne, err := d.geo.EncodeL2Entry(format.Normal, newOff, true)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.cowPending = true
	d.setL2EntryLocked(t, l2i, ne)
	switch {
	case reuse:
	case le.Type == format.Normal || le.Type == format.ZeroAlloc:
		d.pendingFrees = append(d.pendingFrees, hostFree{le.HostOff, 1})
	case le.Type == format.Compressed:
		d.pendingFrees = append(d.pendingFrees, hostFree{le.Compressed.HostOff, le.Compressed.Size()})
	}
	d.mu.Unlock()
	return nil
}

// cowWrite writes a partial cluster the general way: the cluster's current
// content (old cluster, compressed, backing or zeros) read into a buffer,
// the guest bytes laid over it, the whole cluster written to newOff.
func (d *Driver) cowWrite(co *aio.Co, r *block.Request, win [][]byte, le format.L2Entry, start, in, k, valid, newOff int64) error {
	buf := make([]byte, valid)
	if le.Type != format.ZeroPlain && le.Type != format.ZeroAlloc {
		if err := d.readGuest(co, r, [][]byte{buf}, start, valid); err != nil {
			return err
		}
	}
	block.CopyFromIov(buf[in:in+k], win, 0)
	return d.fileWrite(co, r, buf, newOff)
}

// abortAlloc gives back a cluster that was allocated but never linked
// (QEMU's qcow2_alloc_cluster_abort): nothing points at it, so the
// decrement may happen at once.
func (d *Driver) abortAlloc(off int64, err error) error {
	d.mu.Lock()
	d.pendingFrees = append(d.pendingFrees, hostFree{off, 1})
	d.mu.Unlock()
	return err
}

// needFlush reports whether the dirty metadata outgrew its budget: dirty
// L2 tables are pinned, so they are written back before the cache fills.
func (d *Driver) needFlush() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	// Dirty tables are written back when they fill 7/8 of the cache (the
	// rest keeps room for the tables in-flight requests pin; l2MakeRoom
	// flushes if even that runs out), not earlier: every early write-back
	// of a table that is dirtied again is write amplification.
	return d.l2.dirty > d.l2.capacity-max(d.l2.capacity/8, 2) || len(d.pendingFrees) > 1024
}

// maxRunClusters bounds one batched allocating write.
const maxRunClusters = 1024

// writeFullRun handles a run of whole clusters that all need allocation
// (no COPIED cluster, no COW: every byte is overwritten) inside one L2
// table: the clusters are allocated first, the guest data goes out in one
// child write per host-contiguous piece, and only then do the L2 entries
// change. It returns how many bytes it wrote; 0 means the first cluster
// does not qualify (writeCluster handles it). REQUIRES: metaLock held,
// off cluster aligned, n ≥ 2 clusters.
func (d *Driver) writeFullRun(co *aio.Co, r *block.Request, skip, off, n int64) (int64, error) {
	cs := d.geo.ClusterSize()
	l1i, l2i, _ := d.geo.Split(off)
	d.mu.Lock()
	size := d.geo.Size
	d.mu.Unlock()
	count := min(n/cs, d.geo.L2Entries()-l2i, maxRunClusters, (size-off)/cs)
	if count < 2 {
		return 0, nil
	}
	gc := off / cs
	d.waitInflight(co, gc, count)
	t, _, err := d.l2ForWrite(co, r, l1i)
	if err != nil {
		return 0, err
	}
	defer d.l2Unpin(t)
	old := make([]format.L2Entry, 0, count)
	d.mu.Lock()
	for i := int64(0); i < count; i++ {
		e, bm, _ := d.geo.L2EntryAt(t.buf, l2i+i)
		le, err := d.geo.DecodeL2Entry(e, bm)
		if err != nil {
			d.mu.Unlock()
			return 0, err
		}
		if le.Type == format.Normal && le.Copied {
			break
		}
		old = append(old, le)
	}
	d.mu.Unlock()
	count = int64(len(old))
	if count < 2 {
		return 0, nil
	}
	hosts := make([]int64, count)
	for i := range hosts {
		h, err := d.allocCluster(co)
		if err != nil {
			for _, a := range hosts[:i] {
				d.abortAlloc(a, nil)
			}
			return 0, err
		}
		hosts[i] = h
	}
	// R11 as in writeCluster: whole clusters are written before linking.
	// The writes run without metaLock, the guest clusters in flight (R8).
	fl := d.markInflight(gc, count)
	d.metaLock.unlock()
	var win [][]byte
	for i := int64(0); i < count && err == nil; {
		j := i + 1
		for j < count && hosts[j] == hosts[j-1]+cs {
			j++
		}
		win = iovSlice(win[:0], r.Iov, skip+i*cs, (j-i)*cs)
		err = d.childIO(co, r, d.file, block.OpWrite, hosts[i], win, (j-i)*cs)
		i = j
	}
	d.metaLock.lock(co)
	defer d.finishInflight(fl, gc, count)
	if err != nil {
		for _, a := range hosts {
			d.abortAlloc(a, nil)
		}
		return 0, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cowPending = true
	for i, le := range old {
		ne, err := d.geo.EncodeL2Entry(format.Normal, hosts[i], true)
		if err != nil {
			return 0, err
		}
		d.setL2EntryLocked(t, l2i+int64(i), ne)
		if d.geo.ExtendedL2 { // every subcluster written
			d.setL2BitmapLocked(t, l2i+int64(i), format.BitmapAllocMask)
		}
		switch le.Type {
		case format.Normal, format.ZeroAlloc:
			d.pendingFrees = append(d.pendingFrees, hostFree{le.HostOff, 1})
		case format.Compressed:
			d.pendingFrees = append(d.pendingFrees, hostFree{le.Compressed.HostOff, le.Compressed.Size()})
		}
	}
	return count * cs, nil
}

// inflightAlloc marks guest clusters whose allocating write is running
// without metaLock. INVARIANT: a guest cluster is in Driver.inflight only
// between markInflight and finishInflight, and nothing changes its L2
// entry meanwhile except the owner's link.
type inflightAlloc struct {
	done    bool
	waiters []*aio.Co
}

// waitInflight parks co until none of the guest clusters [first,
// first+n) is in flight and the L2 cache has a slot for l2ForWrite
// (l2MakeRoom). REQUIRES: metaLock held; it is released while
// waiting and held again on return.
func (d *Driver) waitInflight(co *aio.Co, first, n int64) {
	for {
		d.mu.Lock()
		var w *inflightAlloc
		if len(d.inflight) > 0 {
			for c := first; c < first+n; c++ {
				if x := d.inflight[c]; x != nil {
					w = x
					break
				}
			}
		}
		if w == nil {
			d.mu.Unlock()
			if d.l2MakeRoom(co) {
				continue // waited without metaLock: look again
			}
			return
		}
		w.waiters = append(w.waiters, co)
		d.mu.Unlock()
		d.metaLock.unlock()
		for {
			d.mu.Lock()
			done := w.done
			d.mu.Unlock()
			if done {
				break
			}
			co.Yield()
		}
		d.metaLock.lock(co)
	}
}

// markInflight marks [first, first+n) in flight. REQUIRES: metaLock held
// and none of them in flight.
func (d *Driver) markInflight(first, n int64) *inflightAlloc {
	w := &inflightAlloc{}
	d.mu.Lock()
	for c := first; c < first+n; c++ {
		d.inflight[c] = w
	}
	d.mu.Unlock()
	return w
}

// finishInflight ends an in-flight allocation and wakes its waiters.
func (d *Driver) finishInflight(w *inflightAlloc, first, n int64) {
	d.mu.Lock()
	for c := first; c < first+n; c++ {
		delete(d.inflight, c)
	}
	w.done = true
	waiters := w.waiters
	w.waiters = nil
	d.mu.Unlock()
	for _, co := range waiters {
		co.Wake()
	}
}
