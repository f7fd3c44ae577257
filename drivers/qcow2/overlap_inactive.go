package qcow2

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// The inactive-L2 overlap check (DriverOptions.InactiveL2Check, QEMU's
// overlap-check.inactive-l2; docs/spec/qcow2.md §2.6).
//
// The driver keeps no record of the snapshots' L2 tables, so the check
// reads every snapshot's L1 table from the file for each metadata write
// (writeMeta: refcount blocks, refcount table entries, L2 tables, L1
// entries). It is off by default; with it off, writeMeta tests one bool.
//
//   - A write that touches a cluster some snapshot's L1 table points at is
//     an overlap (R5): the image is marked corrupt, the write fails.
//   - A snapshot whose L1 table cannot be read (its table entry fails
//     format.ValidateSnapshot, or the read fails) fails the write with
//     InactiveL2Error: EFBIG for a table over the size limit, EINVAL for
//     any other invalid entry. Nothing is written, the metadata stays
//     dirty in memory, and a later write-back meets the same error: the
//     image on disk keeps what the last successful flush left.
//   - With the check on, the allocation of an L2 table writes back the
//     refcount blocks at once (allocL2Flush), as QEMU does, so the
//     request that needed the table gets the check's error rather than a
//     later flush.

// InactiveL2Error is a metadata write refused because the inactive-L2
// overlap check could not read a snapshot's L1 table.
type InactiveL2Error struct {
	Snapshot int           // index in the snapshot table
	Target   string        // what was being written ("refcount block", ...)
	Errno    syscall.Errno // EINVAL or EFBIG (or the read's errno)
	Err      error         // the validation or read error
}

func (e *InactiveL2Error) Error() string {
	return fmt.Sprintf("qcow2: overlap check (inactive-l2) of a %s write: snapshot %d L1 table: %v", e.Target, e.Snapshot, e.Err)
}

// Unwrap gives the errno only: the validation error inside is about the
// snapshot, not about the write, so errors.Is(err, format.ErrCorrupt) is
// false (the image is not marked corrupt).
func (e *InactiveL2Error) Unwrap() error { return e.Errno }

// Targets of InactiveL2Error.
const (
	TargetRefblock = "refcount block"
	TargetReftable = "refcount table"
	TargetL2       = "L2 table"
	TargetL1       = "L1 table"
)

// checkInactiveL2 checks the metadata write [off, off+n) against every
// snapshot's L2 tables. REQUIRES: metaLock held (the snapshot list and
// the tables cannot change meanwhile).
func (d metaIO) checkInactiveL2(co *aio.Co, off, n int64) error {
	d.mu.Lock()
	snaps := d.mu.snaps
	geo := d.mu.geo
	d.mu.Unlock()
	if len(snaps) == 0 || n <= 0 {
		return nil
	}
	cs := geo.ClusterSize()
	s := off &^ (cs - 1)
	e := (off + n + cs - 1) &^ (cs - 1)
	for i := range snaps {
		sn := &snaps[i]
		if err := format.ValidateSnapshot(sn, i, &geo, 0); err != nil {
			en := syscall.EINVAL
			if errors.Is(err, format.ErrLimit) {
				en = syscall.EFBIG
			}
			return &InactiveL2Error{Snapshot: i, Target: d.targetOf(off), Errno: en, Err: err}
		}
		if sn.L1Entries == 0 {
			continue
		}
		buf := make([]byte, int64(sn.L1Entries)*8)
		if err := d.fileRead(co, nil, buf, int64(sn.L1Offset)); err != nil {
			en := syscall.EIO
			errors.As(err, &en)
			return &InactiveL2Error{Snapshot: i, Target: d.targetOf(off), Errno: en, Err: err}
		}
		for j := 0; j < len(buf); j += 8 {
			l2 := int64(getU64(buf[j:]) & format.OffsetMask &^ uint64(cs-1))
			if l2 != 0 && l2 < e && s < l2+cs {
				return d.markCorrupt(co, off, "overlaps with inactive L2 table")
			}
		}
	}
	return nil
}

// targetOf names the metadata at host offset off for InactiveL2Error:
// the structures whose write-back writeMeta checks.
func (d metaIO) targetOf(off int64) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	cs := d.mu.geo.ClusterSize()
	c := off &^ (cs - 1)
	rt := int64(d.mu.hdr.RefcountTableOffset)
	l1 := int64(d.mu.hdr.L1Offset)
	switch {
	case d.mu.rb[c] != nil:
		return TargetRefblock
	case off >= rt && off < rt+int64(d.mu.hdr.RefcountTableClusters)*cs:
		return TargetReftable
	case off >= l1 && off < l1+int64(len(d.mu.l1))*8:
		return TargetL1
	}
	return TargetL2
}

// allocL2Flush writes the metadata back after an L2 table allocation when
// the inactive-L2 check is on (see above). REQUIRES: metaLock held.
func (d metaIO) allocL2Flush(co *aio.Co) error {
	if !d.opts.InactiveL2Check {
		return nil
	}
	return d.flushMetadata(co, nil)
}
