package qcow2

import (
	"slices"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/internal/invariants"
)

// flushMetadata writes every dirty piece of metadata in dependency order,
// with an fsync of the file after each non-empty stage (R12):
//
//	A  refcount blocks (and any data/COW written since the last fsync)
//	   ─▶ fsync   R1: refcounts durable before pointers to the clusters;
//	              R4: COW data durable before the L2 entries naming it
//	B  refcount table entries (8-byte writes, R6) ─▶ fsync
//	              R3: a new refcount block is durable before its entry
//	C  L2 tables ─▶ fsync
//	              R1/R3: after the refcounts and table entries they rely on
//	D  L1 entries (8-byte writes, R6) ─▶ fsync
//	              R3: a new L2 table is durable before the L1 entry
//	then apply the deferred frees (R2: pointer removals are durable now);
//	their decremented refcount blocks go out in a second round's stage A.
//
// REQUIRES: metaLock held (nothing else changes metadata meanwhile, so
// the buffers are written in place without copies).
func (d metaIO) flushMetadata(co *aio.Co, parent *block.Request) error {
	d.mu.Lock()
	err := d.mu.corruptErr
	d.mu.Unlock()
	if err != nil {
		return err // R5: nothing more is written to a corrupt image
	}
	for round := 0; round < 2; round++ {
		if err := d.flushStages(co, parent); err != nil {
			return err
		}
		d.mu.Lock()
		frees := len(d.mu.pendingFrees)
		d.mu.Unlock()
		if frees == 0 {
			break
		}
		if err := d.applyFrees(co); err != nil {
			return err
		}
	}
	if afterFlushHook != nil {
		afterFlushHook(d.Driver)
	}
	return nil
}

// afterOpenHook and afterFlushHook, when set, run at the end of a
// successful Open and of every successful flushMetadata (under metaLock).
// Tests set them to check the image file (flushcheck_test.go); they are
// nil otherwise.
var afterOpenHook, afterFlushHook func(d *Driver)

func (d metaIO) flushStages(co *aio.Co, parent *block.Request) error {
	if invariants.Enabled {
		defer d.leaveStages()
	}
	// Stage A: refcount blocks.
	d.enterStage(stageRefblocks)
	d.mu.Lock()
	var rbs []int64
	for off, b := range d.mu.rb {
		if b.dirty {
			rbs = append(rbs, off)
		}
	}
	sync := d.mu.cowPending
	d.mu.Unlock()
	if len(rbs) > 0 {
		// Lazy refcounts: the blocks may stay dirty behind the dirty bit.
		skip, err := d.lazySkipRefblocks(co, parent)
		if err != nil {
			return err
		}
		if skip {
			rbs = nil
		}
	}
	slices.Sort(rbs)
	for _, off := range rbs {
		d.mu.Lock()
		b := d.mu.rb[off]
		d.mu.Unlock()
		d.refblockWriteEvents(b) // close_report.go
		if err := d.writeMeta(co, parent, b.buf, off); err != nil {
			return err
		}
	}
	if len(rbs) > 0 || sync {
		if err := d.fileSync(co, parent); err != nil {
			return err
		}
		d.mu.Lock()
		for _, off := range rbs {
			d.mu.rb[off].dirty, d.mu.rb[off].fresh = false, false
		}
		d.mu.cowPending = false
		d.mu.Unlock()
	}

	// Stage B: refcount table entries.
	d.enterStage(stageReftable)
	d.mu.Lock()
	rts := sortedKeys(d.mu.dirtyRT)
	d.mu.Unlock()
	for _, ti := range rts {
		var b [8]byte
		d.mu.Lock()
		putU64(b[:], d.mu.rt[ti])
		at := int64(d.mu.hdr.RefcountTableOffset) + ti*8
		hookup := d.mu.rt[ti] != 0
		d.mu.Unlock()
		if hookup {
			d.event(block.DbgRefblockAllocHookup) // QEMU: a new block entered in the table
		} else {
			d.event(block.DbgReftableUpdate)
		}
		if err := d.writeMeta(co, parent, b[:], at); err != nil {
			return err
		}
	}
	if len(rts) > 0 {
		if err := d.fileSync(co, parent); err != nil {
			return err
		}
		d.mu.Lock()
		for _, ti := range rts {
			delete(d.mu.dirtyRT, ti)
		}
		d.mu.Unlock()
	}

	// Stage C: L2 tables, written and synced by the image's cache.Set.
	d.enterStage(stageL2)
	if err := d.flushL2(co, parent); err != nil {
		return err
	}

	// Stage D: L1 entries.
	d.enterStage(stageL1)
	d.mu.Lock()
	l1s := sortedKeys(d.mu.dirtyL1)
	d.mu.Unlock()
	for _, i := range l1s {
		var b [8]byte
		d.mu.Lock()
		putU64(b[:], d.mu.l1[i])
		at := int64(d.mu.hdr.L1Offset) + i*8
		d.mu.Unlock()
		d.event(block.DbgL1Update)
		if err := d.writeMeta(co, parent, b[:], at); err != nil {
			return err
		}
	}
	if len(l1s) > 0 {
		if err := d.fileSync(co, parent); err != nil {
			return err
		}
		d.mu.Lock()
		for _, i := range l1s {
			delete(d.mu.dirtyL1, i)
		}
		d.mu.Unlock()
	}
	return nil
}

func sortedKeys(m map[int64]bool) []int64 {
	ks := make([]int64, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// writeMeta writes one metadata buffer. The targets are our own tables at
// offsets taken from our own validated structures; they are not run
// through the data overlap check (QEMU ignores the table's own kind too).
// With DriverOptions.InactiveL2Check they are checked against the
// snapshots' L2 tables first (overlap_inactive.go).
func (d metaIO) writeMeta(co *aio.Co, parent *block.Request, buf []byte, off int64) error {
	if d.opts.InactiveL2Check {
		if err := d.checkInactiveL2(co, off, int64(len(buf))); err != nil {
			return err
		}
	}
	return d.fileWrite(co, parent, buf, off)
}

// Flush writes back dirty metadata in order and flushes the file. With
// nothing dirty it is a plain child flush (no coroutine, no allocation).
func (d *Driver) Flush(r *block.Request) {
	d.mu.Lock()
	clean := d.mu.corruptErr == nil && d.l2.dirty == 0 && len(d.mu.dirtyRT) == 0 && len(d.mu.dirtyL1) == 0 &&
		len(d.mu.pendingFrees) == 0 && !d.mu.cowPending && (metaOf(d).lazySkipsLocked() || !metaOf(d).anyDirtyRefblockLocked()) &&
		d.dataFile == nil // datafile.go: fileSync flushes the data file too
	d.mu.Unlock()
	if clean {
		s := d.states.get(d)
		s.r, s.pending = r, 2
		sub := r.Sub()
		sub.Op = block.OpFlush
		d.file.Submit(sub, s)
		s.release()
		return
	}
	r.Context().Go(func(co *aio.Co) {
		d.metaLock.lock(co)
		err := metaOf(d).flushMetadata(co, r)
		d.metaLock.unlock()
		if err == nil {
			err = d.fileSync(co, r)
		}
		r.CompleteLater(d.formatErr(block.OpFlush, 0, err))
	})
}

func (d metaIO) anyDirtyRefblockLocked() bool {
	for _, b := range d.mu.rb {
		if b.dirty {
			return true
		}
	}
	return false
}

// overlapsMetadata reports whether [off, off+n) touches the header, an L1
// table, the refcount table, a refcount block, an active L2 table or the
// snapshot table (QEMU's default "cached" overlap-check level).
func (d metaIO) overlapsMetadata(off, n int64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.overlapsMetadataLocked(off, n)
}

// REQUIRES: mu held. No allocation.
func (d metaIO) overlapsMetadataLocked(off, n int64) bool {
	cs := d.mu.geo.ClusterSize()
	h := d.mu.hdr
	hit := func(start, length int64) bool {
		if length <= 0 {
			return false
		}
		s := start &^ (cs - 1)
		e := (start + length + cs - 1) &^ (cs - 1)
		return off < e && s < off+n
	}
	if off < cs || hit(int64(h.L1Offset), int64(len(d.mu.l1))*8) ||
		hit(int64(h.RefcountTableOffset), int64(h.RefcountTableClusters)*cs) ||
		hit(int64(h.SnapshotsOffset), d.mu.snapSz) || hit(int64(h.CryptoOffset), int64(h.CryptoLength)) {
		return true
	}
	for i := range d.mu.snaps {
		if hit(snapL1Range(&d.mu.snaps[i], &d.mu.geo)) { // snapshot_check.go
			return true
		}
	}
	// Single clusters (refcount blocks, active L2 tables): one set lookup
	// per cluster of the range.
	for c := off &^ (cs - 1); c < off+n; c += cs {
		if d.meta.has(c) {
			return true
		}
	}
	return false
}

// markCorrupt handles an overlap-check hit (R5): the image gets the
// corrupt bit (an 8-byte synced header write, R6), every later request
// fails, and the request gets an I/O error.
func (d metaIO) markCorrupt(co *aio.Co, off int64, what string) error {
	err := format.Corrupt("host_offset", uint64(off), "preventing invalid write on metadata ("+what+")")
	d.mu.Lock()
	first := d.mu.corruptErr == nil
	if first {
		d.setCorruptLocked(err)
	}
	incompat := d.mu.hdr.IncompatibleFeatures | format.IncompatCorrupt
	v3 := d.mu.hdr.Version >= 3
	d.mu.Unlock()
	if first {
		reportCorruption(err)
	}
	if first && v3 {
		var b [8]byte
		putU64(b[:], incompat)
		if d.fileWrite(co, nil, b[:], 72) == nil {
			d.fileSync(co, nil)
		}
	}
	return err
}
