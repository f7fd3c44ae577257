package qcow2

import (
	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Zero clusters in internal snapshots, for a downgrade to version 2
// (QEMU's qcow2_expand_zero_clusters over the snapshot L1 tables; iotest
// 061's "zero expansion on inactive clusters" cases), and the progress of
// the whole expansion (qemu-img amend -p).
//
// The active tables are expanded first (expandZeroClusters): a table the
// active L1 shares with a snapshot is copied there on its first change,
// so what is left with zero entries afterwards is a snapshot's own table
// (shared by several snapshots perhaps). In it, a plain zero cluster
// becomes unallocated when the image has no backing file (it reads as
// zeros either way); otherwise it gets a fresh cluster of zeros with the
// table's refcount (one per snapshot that reaches the table, as QEMU), and
// COPIED only when that is 1. A preallocated zero cluster keeps its host
// cluster, which gets real zeros. The zeros and refcounts reach the disk
// before the changed table does: the table is dirty in the cache and goes
// out in stage C of a flush, after stage A's refcount blocks and the sync
// of the data written since (cowPending; R1, R4).

// expandProgress counts the L1 entries a zero expansion visits, active
// and snapshots', for AmendOptions.Progress.
type expandProgress struct {
	done, total int64
	fn          func(done, total int64)
}

func (p *expandProgress) step() {
	p.done++
	if p.fn != nil {
		p.fn(p.done, p.total)
	}
}

// newExpandProgress sizes the count: the active L1 entries and every
// snapshot's. REQUIRES: mu not held.
func (d maintOps) newExpandProgress(fn func(done, total int64)) *expandProgress {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := &expandProgress{total: int64(len(d.mu.l1)), fn: fn}
	for _, sn := range d.mu.snaps {
		p.total += int64(sn.L1Entries)
	}
	return p
}

// expandSnapshotZeros expands the zero clusters of every snapshot's L2
// tables. REQUIRES: metaLock held, the active tables expanded.
func (d maintOps) expandSnapshotZeros(co *aio.Co, p *expandProgress) error {
	// The tables the active pass copied are freed from the active L1 at
	// a flush: only then are the snapshot tables' refcounts theirs alone.
	if err := d.flushAllMetadata(co, nil); err != nil {
		return err
	}
	d.mu.Lock()
	snaps := d.mu.snaps
	d.mu.Unlock()
	for i := range snaps {
		l1, err := d.readSnapshotL1(co, &snaps[i], i)
		if err != nil {
			return err
		}
		for _, e := range l1 {
			if l2Off := int64(e & format.OffsetMask); l2Off != 0 {
				if err := d.expandTableZeros(co, l2Off); err != nil {
					return err
				}
			}
			p.step()
		}
	}
	return nil
}

// expandTableZeros expands the zero entries of the inactive L2 table at
// l2Off. REQUIRES: metaLock held.
func (d maintOps) expandTableZeros(co *aio.Co, l2Off int64) error {
	rc, err := d.refcountOf(co, l2Off)
	if err != nil {
		return err
	}
	t, err := d.l2Acquire(co, nil, l2Off)
	if err != nil {
		return err
	}
	defer d.l2Release(t)
	cs := d.mu.geo.ClusterSize()
	for j := int64(0); j < d.mu.geo.L2Entries(); j++ {
		d.mu.Lock()
		e, bm, _ := d.mu.geo.L2EntryAt(t.buf, j)
		d.mu.Unlock()
		le, err := d.mu.geo.DecodeL2Entry(e, bm)
		if err != nil {
			return format.WithField(err, "l2_table@"+format.HexString(uint64(l2Off))+format.Indexed("", uint64(j)))
		}
		var ne uint64
		switch {
		case le.Type == format.ZeroPlain && d.backing == nil:
			ne = 0
		case le.Type == format.ZeroPlain:
			host, err := d.allocCluster(co)
			if err != nil {
				return err
			}
			for k := uint64(1); k < rc; k++ {
				if err := d.incref(co, host); err != nil {
					return err
				}
			}
			if d.aes != nil { // aes.go
				return errAESZeroExpand
			}
			if err := d.childIO(co, nil, d.data, block.OpWriteZeroes, host, nil, cs); err != nil {
				return err
			}
			if ne, err = d.mu.geo.EncodeL2Entry(format.Normal, host, rc == 1); err != nil {
				return err
			}
		case le.Type == format.ZeroAlloc:
			if d.overlapsMetadata(le.HostOff, cs) {
				return d.markCorrupt(co, le.HostOff, "zero cluster expansion")
			}
			if d.aes != nil { // aes.go
				return errAESZeroExpand
			}
			if err := d.childIO(co, nil, d.data, block.OpWriteZeroes, le.HostOff, nil, cs); err != nil {
				return err
			}
			if ne, err = d.mu.geo.EncodeL2Entry(format.Normal, le.HostOff, le.Copied); err != nil {
				return err
			}
		default:
			continue
		}
		d.mu.Lock()
		d.mu.cowPending = true // the zeros are synced before the table goes out (R4)
		d.setL2EntryLocked(t, j, ne)
		d.mu.Unlock()
		if d.needFlush() {
			if err := d.flushAllMetadata(co, nil); err != nil {
				return err
			}
		}
	}
	return nil
}
