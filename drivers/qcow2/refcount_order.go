package qcow2

import (
	"errors"
	"strconv"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Changing the refcount width of an open image (`qemu-img amend -o
// refcount_bits=N`; QEMU's qcow2_change_refcount_order). The new refcount
// table and blocks are built next to the old ones and describe the whole
// image, themselves included, before one header write switches to them
// (R14):
//
//  1. Allocation walks. Every refcount the old table covers is visited in
//     cluster order, grouped into the blocks of the new width. A new block
//     that would hold a non-zero refcount gets a cluster from the ordinary
//     allocator, so the old structures count it; after a walk that
//     allocated, the new table gets contiguous clusters too (again only
//     when it grew). An allocation changes refcounts the walk may already
//     have passed (or adds old refcount blocks), so walks repeat until one
//     allocates nothing: then the old refcounts, which the new ones copy,
//     already count every new cluster. A refcount that does not fit the
//     new width refuses the change with QEMU's message.
//  2. Everything dirty is written (the old structures now durably count
//     the new clusters: a crash from here on leaves them leaked, nothing
//     worse).
//  3. The write walk: each new block is filled from the old refcounts and
//     written at its cluster; then the new table; fsync.
//  4. The switch: one write of header bytes 48–99 (refcount table offset
//     and clusters, refcount order; all in the first sector), fsync.
//  5. The driver reads its metadata again, and the old blocks and table
//     are freed through the new structures (R2: the switch is durable).
//
// A failure before the switch gives the new clusters back (they are
// leaked at worst); the image keeps its old width.
//
// Progress follows QEMU's report: each walk is one share of the work,
// the total is the number of walks known so far (at least three), so an
// extra walk shows as the fraction going back.

// changeRefcountOrder converts the image's refcount structures to
// 1<<order bits per entry. REQUIRES: metaLock held; version 3; no
// damage, nothing needing repair (amendLocked checks).
func (d maintOps) changeRefcountOrder(co *aio.Co, order uint32, progress func(done, total int64)) error {
	if progress == nil {
		progress = func(int64, int64) {}
	}
	if err := d.flushAllMetadata(co, nil); err != nil {
		return err
	}
	cs := d.mu.geo.ClusterSize()
	perTableCluster := cs / 8
	var newRT []uint64 // the new table's entries; 0: no block
	var tableOff, tableLen int64
	// undo gives back everything allocated for the new structures.
	undo := func(err error) error {
		d.mu.Lock()
		for _, off := range newRT {
			if off != 0 {
				d.mu.pendingFrees = append(d.mu.pendingFrees, hostFree{int64(off), cs})
			}
		}
		if tableOff != 0 {
			d.mu.pendingFrees = append(d.mu.pendingFrees, hostFree{tableOff, tableLen * 8})
		}
		d.mu.Unlock()
		if ferr := d.flushAllMetadata(co, nil); ferr != nil {
			return errors.Join(err, ferr)
		}
		return err
	}

	walk := 0
	for {
		allocated := false
		total := max(walk+2, 3)
		err := d.walkRefcounts(co, order, nil, walk, total, progress, func(j int64, used bool) error {
			if !used {
				return nil
			}
			if j >= int64(len(newRT)) {
				n := (j/perTableCluster + 1) * perTableCluster
				if n*8 > format.MaxRefcountTableBytes {
					return format.Limit("refcount_table_clusters", uint64(n*8/cs), "This operation would make the refcount table grow beyond the maximum size supported by QEMU, aborting")
				}
				newRT = append(newRT, make([]uint64, n-int64(len(newRT)))...)
			}
			if newRT[j] == 0 {
				off, err := d.allocCluster(co)
				if err != nil {
					return err
				}
				newRT[j] = uint64(off)
				allocated = true
			}
			return nil
		})
		walk++
		if err != nil {
			return undo(err)
		}
		if !allocated {
			break
		}
		if n := int64(len(newRT)); n > tableLen {
			if tableOff != 0 {
				d.mu.Lock()
				d.mu.pendingFrees = append(d.mu.pendingFrees, hostFree{tableOff, tableLen * 8})
				d.mu.Unlock()
				tableOff = 0
			}
			off, err := d.allocContiguous(co, n*8/cs)
			if err != nil {
				return undo(err)
			}
			tableOff, tableLen = off, n
		}
	}

	// Step 2: the old structures count every new cluster, durably (and
	// the frees of superseded tables are applied before the copy).
	if err := d.flushAllMetadata(co, nil); err != nil {
		return undo(err)
	}

	// Step 3: write the new blocks, then the table.
	fill := make([]byte, cs)
	err := d.walkRefcounts(co, order, fill, walk, walk+1, progress, func(j int64, used bool) error {
		if j < int64(len(newRT)) && newRT[j] != 0 {
			off := int64(newRT[j])
			if d.overlapsMetadata(off, cs) {
				return d.markCorrupt(co, off, "refcount block (refcount width change)")
			}
			return d.fileWrite(co, nil, fill, off)
		}
		if used {
			// The allocation walks settled: cannot happen.
			return format.Corrupt("refcount", uint64(j), "refcount width change: a used block has no cluster")
		}
		return nil
	})
	if err != nil {
		return undo(err)
	}
	tb := make([]byte, tableLen*8)
	for i, e := range newRT {
		putU64(tb[i*8:], e)
	}
	if d.overlapsMetadata(tableOff, int64(len(tb))) {
		return undo(d.markCorrupt(co, tableOff, "refcount table (refcount width change)"))
	}
	if err := d.fileWrite(co, nil, tb, tableOff); err != nil {
		return undo(err)
	}
	if err := d.fileSync(co, nil); err != nil {
		return undo(err)
	}

	// Step 4: switch table and width in one write inside the first
	// sector (R14), patched into the header as it is on disk.
	var sec [100]byte
	if err := d.fileRead(co, nil, sec[:], 0); err != nil {
		return undo(err)
	}
	d.mu.Lock()
	oldRT := d.mu.rt
	oldTableOff := int64(d.mu.hdr.RefcountTableOffset)
	oldTableLen := int64(d.mu.hdr.RefcountTableClusters) * cs
	d.mu.Unlock()
	putU64(sec[48:], uint64(tableOff))
	putU32(sec[56:], uint32(tableLen*8/cs))
	putU32(sec[96:], order)
	if err := d.fileWrite(co, nil, sec[48:100], 48); err != nil {
		// Unknown whether it reached the disk: the image may use either
		// structure, so neither is freed.
		return d.switchFailed(err)
	}
	if err := d.fileSync(co, nil); err != nil {
		return d.switchFailed(err)
	}

	// Step 5: the new structures are the image's; free the old ones.
	if err := d.reloadMetadata(co, nil, nil); err != nil {
		return d.switchFailed(err)
	}
	d.mu.Lock()
	for _, e := range oldRT {
		if off := int64(e & format.OffsetMask); off != 0 {
			d.mu.pendingFrees = append(d.mu.pendingFrees, hostFree{off, cs})
		}
	}
	d.mu.pendingFrees = append(d.mu.pendingFrees, hostFree{oldTableOff, oldTableLen})
	d.mu.Unlock()
	return d.flushAllMetadata(co, nil)
}

// switchFailed: the header switch (or the reload after it) failed; the
// driver's tables may no longer be the file's, so it refuses further
// writes (the image on disk is consistent with either width).
func (d maintOps) switchFailed(err error) error {
	d.mu.Lock()
	d.setCorruptLocked(&format.FormatError{Field: "refcount_order", Reason: "switching the refcount width failed; reopen the image: " + err.Error(), Err: format.ErrCorrupt})
	d.publishLocked()
	d.mu.Unlock()
	return err
}

// walkRefcounts visits every refcount the current refcount table covers,
// in cluster order, grouped into blocks of the width 1<<order: done(j,
// used) is called for each new block j once its entries are known (used:
// one is non-zero). With fill non-nil (one cluster) the new block's
// entries are stored there before done is called. It reports progress
// as QEMU's walk does: this is walk index of total. A refcount too wide
// for the new width is refused. REQUIRES: metaLock held.
func (d maintOps) walkRefcounts(co *aio.Co, order uint32, fill []byte, index, total int, progress func(done, total int64), done func(j int64, used bool) error) error {
	cs := d.mu.geo.ClusterSize()
	oldOrder := d.mu.geo.RefcountOrder
	perOld := d.mu.geo.RefcountBlockEntries()
	perNew := cs * 8 >> order
	bits := uint64(1) << order
	var j, k int64 // new block, entry in it
	used := false
	next := func() error {
		err := done(j, used)
		j, k, used = j+1, 0, false
		if fill != nil {
			clear(fill)
		}
		return err
	}
	if fill != nil {
		clear(fill)
	}
	old := make([]byte, cs)
	var n int64
	for ti := int64(0); ; ti++ {
		d.mu.Lock()
		n = int64(len(d.mu.rt))
		d.mu.Unlock()
		if ti >= n {
			break
		}
		progress(int64(index)*n+ti, int64(total)*n)
		rb, _, _, err := d.refcountBlock(co, ti*perOld)
		if err != nil {
			return err
		}
		if rb == nil {
			// No block: perOld zero refcounts.
			for left := perOld; left > 0; {
				if k == perNew {
					if err := next(); err != nil {
						return err
					}
				}
				step := min(left, perNew-k)
				k += step
				left -= step
			}
			continue
		}
		// A copy: the done callback may allocate, changing this block;
		// the next walk sees that.
		d.mu.Lock()
		copy(old, rb.buf)
		d.mu.Unlock()
		for bi := int64(0); bi < perOld; bi++ {
			if k == perNew {
				if err := next(); err != nil {
					return err
				}
			}
			rc, err := format.RefcountGet(old, oldOrder, bi)
			if err != nil {
				return err
			}
			if bits < 64 && rc>>bits != 0 {
				off := (ti*perOld + bi) * cs
				return format.Limit("refcount_bits", bits, "Cannot decrease refcount entry width to "+strconv.FormatUint(bits, 10)+
					" bits: Cluster at offset 0x"+strconv.FormatInt(off, 16)+" has a refcount of "+strconv.FormatUint(rc, 10))
			}
			if rc != 0 {
				used = true
				if fill != nil {
					if err := format.RefcountSet(fill, order, k, rc); err != nil {
						return err
					}
				}
			}
			k++
		}
	}
	if k > 0 {
		if err := next(); err != nil {
			return err
		}
	}
	progress(int64(index+1)*n, int64(total)*n)
	return nil
}

// amendProgress combines the progress of an amend's long steps (the
// refcount width change, the downgrade's zero expansion) into one
// figure, as QEMU's amend does: finished steps count with their last
// total, and the steps still to come are projected at the average size
// so far.
type amendProgress struct {
	report    func(done, total int64)
	steps     int   // long steps this amend runs
	finished  int   // steps finished
	doneWork  int64 // their work
	lastTotal int64 // the current step's last total
	current   int   // the step reporting (1-based); 0 none yet
}

// step returns the progress function for long step number i (1-based,
// in the order they run), or nil when nobody listens.
func (p *amendProgress) step(i int) func(done, total int64) {
	if p.report == nil {
		return nil
	}
	return func(done, total int64) {
		if p.current != i {
			if p.current != 0 {
				p.doneWork += p.lastTotal
				p.finished++
			}
			p.current = i
		}
		p.lastTotal = total
		cur := p.doneWork + total
		projected := cur * int64(p.steps-p.finished-1) / int64(p.finished+1)
		if t := cur + projected; t > 0 {
			p.report(p.doneWork+done, t)
		}
	}
}

func putU32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
}
