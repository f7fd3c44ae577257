package qcow2

import (
	"fmt"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/internal/invariants"
)

// Assertions where the driver's risk is (docs/spec/qcow2.md §2.9). Each
// is a check that returns the violation it finds, called from the code it
// guards as
//
//	if invariants.Enabled {
//		if err := d.checkX(...); err != nil {
//			failInvariant(err)
//		}
//	}
//
// so ordinary builds compile it away, the failure (formatting, boxing) is
// only on the cold branch, and a test makes each one fire by calling the
// check on a state it corrupted (export_test.go).

// failInvariant panics with the invariants prefix. Cold: called only on a
// failed check.
//
//go:noinline
func failInvariant(err error) {
	invariants.Failf("qcow2: %v", err)
}

// flushStage names the stages of flushStages (R12), in their order.
type flushStage uint8

const (
	stageIdle      flushStage = iota
	stageRefblocks            // A: refcount blocks (and COW data), fsync
	stageReftable             // B: refcount table entries, fsync
	stageL2                   // C: L2 tables, fsync
	stageL1                   // D: L1 entries, fsync
)

// checkStageLocked checks, as flushStages enters stage s, that the stages
// before it ran in order and left nothing of theirs dirty: R12's order
// (refcount blocks, then table entries, then L2 tables, then L1 entries),
// which R1 and R3 rest on. Dirty refcount blocks may stay behind stage A
// only in lazy-refcount mode. REQUIRES: mu held; metaLock held.
func (d metaIO) checkStageLocked(s flushStage) error {
	if s != d.mu.flushAt+1 {
		return fmt.Errorf("flush stage %d entered after stage %d", s, d.mu.flushAt)
	}
	if s > stageRefblocks && d.mu.cowPending {
		return fmt.Errorf("flush stage %d entered with COW data not yet synced (R4)", s)
	}
	if s > stageRefblocks && !d.lazySkipsLocked() && d.anyDirtyRefblockLocked() {
		return fmt.Errorf("flush stage %d entered with dirty refcount blocks (R1)", s)
	}
	if s > stageReftable && len(d.mu.dirtyRT) > 0 {
		return fmt.Errorf("flush stage %d entered with %d dirty refcount table entries (R3)", s, len(d.mu.dirtyRT))
	}
	if s > stageL2 && d.l2.dirtyCount() > 0 {
		return fmt.Errorf("flush stage %d entered with %d dirty L2 tables (R3)", s, d.l2.dirtyCount())
	}
	return nil
}

// enterStage records that flushStages enters stage s, checking the order
// in invariants builds. REQUIRES: metaLock held.
func (d metaIO) enterStage(s flushStage) {
	if !invariants.Enabled {
		return
	}
	d.mu.Lock()
	err := d.checkStageLocked(s)
	d.mu.flushAt = s
	d.mu.Unlock()
	if err != nil {
		failInvariant(err)
	}
}

// leaveStages ends a flushStages, finished or failed.
func (d metaIO) leaveStages() {
	d.mu.Lock()
	d.mu.flushAt = stageIdle
	d.mu.Unlock()
}

// refcountLocked returns the in-memory refcount of the cluster at off from
// the loaded refcount blocks, and false when its block is not loaded (a
// check without I/O cannot tell). No refcount block at all is refcount 0.
// REQUIRES: mu held.
func (d metaIO) refcountLocked(off int64) (uint64, bool) {
	ti, bi := d.mu.geo.RefcountIndex(off)
	if ti >= int64(len(d.mu.rt)) || (d.mu.damage != nil && d.mu.damage.DamagedRT.Has(ti)) {
		return 0, false
	}
	bo := int64(d.mu.rt[ti])
	if bo == 0 {
		return 0, true
	}
	rb := d.mu.rb[bo]
	if rb == nil {
		return 0, false
	}
	rc, err := format.RefcountGet(rb.buf, d.mu.geo.RefcountOrder, bi)
	return rc, err == nil
}

// entryClusters calls fn for every host cluster L2 entry e points at
// (one for data and preallocated zero entries, the clusters a compressed
// entry's bytes span). With an external data file guest data lives in
// that file, which has no refcounts: its entries name no cluster of the
// image file.
func (d metaIO) entryClusters(e uint64, fn func(off int64) error) error {
	if d.mu.geo.ExternalData {
		return nil
	}
	cs := d.mu.geo.ClusterSize()
	if e&format.EntryCompressed != 0 {
		c, err := d.mu.geo.DecodeCompressed(e)
		if err != nil {
			return nil // not a pointer the driver follows
		}
		for off := c.HostOff &^ (cs - 1); off < c.HostOff+c.Size(); off += cs {
			if err := fn(off); err != nil {
				return err
			}
		}
		return nil
	}
	if host := int64(e & format.OffsetMask); host != 0 {
		return fn(host)
	}
	return nil
}

// checkRefcountedLocked checks that every cluster L2 entry e names has
// refcount ≥ 1 before the entry is stored (R1 in memory: the increment
// comes first, its block reaches the disk in stage A before the table in
// stage C). REQUIRES: mu held.
func (d metaIO) checkRefcountedLocked(e uint64) error {
	return d.entryClusters(e, func(off int64) error {
		if rc, known := d.refcountLocked(off); known && rc == 0 {
			return fmt.Errorf("L2 entry %#x would point at cluster %#x, whose refcount is 0 (R1)", e, off)
		}
		return nil
	})
}

// checkUnreferencedLocked checks that cluster off, whose refcount has just
// dropped to 0, is named by no active L1 entry and by no entry of an
// active L2 table resident in tier 1 (R2: the pointer went first).
// REQUIRES: mu held.
func (d metaIO) checkUnreferencedLocked(off int64) error {
	cs := d.mu.geo.ClusterSize()
	n := d.mu.geo.L2Entries()
	for i, e1 := range d.mu.l1 {
		l2Off := int64(e1 & format.OffsetMask)
		if l2Off == 0 || (d.mu.damage != nil && d.mu.damage.DamagedL1.Has(int64(i))) {
			continue
		}
		if l2Off == off {
			return fmt.Errorf("cluster %#x freed while L1 entry %d still points at it (R2)", off, i)
		}
		t, ok := d.l2.set.Resident(d.l2.key(l2Off))
		if !ok {
			continue
		}
		buf := d.l2.tabs[t.Slot()].buf
		for j := range n {
			e, _, _ := d.mu.geo.L2EntryAt(buf, j)
			err := d.entryClusters(e, func(c int64) error {
				if c == off {
					return fmt.Errorf("cluster %#x freed while guest cluster %#x (L2 table %#x entry %d) still points at it (R2)",
						off, (int64(i)*n+j)*cs, l2Off, j)
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// checkCopied checks, after a snapshot operation, that COPIED is set
// exactly where the refcount is 1 (R7): on every active L1 entry and every
// data or preallocated zero entry of the active L2 tables in tier 1.
// REQUIRES: metaLock held (it may load refcount blocks).
func (d metaIO) checkCopied(co *aio.Co) error {
	d.mu.Lock()
	l1 := append([]uint64(nil), d.mu.l1...)
	d.mu.Unlock()
	for i, e1 := range l1 {
		l2Off, copied, err := d.mu.geo.DecodeL1Entry(e1)
		if err != nil || l2Off == 0 {
			continue
		}
		rc, err := d.refcountOf(co, l2Off)
		if err != nil {
			return err
		}
		if copied != (rc == 1) {
			return fmt.Errorf("L1 entry %d: COPIED %t but L2 table %#x has refcount %d (R7)", i, copied, l2Off, rc)
		}
		d.mu.Lock()
		var tab []byte
		if t, ok := d.l2.set.Resident(d.l2.key(l2Off)); ok {
			tab = append(tab, d.l2.tabs[t.Slot()].buf...)
		}
		d.mu.Unlock()
		for j := int64(0); tab != nil && j < d.mu.geo.L2Entries(); j++ {
			e, bm, _ := d.mu.geo.L2EntryAt(tab, j)
			le, err := d.mu.geo.DecodeL2Entry(e, bm)
			if err != nil {
				continue
			}
			switch le.Type {
			case format.Normal, format.ZeroAlloc:
				rc, err := d.refcountOf(co, le.HostOff)
				if err != nil {
					return err
				}
				if le.Copied != (rc == 1) {
					return fmt.Errorf("L2 table %#x entry %d: COPIED %t but cluster %#x has refcount %d (R7)", l2Off, j, le.Copied, le.HostOff, rc)
				}
			case format.Compressed:
				if e&format.EntryCopied != 0 {
					return fmt.Errorf("L2 table %#x entry %d: a compressed entry with COPIED (R7)", l2Off, j)
				}
			}
		}
	}
	return nil
}
