package qcow2

// Where a new refcount block goes (QEMU 7.2's placement). When the
// allocator hands out a cluster whose refcount block does not exist yet,
// QEMU picks the data clusters first and puts the new block at the next
// free cluster after them: after the single cluster, or after the whole
// contiguous run a batched write allocates. The block then counts itself
// when it lands in its own range. Placing it in front of the data (the
// first cluster of its range) would be valid too, but it splits the run
// and moves every later cluster by one against qemu-io's layout, which
// qemu-img check's image end offset and map show (iotest 313).
//
// allocRun is set by a caller that is about to allocate n clusters in a
// row (planRun) and counts down with each allocation; 0 means one.

// refblockSlot returns the cluster index for the missing refcount block
// that would count cluster idx: past the caller's run when that place
// is beyond everything allocated and still in the block's own range
// (self-describing), else idx itself. REQUIRES: metaLock held.
func (d metaIO) refblockSlot(idx int64) int64 {
	cs, per := d.mu.geo.ClusterSize(), d.mu.geo.RefcountBlockEntries()
	d.mu.Lock()
	defer d.mu.Unlock()
	p := idx + max(d.mu.allocRun, 1)
	if p/per != idx/per || p*cs < d.mu.geo.FileSize || idx*cs < d.mu.geo.FileSize {
		return idx
	}
	return p
}

// ranAlloc counts one allocated cluster off the caller's run.
// REQUIRES: mu held.
func (d metaIO) ranAllocLocked() {
	if d.mu.allocRun > 0 {
		d.mu.allocRun--
	}
}

// setAllocRun announces a run of n allocations (0: done).
func (d metaIO) setAllocRun(n int64) {
	d.mu.Lock()
	d.mu.allocRun = n
	d.mu.Unlock()
}
