package qcow2

import (
	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Discard and write-zeroes (qcow2.md §2.5), in a coroutine under
// metaLock. Whole clusters change their L2 entry only; the entry reaches
// the disk in stage C of the next flush and the old host cluster is freed
// after that (R2). Host ranges are not punched here (a shrink punches
// what it frees, shrink.go, keeping R9).
//
//	                      v3                           v2, no backing   v2 + backing
//	discard, whole       ZERO_PLAIN, free old          entry 0, free    nothing (success)
//	zeroes, whole        COPIED normal → ZERO_ALLOC    entry 0, free    real zeros
//	                     (MayUnmap: ZERO_PLAIN, free)
//	discard, partial     ignored
//	zeroes, partial      real zeros, unless the cluster already reads as
//	                     zero (v3 unallocated: the whole cluster gets ZERO_PLAIN)
//	zeroes, unallocated  v3: ZERO_PLAIN (QEMU's zero_in_l2_slice does too)

type zeroMode uint8

const (
	modeDiscard zeroMode = iota
	modeZero
	modeZeroUnmap
)

// Discard drops whole clusters of the range.
func (d *Driver) Discard(r *block.Request) {
	writerOf(d).runZero(r, modeDiscard, block.OpDiscard)
}

// WriteZeroes makes the range read as zeros.
func (d *Driver) WriteZeroes(r *block.Request) {
	m := modeZero
	if r.Flags&block.MayUnmap != 0 {
		m = modeZeroUnmap
	}
	writerOf(d).runZero(r, m, block.OpWriteZeroes)
}

func (d writer) runZero(r *block.Request, m zeroMode, op block.Op) {
	r.Context().Go(func(co *aio.Co) {
		err := d.zeroRange(co, r, m)
		if err == nil && r.Flags&block.FUA != 0 {
			d.metaLock.lock(co)
			err = d.flushMetadata(co, r)
			d.metaLock.unlock()
			if err == nil {
				err = d.fileSync(co, r)
			}
		}
		r.CompleteLater(d.formatErr(op, r.Off, err))
	})
}

func (d writer) zeroRange(co *aio.Co, r *block.Request, m zeroMode) error {
	d.mu.Lock()
	size := d.mu.geo.Size
	d.mu.Unlock()
	if r.Off < 0 || r.Len < 0 || r.Off+r.Len > size {
		return format.OutOfRange("guest_offset", uint64(max(r.Off, 0)), "request outside the virtual disk")
	}
	d.metaLock.lock(co)
	defer d.metaLock.unlock()
	if err := d.prepareWrite(co, r); err != nil {
		return err
	}
	if err := d.refuseDamagedWrite(co, r.Off, r.Len); err != nil {
		return err
	}
	if m != modeDiscard {
		if err := d.zeroDataRaw(co, r, r.Off, r.Len); err != nil { // datafile.go
			return err
		}
	}
	// zeroRange took metaLock, so it is the one that drops it to wait for
	// a busy cluster (an *errWait), then zeroes on from that cluster.
	pos := r.Off
	for {
		err := d.zeroRangeLocked(co, r, &pos, r.Off+r.Len, m)
		if wait := waitFor(err); wait != nil {
			d.metaLock.unlock()
			wait(co)
			d.metaLock.lock(co)
			continue
		}
		if err != nil {
			return d.damagedWriteErr(co, err)
		}
		break
	}
	if d.needFlush() {
		return d.flushMetadata(co, r)
	}
	return nil
}

// zeroRangeLocked zeroes or discards guest bytes [*pos, end), which the
// caller has checked against the disk size, moving *pos past each cluster
// done. A busy cluster returns an *errWait with *pos at it: the function
// that took metaLock waits with it released and calls again. REQUIRES:
// metaLock held, prepareWrite done; it never releases metaLock.
func (d writer) zeroRangeLocked(co *aio.Co, r *block.Request, pos *int64, end int64, m zeroMode) error {
	if d.mu.geo.ExtendedL2 && m != modeDiscard {
		return d.zeroRangeExtL2(co, r, pos, end, m) // extl2_zero.go
	}
	d.mu.Lock()
	size := d.mu.geo.Size
	d.mu.Unlock()
	cs := d.mu.geo.ClusterSize()
	off := *pos
	var zeros []byte
	for off < end {
		in := off & (cs - 1)
		k := min(end-off, cs-in)
		whole := in == 0 && (k == cs || off+k == size)
		var err error
		switch {
		case d.mu.geo.ExtendedL2:
			err = d.zeroSubclusters(co, r, off, k, m) // subcluster.go
		case whole:
			err = d.zeroCluster(co, r, off, m)
		case m != modeDiscard:
			if zeros == nil {
				zeros = make([]byte, cs)
			}
			err = d.zeroPartial(co, r, off, zeros[:k])
		}
		if err != nil {
			return err
		}
		off += k
		*pos = off
	}
	return nil
}

// peekEntry returns the L2 entry of guest offset off without allocating
// anything; ok is false when the L1 entry is empty.
func (d writer) peekEntry(co *aio.Co, r *block.Request, off int64) (le format.L2Entry, ok bool, err error) {
	if _, err := d.mapRange(co, r, nil, off, 1); err != nil {
		return le, false, err
	}
	l1i, l2i, _ := d.mu.geo.Split(off)
	d.mu.Lock()
	defer d.mu.Unlock()
	l2Off := int64(d.mu.l1[l1i] & format.OffsetMask)
	if l2Off == 0 {
		return le, false, nil
	}
	t := d.l2.get(l2Off)
	if t == nil { // evicted since mapRange: the caller takes the general path
		return le, true, errMiss
	}
	e, bm, _ := d.mu.geo.L2EntryAt(t.buf, l2i)
	le, err = d.mu.geo.DecodeL2Entry(e, bm)
	return le, true, err
}

func readsZero(t format.ClusterType, backing bool) bool {
	return t == format.ZeroPlain || t == format.ZeroAlloc || (t == format.Unallocated && !backing)
}

func (d writer) zeroPartial(co *aio.Co, r *block.Request, off int64, zeros []byte) error {
	// An allocating write to another part of this cluster may be in
	// flight: until it links its cluster the entry still reads
	// Unallocated, and zeroing the whole cluster on that evidence would
	// wipe the write's data. Wait for it first (an *errWait for zeroRange,
	// which took metaLock; metaLock keeps new allocations out after it).
	if err := d.admitted(co, off/d.mu.geo.ClusterSize(), 1); err != nil {
		return err
	}
	le, _, err := d.peekEntry(co, r, off)
	if err != nil && err != errMiss {
		return err
	}
	if err == nil && readsZero(le.Type, d.backing != nil) {
		// The whole cluster reads as zero already. Like QEMU, a version 3
		// image records that with the zero flag (so qemu-img map shows
		// the same); a version 2 image needs nothing.
		if d.mu.geo.ZeroFlag && le.Type == format.Unallocated {
			cs := d.mu.geo.ClusterSize()
			return d.zeroCluster(co, r, off&^(cs-1), modeZero)
		}
		return nil
	}
	if err == nil && le.Type == format.Unallocated && d.backing != nil && d.mu.geo.ZeroFlag {
		// The rest of the cluster may read as zero from the backing
		// node: then the whole cluster becomes a zero cluster (zero_alloc.go).
		ok, err := d.restReadsZero(co, r, off, int64(len(zeros)))
		if err != nil {
			return err
		}
		if ok {
			cs := d.mu.geo.ClusterSize()
			return d.zeroCluster(co, r, off&^(cs-1), modeZero)
		}
	}
	return d.writeCluster(co, r, [][]byte{zeros}, off, int64(len(zeros)))
}

func (d writer) zeroCluster(co *aio.Co, r *block.Request, off int64, m zeroMode) error {
	hasBacking := d.backing != nil
	le, mapped, err := d.peekEntry(co, r, off)
	if err != nil && err != errMiss {
		return err
	}
	// An unallocated cluster with nothing below reads as zero already.
	// Discard leaves it so; write-zeroes on version 3 sets the zero flag
	// anyway (allocating the L2 table if needed), as QEMU 7.2 does.
	skipUnallocated := m == modeDiscard || !d.mu.geo.ZeroFlag
	if err == nil && !mapped && !hasBacking && skipUnallocated {
		return nil
	}
	if err == nil && (le.Type == format.ZeroPlain || (le.Type == format.Unallocated && !hasBacking && skipUnallocated)) {
		return nil
	}
	if !d.mu.geo.ZeroFlag && hasBacking {
		if m == modeDiscard {
			// No entry can hide the backing file: the discard does
			// nothing and succeeds, as in QEMU 7.2 (its driver answers
			// ENOTSUP and the block layer takes that as done; a discard
			// is only advice).
			return nil
		}
		zeros := make([]byte, min(d.mu.geo.ClusterSize(), d.mu.geo.Size-off))
		return d.writeCluster(co, r, [][]byte{zeros}, off, int64(len(zeros)))
	}
	t, l2i, le, e, _, err := d.lockEntry(co, r, off)
	if err != nil {
		return err
	}
	defer d.l2Unpin(t)
	defer d.mu.Unlock()
	var ne uint64
	free := true
	switch {
	case !d.mu.geo.ZeroFlag:
		ne = 0
	case m == modeZero && le.Type == format.Normal && le.Copied:
		ne, err = d.mu.geo.EncodeL2Entry(format.ZeroAlloc, le.HostOff, true)
		free = false
	case m == modeZero && le.Type == format.ZeroAlloc:
		return nil
	default:
		ne, err = d.mu.geo.EncodeL2Entry(format.ZeroPlain, 0, false)
	}
	if err != nil {
		return err
	}
	if ne == e {
		return nil
	}
	d.setL2EntryLocked(t, l2i, ne)
	if free {
		d.freeDataLocked(le) // datafile.go
	}
	return nil
}
