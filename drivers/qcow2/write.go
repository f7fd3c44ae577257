package qcow2

import (
	"errors"
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
func (d writer) inPlaceLocked(s *reqState, off, n int64) bool {
	cs := d.mu.geo.ClusterSize()
	end := off + n
	if off < 0 || n < 0 || end > d.mu.geo.Size {
		return false
	}
	for off < end {
		l1i, l2i, in := d.mu.geo.Split(off)
		if l1i >= int64(len(d.mu.l1)) {
			return false
		}
		if d.mu.damage != nil && d.mu.damage.DamagedL1.Has(l1i) {
			return false
		}
		l2Off, copied, err := d.mu.geo.DecodeL1Entry(d.mu.l1[l1i])
		if err != nil || l2Off == 0 || !copied {
			return false
		}
		t := d.l2.get(l2Off)
		if t == nil {
			return false
		}
		e, bm, _ := d.mu.geo.L2EntryAt(t.buf, l2i)
		le, err := d.mu.geo.DecodeL2Entry(e, bm)
		if err != nil || le.Type != format.Normal || !le.Copied {
			return false
		}
		k := min(end-off, cs-in)
		if d.mu.geo.ExtendedL2 && !subclustersAllocated(&d.mu.geo, le.Bitmap, in, k) {
			return false
		}
		host := le.HostOff + in
		if d.dataOverlapsLocked(host, k) { // datafile.go
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

// Write writes r.Iov at r.Off: in place without a lock when it can
// (writeFast, fast.go), in place under mu on an extended-L2 image or when a
// table is only found under the lock, else in a coroutine (writeSlow).
func (d *Driver) Write(r *block.Request) {
	if d.aesFastOK(r) && writerOf(d).writeFast(r) { // aes.go: AES in place up to aesChunk
		return
	}
	s := d.states.get(d)
	d.mu.Lock()
	fast := d.aesFastOK(r) && d.mu.corruptErr == nil && d.headerReady.Load() && r.Flags&block.FUA == 0 && writerOf(d).inPlaceLocked(s, r.Off, r.Len)
	if fast {
		s.epoch, s.held = d.hold(r.Context()), true
	}
	d.mu.Unlock()
	if !fast {
		d.states.put(s)
		r.Context().Go(func(co *aio.Co) {
			err := writerOf(d).writeSlow(co, r)
			r.CompleteLater(d.formatErr(block.OpWrite, r.Off, err))
		})
		return
	}
	writerOf(d).startWrite(s, r)
}

// startWrite issues s.ext, the host runs of an in-place write, holding
// s.epoch; the last child completion completes r.
func (d writer) startWrite(s *reqState, r *block.Request) {
	s.r = r
	s.pending = 1
	src := r.Iov
	if d.aes != nil { // aes.go: the ciphertext in a bounce buffer held until completion
		if s.err = d.aesStage(s, r); s.err != nil {
			s.release()
			return
		}
		src = s.aes.iov[:]
	}
	var skip int64
	for i := range s.ext {
		x := &s.ext[i]
		start := len(s.iov)
		s.iov = iovSlice(s.iov, src, skip, x.Len)
		sub := r.Sub()
		sub.Op, sub.Off, sub.Len = block.OpWrite, x.HostOff, x.Len
		sub.Iov = s.iov[start:len(s.iov):len(s.iov)]
		s.pending++
		d.event(block.DbgWriteAIO)
		d.data.Submit(sub, s)
		skip += x.Len
	}
	s.release()
}

func (d writer) writeSlow(co *aio.Co, r *block.Request) error {
	d.mu.Lock()
	size := d.mu.geo.Size
	d.mu.Unlock()
	if r.Off < 0 || r.Len < 0 || r.Off+r.Len > size {
		return format.OutOfRange("guest_offset", uint64(max(r.Off, 0)), "write outside the virtual disk")
	}
	return d.writeRange(co, r, r.Off, r.Off+r.Len)
}

// writeRange writes r.Iov to [off, end): guest bytes from writeSlow, or
// the VM state area past the disk for SaveVMState (vmstate.go). It takes
// metaLock, and lets it go for the data I/O of allocating writes.
func (d writer) writeRange(co *aio.Co, r *block.Request, off, end int64) error {
	d.metaLock.lock(co)
	defer d.metaLock.unlock()
	if err := d.prepareWrite(co, r); err != nil {
		return err
	}
	if err := d.refuseDamagedWrite(co, off, end-off); err != nil {
		return err
	}
	cs := d.mu.geo.ClusterSize()
	var win [][]byte
	var skip int64
	var run *hostRun
	for off < end {
		if off&(cs-1) == 0 && end-off >= 2*cs {
			// A run of whole clusters that all allocate: plan under
			// metaLock, data I/O without it, commit under it again.
			p, ok, err := d.planRun(co, r, off, end-off)
			if err != nil {
				return d.damagedWriteErr(co, err)
			}
			if p.wait != nil {
				d.metaLock.unlock()
				p.wait(co)
				d.metaLock.lock(co)
				continue
			}
			if ok {
				d.metaLock.unlock()
				ioErr := d.runIO(co, r, skip, &p)
				d.metaLock.lock(co)
				n, err := d.commitRun(&p, ioErr)
				if err != nil {
					return d.damagedWriteErr(co, err)
				}
				off += n
				skip += n
				continue
			}
		}
		k := min(end-off, cs-off&(cs-1))
		win = iovSlice(win[:0], r.Iov, skip, k)
		if d.mu.geo.ExtendedL2 {
			// The same plan → I/O → commit for a cluster with subclusters.
			if run == nil {
				run = newHostRun(end) // alloc_run_extl2.go
				defer run.release(d.metaIO)
			}
			p, err := d.planSubclusters(co, r, off, k, run) // subcluster.go
			switch {
			case err != nil:
			case p.wait != nil:
				d.metaLock.unlock()
				p.wait(co)
				d.metaLock.lock(co)
				continue
			case p.direct:
				d.event(block.DbgWriteAIO)
				err = d.childIO(co, r, d.data, block.OpWrite, p.host+p.in, win, k)
				d.l2Unpin(p.t)
			default:
				d.metaLock.unlock()
				ioErr := d.subclusterIO(co, r, win, &p)
				d.metaLock.lock(co)
				err = d.commitSubclusters(&p, ioErr)
			}
			if err != nil {
				return d.damagedWriteErr(co, err)
			}
			off += k
			skip += k
			continue
		}
		// Plan under metaLock; wait, or do the data I/O, without it (an
		// in-place write keeps it: no metadata changes); commit under it.
		p, err := d.planCluster(co, r, off, k)
		switch {
		case err != nil:
		case p.wait != nil:
			d.metaLock.unlock()
			p.wait(co)
			d.metaLock.lock(co)
			continue
		case p.inPlace:
			d.event(block.DbgWriteAIO)
			err = d.dataWrite(co, r, p.host, off, win, k)
			d.l2Unpin(p.t)
		default:
			d.metaLock.unlock()
			ioErr := d.clusterIO(co, r, win, &p)
			d.metaLock.lock(co)
			err = d.commitCluster(&p, ioErr)
		}
		if err != nil {
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
// (R10: unknown ones, and bitmaps when their directory is damaged) with a
// synced 8-byte header write (R6); when bit 0 was cleared it then drops
// the bitmaps extension where that is safe (dropBitmaps). Then it marks
// the loaded persistent bitmaps in_use on disk (R13, bitmaps.go).
func (d writer) prepareWrite(co *aio.Co, r *block.Request) error {
	d.mu.Lock()
	err, ready := d.mu.corruptErr, d.headerReady.Load()
	clr := d.mu.hdr.AutoclearToClear(d.maintainedAutoclearLocked())
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
	if clr != 0 && d.mu.hdr.Version >= 3 {
		var b [8]byte
		v := d.mu.hdr.AutoclearFeatures &^ clr
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
		if clr&format.AutoclearBitmaps != 0 {
			if err := d.dropBitmaps(co, r); err != nil {
				return err
			}
		}
	}
	// Persistent bitmaps: in_use on disk before any write (bitmaps.go).
	if err := maintOf(d.Driver).markBitmapsInUse(co); err != nil {
		return err
	}
	d.mu.Lock()
	d.headerReady.Store(true)
	d.mu.Unlock()
	return nil
}

func putU64(b []byte, v uint64) {
	for i := 0; i < 8; i++ {
		b[i] = byte(v >> (56 - 8*i))
	}
}

// writeCluster writes win (k bytes) at guest offset off, inside one
// cluster, for the callers that change metadata in one step under
// metaLock (zero writes, compressed writes, amend): planCluster, the data
// I/O and commitCluster with metaLock held throughout. A busy cluster
// returns an *errWait, which the function that took metaLock runs with it
// released before it plans again. writeSlow drives the three steps itself
// and drops metaLock for the I/O. Extended-L2 images go to
// writeSubclusters. REQUIRES: metaLock held; it never releases it.
func (d writer) writeCluster(co *aio.Co, r *block.Request, win [][]byte, off, k int64) error {
	if d.mu.geo.ExtendedL2 {
		return d.writeSubclusters(co, r, win, off, k, nil) // subcluster.go
	}
	p, err := d.planCluster(co, r, off, k)
	switch {
	case err != nil:
		return err
	case p.wait != nil:
		return &errWait{p.wait}
	case p.inPlace:
		d.event(block.DbgWriteAIO)
		err = d.dataWrite(co, r, p.host, off, win, k)
		d.l2Unpin(p.t)
		return err
	}
	return d.commitCluster(&p, d.clusterIO(co, r, win, &p))
}

// clusterPlan is what planCluster decided for one cluster of a write (k
// guest bytes at in inside the cluster at start): either in place into a
// COPIED cluster, or the host cluster newOff (allocated, or a preallocated
// zero cluster of our own reused) that clusterIO fills without metaLock
// and commitCluster links after it. Owned by the coroutine of the write.
type clusterPlan struct {
	t         *l2Table // pinned until commitCluster (or finishInPlace)
	l2i       int64
	le        format.L2Entry // the entry as planned
	inPlace   bool           // host takes the guest bytes; nothing to link
	host      int64
	newOff    int64
	reuse     bool // newOff is le's own preallocated zero cluster
	fresh     bool // newOff was never written: it reads as zeros
	start, in int64
	k, valid  int64 // guest bytes; bytes of the cluster inside the disk
	gc        int64 // guest cluster index
	fl        *inflightAlloc
	// wait, when set, means nothing was planned or held: run it with
	// metaLock released, then plan again (admit).
	wait func(*aio.Co)
}

// planCluster decides how to write k bytes at guest offset off inside one
// cluster of a standard-L2 image and makes the metadata ready for it: the
// L2 table pinned (allocated or copied if needed), and for an allocating
// write the host cluster allocated and the guest cluster marked in flight
// (R8). It does no data I/O. When the cluster is busy (admit) it plans
// nothing and returns the wait in p.wait. REQUIRES: metaLock held; it
// never releases it.
func (d writer) planCluster(co *aio.Co, r *block.Request, off, k int64) (p clusterPlan, err error) {
	cs := d.mu.geo.ClusterSize()
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
	p.le, err = d.mu.geo.DecodeL2Entry(e, bm)
	d.mu.Unlock()
	if err != nil {
		d.l2Unpin(p.t)
		return p, format.L2EntryAt(err, l2Off, l2i) // located, as QEMU words it
	}
	le := p.le
	if le.Type == format.Normal && le.Copied {
		// R7: in place only into COPIED clusters.
		p.inPlace, p.host = true, le.HostOff+in
		if d.dataOverlaps(p.host, k) { // datafile.go
			d.l2Unpin(p.t)
			return p, d.markCorrupt(co, p.host, "data write")
		}
		return p, nil
	}
	// A preallocated zero cluster of our own (ZERO_ALLOC with COPIED) is
	// reused in place, as QEMU's handle_copied does: it reads as zeros
	// until the entry flips, so writing into it first is invisible, and
	// no refcount changes.
	p.reuse = le.Type == format.ZeroAlloc && le.Copied
	if p.reuse {
		p.newOff = le.HostOff
		if d.dataOverlaps(p.newOff, cs) { // datafile.go
			d.l2Unpin(p.t)
			return p, d.markCorrupt(co, p.newOff, "data write")
		}
	} else {
		d.mu.Lock()
		fileEnd := d.mu.geo.FileSize
		d.mu.Unlock()
		if p.newOff, err = d.allocData(co, p.start); err != nil { // datafile.go
			d.l2Unpin(p.t)
			return p, err
		}
		// A cluster at or past FileSize (the file's length at open, grown
		// by every allocation since) has never been written: it reads as
		// zeros (holes, or past EOF, which reads zero-fill).
		p.fresh = p.newOff >= fileEnd && !d.mu.geo.ExternalData
	}
	d.mu.Lock()
	p.valid = min(cs, d.mapEndLocked(p.start)-p.start) // the last cluster may be partial
	d.mu.Unlock()
	// The data (and COW) I/O runs without metaLock, so allocating writes
	// to other clusters proceed meanwhile; the guest cluster is marked in
	// flight, and anything else that would change its entry waits (R8).
	p.fl = d.markInflight(p.gc, 1)
	return p, nil
}

// clusterIO writes the guest bytes of an allocating plan into its new host
// cluster, with whatever copy-on-write the cluster needs. It needs no lock:
// the guest cluster is in flight and the host cluster is the plan's alone.
// R11: the whole host cluster (up to the end of the disk) is written
// before anything points at it, so every referenced cluster starts inside
// the file.
func (d writer) clusterIO(co *aio.Co, r *block.Request, win [][]byte, p *clusterPlan) error {
	le, in, k, valid, start, newOff := p.le, p.in, p.k, p.valid, p.start, p.newOff
	zeroSrc := le.Type == format.ZeroPlain || le.Type == format.ZeroAlloc ||
		(le.Type == format.Unallocated && (d.backing == nil || start >= d.backingSize))
	switch {
	case in == 0 && k == valid:
		d.event(block.DbgWriteAIO)
		return d.dataWrite(co, r, newOff, start, win, k)
	case zeroSrc && p.fresh && !d.encrypted():
		// Nothing to zero: only the guest bytes go out. The cluster
		// starts inside the file once they are written (R11). (Not when
		// encrypted: zero ciphertext is not zero plaintext.)
		d.event(block.DbgWriteAIO)
		return d.childIO(co, r, d.data, block.OpWrite, newOff+in, win, k)
	case zeroSrc && !d.noFileZeroes.Load() && d.aes == nil: // AES: zeroes encrypted by cowWrite
		// The rest of the cluster reads as zeros: have the file zero the
		// host cluster (ZERO_RANGE: no data copied) and write only the
		// guest bytes, as QEMU does, instead of a cluster-sized buffer.
		d.event(block.DbgWriteAIO)
		err := d.childIO(co, r, d.data, block.OpWriteZeroes, newOff, nil, valid)
		if block.IsKind(err, block.Unsupported) {
			d.noFileZeroes.Store(true)
			return d.cowWrite(co, r, win, le, start, in, k, valid, newOff)
		} else if err == nil {
			d.event(block.DbgWriteAIO)
			err = d.childIO(co, r, d.data, block.OpWrite, newOff+in, win, k)
		}
		return err
	default:
		return d.cowWrite(co, r, win, le, start, in, k, valid, newOff)
	}
}

// commitCluster ends an allocating plan after its I/O (ioErr): on success
// the L2 entry points at the new cluster, COPIED (the data is there, so
// readers may see it now), and the old cluster is queued for a free after
// the next flush (R2); on failure the new cluster is given back. Either
// way the guest cluster leaves the in-flight set and the table is unpinned.
// REQUIRES: metaLock held.
func (d writer) commitCluster(p *clusterPlan, ioErr error) error {
	defer d.l2Unpin(p.t)
	defer d.finishInflight(p.fl, p.gc, 1)
	if ioErr != nil {
		if p.reuse {
			return ioErr
		}
		return d.abortData(p.newOff, ioErr) // datafile.go
	}
	ne, err := d.mu.geo.EncodeL2Entry(format.Normal, p.newOff, true)
	if err != nil {
		return err
	}
	le := p.le
	d.mu.Lock()
	d.mu.cowPending = true
	d.setL2EntryLocked(p.t, p.l2i, ne)
	switch {
	case p.reuse:
	default:
		d.freeDataLocked(le) // datafile.go
	}
	d.mu.Unlock()
	return nil
}

// cowWrite writes a partial cluster the general way: the cluster's current
// content (old cluster, compressed, backing or zeros) read into a buffer,
// the guest bytes laid over it, the whole cluster written to newOff.
func (d writer) cowWrite(co *aio.Co, r *block.Request, win [][]byte, le format.L2Entry, start, in, k, valid, newOff int64) error {
	buf := make([]byte, valid)
	if le.Type != format.ZeroPlain && le.Type != format.ZeroAlloc {
		d.event(block.DbgCowRead)
		if err := d.readGuest(co, r, [][]byte{buf}, start, valid); err != nil {
			return err
		}
	}
	block.CopyFromIov(buf[in:in+k], win, 0)
	d.event(block.DbgWriteAIO) // guest data and COW in one write, as QEMU's merged COW
	return d.dataWrite(co, r, newOff, start, [][]byte{buf}, valid)
}

// abortAlloc gives back a cluster that was allocated but never linked
// (QEMU's qcow2_alloc_cluster_abort): nothing points at it, so the
// decrement may happen at once.
func (d metaIO) abortAlloc(off int64, err error) error {
	d.mu.Lock()
	d.mu.pendingFrees = append(d.mu.pendingFrees, hostFree{off, 1})
	d.mu.Unlock()
	return err
}

// needFlush reports whether the dirty metadata outgrew its budget: dirty
// L2 tables are pinned, so they are written back before the cache fills.
func (d metaIO) needFlush() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	// Dirty tables are written back when they fill 7/8 of the cache (the
	// rest keeps room for the tables in-flight requests pin; roomWait
	// flushes if even that runs out), not earlier: every early write-back
	// of a table that is dirtied again is write amplification.
	return d.l2.dirty > d.l2.capacity-max(d.l2.capacity/8, 2) || len(d.mu.pendingFrees) > 1024
}

// maxRunClusters bounds one batched allocating write.
const maxRunClusters = 1024

// runPlan is what planRun decided for a run of whole clusters that all
// need allocation, inside one L2 table: the old entries, the host clusters
// allocated for them, the guest clusters in flight. Owned by the write's
// coroutine.
type runPlan struct {
	t     *l2Table // pinned until commitRun
	l2i   int64
	gc    int64            // first guest cluster
	old   []format.L2Entry // the entries replaced, one per cluster
	hosts []int64          // the new host clusters
	// reused[i]: hosts[i] is old[i]'s own preallocated zero cluster
	// (ZERO_ALLOC with COPIED), written in place as planCluster does.
	reused []bool
	fl     *inflightAlloc
	// wait, when set, means nothing was planned or held: run it with
	// metaLock released, then plan again (admit).
	wait func(*aio.Co)
}

// planRun plans a run of whole clusters at off (cluster aligned, n ≥ 2
// clusters) that need allocation or are COPIED data clusters written in
// place (no COW: every byte is overwritten; on extended-L2 images the run
// stops at a COPIED cluster) inside one L2 table: the table pinned, the host
// clusters allocated, the guest clusters marked in flight (R8). ok false
// (and nothing held) means the first clusters do not qualify: writeCluster
// handles them; with p.wait set, the clusters are busy (admit): run the
// wait with metaLock released and plan again. REQUIRES: metaLock held; it
// never releases it.
func (d writer) planRun(co *aio.Co, r *block.Request, off, n int64) (p runPlan, ok bool, err error) {
	cs := d.mu.geo.ClusterSize()
	l1i, l2i, _ := d.mu.geo.Split(off)
	d.mu.Lock()
	size := d.mapEndLocked(off)
	d.mu.Unlock()
	count := min(n/cs, d.mu.geo.L2Entries()-l2i, maxRunClusters, (size-off)/cs)
	if count < 2 {
		return p, false, nil
	}
	p.gc, p.l2i = off/cs, l2i
	if p.wait = d.admit(co, p.gc, count); p.wait != nil {
		return p, false, nil
	}
	var l2Off int64
	if p.t, l2Off, err = d.l2ForWrite(co, r, l1i); err != nil {
		return p, false, err
	}
	p.old = make([]format.L2Entry, 0, count)
	d.mu.Lock()
	for i := int64(0); i < count; i++ {
		e, bm, _ := d.mu.geo.L2EntryAt(p.t.buf, l2i+i)
		le, err := d.mu.geo.DecodeL2Entry(e, bm)
		if err != nil {
			d.mu.Unlock()
			d.l2Unpin(p.t)
			return p, false, format.L2EntryAt(err, l2Off, l2i+i) // located, as QEMU words it
		}
		if le.Type == format.Normal && le.Copied && d.mu.geo.ExtendedL2 {
			break
		}
		// iotfilters: a COPIED data cluster joins the run in place
		// (runHost), so that a write over data, preallocated zero and
		// data clusters contiguous on the host is one host write.
		p.old = append(p.old, le)
	}
	d.mu.Unlock()
	count = int64(len(p.old))
	if count < 2 {
		d.l2Unpin(p.t)
		return p, false, nil
	}
	p.hosts = make([]int64, count)
	p.reused = make([]bool, count)
	d.setAllocRun(count) // a new refcount block goes after the run (alloc_place.go)
	defer d.setAllocRun(0)
	for i := 0; i < len(p.hosts); i++ {
		if k := p.newRun(d, i); k >= 2 { // alloc_run_extl2.go: QEMU's placement
			hosts, err := d.allocFreeRun(co, k)
			if err != nil {
				p.abort(d, i)
				d.l2Unpin(p.t)
				return p, false, err
			}
			copy(p.hosts[i:], hosts)
			i += len(hosts) - 1
			continue
		}
		h, reuse, err := d.runHost(co, p.old[i], (p.gc+int64(i))*cs)
		if err != nil {
			p.abort(d, i)
			d.l2Unpin(p.t)
			return p, false, err
		}
		p.hosts[i], p.reused[i] = h, reuse
	}
	p.fl = d.markInflight(p.gc, count)
	return p, true, nil
}

// runIO writes the run's guest data (skip: its place in r.Iov) in one
// child write per host-contiguous piece. R11 as in clusterIO: whole
// clusters are written before linking. No lock: the guest clusters are in
// flight and the host clusters are the plan's alone.
func (d writer) runIO(co *aio.Co, r *block.Request, skip int64, p *runPlan) error {
	cs := d.mu.geo.ClusterSize()
	count := int64(len(p.hosts))
	var win [][]byte
	var err error
	for i := int64(0); i < count && err == nil; {
		j := i + 1
		for j < count && p.hosts[j] == p.hosts[j-1]+cs {
			j++
		}
		win = iovSlice(win[:0], r.Iov, skip+i*cs, (j-i)*cs)
		d.event(block.DbgWriteAIO)
		err = d.dataWrite(co, r, p.hosts[i], (p.gc+i)*cs, win, (j-i)*cs)
		i = j
	}
	return err
}

// commitRun links the run after its I/O (ioErr): every entry points at
// its new cluster, COPIED, and the old clusters are queued for a free
// after the next flush (R2); on failure the new clusters are given back.
// It returns the bytes written. REQUIRES: metaLock held.
func (d writer) commitRun(p *runPlan, ioErr error) (int64, error) {
	count := int64(len(p.hosts))
	defer d.l2Unpin(p.t)
	defer d.finishInflight(p.fl, p.gc, count)
	if ioErr != nil {
		p.abort(d, len(p.hosts))
		return 0, ioErr
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, le := range p.old {
		if p.reused[i] && le.Type == format.Normal {
			continue // written in place: the entry stays as it is
		}
		d.mu.cowPending = true
		ne, err := d.mu.geo.EncodeL2Entry(format.Normal, p.hosts[i], true)
		if err != nil {
			return 0, err
		}
		d.setL2EntryLocked(p.t, p.l2i+int64(i), ne)
		if d.mu.geo.ExtendedL2 { // every subcluster written
			d.setL2BitmapLocked(p.t, p.l2i+int64(i), format.BitmapAllocMask)
		}
		switch {
		case p.reused[i]:
		default:
			d.freeDataLocked(le) // datafile.go
		}
	}
	return count * d.mu.geo.ClusterSize(), nil
}

// inflightAlloc marks guest clusters whose allocating write is running
// without metaLock. INVARIANT: a guest cluster is in Driver.inflight only
// between markInflight and finishInflight, and nothing changes its L2
// entry meanwhile except the owner's link.
type inflightAlloc struct {
	done    bool
	waiters []*aio.Co
}

// admit reports whether a write may plan a change of guest clusters
// [first, first+n) now: none of them in flight (R8) and a tier-1 slot for
// l2ForWrite (roomWait). Otherwise it registers co with what it must wait
// for and returns the wait, which the caller runs with metaLock released
// before it asks again. nil: go ahead. REQUIRES: metaLock held; it never
// releases it.
func (d writer) admit(co *aio.Co, first, n int64) func(*aio.Co) {
	d.mu.Lock()
	var w *inflightAlloc
	if len(d.mu.inflight) > 0 {
		for c := first; c < first+n; c++ {
			if x := d.mu.inflight[c]; x != nil {
				w = x
				break
			}
		}
	}
	if w == nil {
		d.mu.Unlock()
		return d.roomWait(co)
	}
	w.waiters = append(w.waiters, co)
	d.mu.Unlock()
	return func(co *aio.Co) {
		for {
			d.mu.Lock()
			done := w.done
			d.mu.Unlock()
			if done {
				return
			}
			co.Yield()
		}
	}
}

// errWait is the error a one-step metadata change (writeCluster,
// writeSubclusters, lockEntry, ...) returns when admit found its clusters
// busy: nothing is planned or held. The function that took metaLock (and
// only it) releases metaLock, runs wait, takes metaLock again and plans
// again from where it stopped (waitFor).
type errWait struct{ wait func(*aio.Co) }

func (e *errWait) Error() string {
	return "qcow2: metadata busy (an allocating write in flight or no free L2 cache slot) where none was expected"
}

// waitFor returns the wait an *errWait carries, or nil for any other error.
func waitFor(err error) func(*aio.Co) {
	var w *errWait
	if errors.As(err, &w) {
		return w.wait
	}
	return nil
}

// admitted is admit for the callers that plan and change in one step: nil
// (go ahead), or an *errWait for the function that took metaLock.
// REQUIRES: metaLock held; it never releases it.
func (d writer) admitted(co *aio.Co, first, n int64) error {
	if wait := d.admit(co, first, n); wait != nil {
		return &errWait{wait}
	}
	return nil
}

// markInflight marks [first, first+n) in flight. REQUIRES: metaLock held
// and none of them in flight.
func (d writer) markInflight(first, n int64) *inflightAlloc {
	w := &inflightAlloc{}
	d.mu.Lock()
	for c := first; c < first+n; c++ {
		d.mu.inflight[c] = w
	}
	d.mu.Unlock()
	return w
}

// finishInflight ends an in-flight allocation and wakes its waiters.
func (d writer) finishInflight(w *inflightAlloc, first, n int64) {
	d.mu.Lock()
	for c := first; c < first+n; c++ {
		delete(d.mu.inflight, c)
	}
	w.done = true
	waiters := w.waiters
	w.waiters = nil
	d.mu.Unlock()
	for _, co := range waiters {
		co.Wake()
	}
}
