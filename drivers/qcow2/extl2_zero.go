package qcow2

import (
	"errors"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Write-zeroes on images with extended L2 entries, with the on-disk
// result QEMU 7.2 leaves (iotest 271), docs/spec/qcow2.md §1.10.
//
// QEMU's block layer cuts a write-zeroes into pieces at subcluster
// boundaries: an unaligned head (up to the first subcluster boundary),
// the aligned middle, an unaligned tail. The qcow2 driver then zeroes
// each piece with subcluster bits, or answers "not supported", and the
// block layer writes real zeros over that whole piece instead (an
// ordinary allocating write: the subclusters become allocated). A piece
// is not supported when
//
//   - it covers a subcluster only partly (not to the image's end) and the
//     rest of that subcluster does not read as zeros, or the subcluster is
//     allocated data or compressed;
//   - it covers part of a compressed cluster (a compressed cluster can
//     only be zeroed whole).
//
// Zeroing part of a cluster sets the zero bits of exactly the subclusters
// touched (the last cluster of an image that ends inside it included)
// and clears their allocation bits; zeroing a whole cluster sets all 32
// zero bits, and with MayUnmap (or for a compressed cluster) drops its
// host cluster.

// errZeroNotSup is a piece the subcluster bits cannot express; the
// caller writes zeros over it.
var errZeroNotSup = errors.New("qcow2: write-zeroes not supported for this range")

// zeroRangeExtL2 is zeroRangeLocked for write-zeroes (not discard) on an
// extended-L2 image: [*pos, end) piece by piece; *pos moves past each
// piece done (a busy cluster returns an *errWait with *pos at the start
// of its piece, which is then redone whole: every step is idempotent).
// REQUIRES: metaLock held.
func (d writer) zeroRangeExtL2(co *aio.Co, r *block.Request, pos *int64, end int64, m zeroMode) error {
	scs := d.mu.geo.SubclusterSize()
	for off := *pos; off < end; off = *pos {
		n := end - off
		if head := off % scs; head != 0 {
			n = min(n, scs-head)
		} else if tail := end % scs; tail != 0 && n > scs {
			n -= tail
		}
		err := d.zeroPieceExtL2(co, r, off, n, m)
		if err == errZeroNotSup {
			err = d.writeZerosExtL2(co, r, off, n)
		}
		if err != nil {
			return err
		}
		*pos = off + n
	}
	return nil
}

// zeroPieceExtL2 zeroes one piece with subcluster bits (QEMU's
// qcow2_co_pwrite_zeroes), or returns errZeroNotSup.
func (d writer) zeroPieceExtL2(co *aio.Co, r *block.Request, off, n int64, m zeroMode) error {
	scs := d.mu.geo.SubclusterSize()
	d.mu.Lock()
	size := d.mu.geo.Size
	d.mu.Unlock()
	head := off % scs
	tail := (off+n+scs-1)/scs*scs - (off + n)
	if off+n == size {
		tail = 0
	}
	if head != 0 || tail != 0 {
		// Inside one subcluster: the rest of it must read as zeros and
		// it must not hold data, then the whole subcluster is zeroed.
		le, err := d.entryForWrite(co, r, off)
		if err != nil {
			return err
		}
		sc := (off & (d.mu.geo.ClusterSize() - 1)) / scs
		switch d.mu.geo.SubclusterType(le, int(sc)) {
		case format.ZeroPlain, format.ZeroAlloc:
		case format.Unallocated, format.UnallocatedAlloc:
			if !d.subclusterReadsZero(le, sc) {
				return errZeroNotSup
			}
		default:
			return errZeroNotSup
		}
		off -= head
		n = min(scs, size-off)
	}
	cs := d.mu.geo.ClusterSize()
	for end := off + n; off < end; {
		in := off & (cs - 1)
		k := min(end-off, cs-in)
		if err := d.zeroClusterExtL2(co, r, off, k, in == 0 && (k == cs || off+k == size), m); err != nil {
			return err
		}
		off += k
	}
	return nil
}

// zeroClusterExtL2 sets the zero bits of the subclusters of [off, off+k)
// inside one cluster (whole: all of them, QEMU's zero_in_l2_slice;
// otherwise QEMU's zero_l2_subclusters, errZeroNotSup on a compressed
// cluster).
func (d writer) zeroClusterExtL2(co *aio.Co, r *block.Request, off, k int64, whole bool, m zeroMode) error {
	if whole {
		return d.updateSubclusters(co, r, off, func(le format.L2Entry, e, bm uint64) (uint64, uint64, bool) {
			if le.Type == format.Compressed || (m == modeZeroUnmap && le.HostOff != 0) {
				return 0, format.BitmapZeroMask, true
			}
			return e, format.BitmapZeroMask, false
		})
	}
	scs := d.mu.geo.SubclusterSize()
	in := off & (d.mu.geo.ClusterSize() - 1)
	zm := scMask(in/scs, (in+k-1)/scs)
	notSup := false
	err := d.updateSubclusters(co, r, off, func(le format.L2Entry, e, bm uint64) (uint64, uint64, bool) {
		if le.Type == format.Compressed {
			notSup = true
			return e, bm, false
		}
		return e, (bm | zm<<32) &^ zm, false
	})
	if err == nil && notSup {
		return errZeroNotSup
	}
	return err
}

// writeZerosExtL2 is the block layer's fallback for a piece: zeros
// written over [off, off+n), cluster by cluster, as a guest write.
func (d writer) writeZerosExtL2(co *aio.Co, r *block.Request, off, n int64) error {
	cs := d.mu.geo.ClusterSize()
	zeros := make([]byte, min(n, cs))
	run := newHostRun(off + n) // alloc_run_extl2.go: one write, as QEMU's
	defer run.release(d.metaIO)
	for end := off + n; off < end; {
		k := min(end-off, cs-off&(cs-1))
		if err := d.writeSubclusters(co, r, [][]byte{zeros[:k]}, off, k, run); err != nil {
			return err
		}
		off += k
	}
	return nil
}
