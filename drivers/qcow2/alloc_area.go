package qcow2

import (
	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// allocArea allocates n contiguous clusters at the end of the image when
// the run needs refcount blocks that do not exist yet, for runs that span
// more than one refcount block's range (a large L1 table with small
// clusters: iotest 026's 64 MiB VM state on 512-byte clusters). allocCluster
// puts a missing block inside the run, so allocContiguous cannot build
// such a run; here the k missing blocks go right before it, as QEMU's
// allocation ends up placing them:
//
//	[s, s+k)      the new refcount blocks (each in a range that needs one)
//	[s+k, s+k+n)  the run
//
// Every cluster of [s, s+k+n) gets refcount 1, in an existing block or in
// a new one; the new blocks are dirty and fresh (stage A writes them, R1)
// and their table entries dirty (stage B, after the blocks: R3). A run
// reaching past the refcount table grows it first. REQUIRES: metaLock held.
func (d metaIO) allocArea(co *aio.Co, n int64) (int64, error) {
	cs := d.mu.geo.ClusterSize()
	per := d.mu.geo.RefcountBlockEntries()
	order := d.mu.geo.RefcountOrder
	for try := 0; try < 4; try++ {
		d.mu.Lock()
		s := (d.mu.geo.FileSize + cs - 1) / cs
		rtLen := int64(len(d.mu.rt))
		missing := func(ti int64) bool { return ti >= rtLen || d.mu.rt[ti] == 0 }
		k := int64(0)
		for i := 0; ; i++ {
			need := int64(0)
			for ti := s / per; ti <= (s+k+n-1)/per; ti++ {
				if missing(ti) {
					need++
				}
			}
			if need == k || i > 64 {
				k = need
				break
			}
			k = need
		}
		last := (s + k + n - 1) / per
		d.mu.Unlock()
		if last >= rtLen {
			if err := d.growRefcountTable(co); err != nil {
				return 0, err
			}
			continue // the table moved the end of the image
		}
		if d.overlapsMetadata(s*cs, (k+n)*cs) {
			return 0, d.markCorrupt(co, s*cs, "refcount block allocation")
		}
		// Existing blocks of the area, loaded (they may need a read).
		existing := make(map[int64]*refBlock)
		for ti := s / per; ti <= last; ti++ {
			d.mu.Lock()
			has := !missing(ti)
			d.mu.Unlock()
			if !has {
				continue
			}
			rb, _, _, err := d.refcountBlock(co, ti*per)
			if err != nil {
				return 0, err
			}
			if rb == nil {
				return 0, format.Corrupt("refcount_table", uint64(ti), "refcount block vanished during an allocation")
			}
			existing[ti] = rb
		}
		d.mu.Lock()
		// The area must be free in the blocks that exist (clusters past
		// the end of the file normally are).
		busy := false
		for c := s; c < s+k+n && !busy; c++ {
			if rb := existing[c/per]; rb != nil {
				rc, err := format.RefcountGet(rb.buf, order, c%per)
				if err != nil {
					d.mu.Unlock()
					return 0, err
				}
				busy = rc != 0
			}
			if _, bogus := d.mu.damageTargets[c*cs]; bogus {
				busy = true
			}
		}
		if busy {
			d.mu.Unlock()
			break
		}
		fresh := make(map[int64]*refBlock)
		next := s
		for ti := s / per; ti <= last; ti++ {
			if existing[ti] == nil {
				off := next * cs
				fresh[ti] = &refBlock{buf: make([]byte, cs), dirty: true, fresh: true}
				d.mu.rb[off] = fresh[ti]
				d.mu.rt[ti] = uint64(off)
				d.mu.dirtyRT[ti] = true
				d.meta.add(off)
				next++
			}
		}
		for c := s; c < s+k+n; c++ {
			rb := existing[c/per]
			if rb == nil {
				rb = fresh[c/per]
			}
			if err := format.RefcountSet(rb.buf, order, c%per, 1); err != nil {
				d.mu.Unlock()
				return 0, err
			}
			rb.dirty = true
		}
		d.growFile((s + k + n) * cs)
		d.mu.Unlock()
		if len(existing) > 0 {
			d.refcountUpdateEvents()
		}
		for range fresh {
			d.event(block.DbgRefblockAlloc)
		}
		return (s + k) * cs, nil
	}
	return 0, &format.FormatError{Field: "l1_table", Reason: "no contiguous space for the L1 table", Err: format.ErrLimit}
}
