package qcow2

import (
	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Where an allocating write on an extended-L2 image puts its new host
// clusters (QEMU 7.2's handle_alloc): when the clusters a write touches
// from the one being planned on (in its L2 table) all need a new host
// cluster — no host cluster, compressed, or shared (no COPIED) — QEMU
// allocates them together, as the first run of that many free clusters
// (qcow2_alloc_clusters), not one first-free cluster each. A write
// falling back from write-zeroes over two compressed clusters therefore
// skips a single free cluster that lies before two free ones (iotest
// 271, "Zero + unmap 2"). A run of whole clusters (planRun, standard
// images too) is placed the same way (newRun). Not modelled: QEMU's
// attempt to continue the host range of the clusters written in place
// just before (qcow2_alloc_clusters_at).
//
// hostRun carries the clusters allocated ahead through one write's
// cluster-by-cluster loop; the write releases what it did not use
// (release), which only happens when a cluster changed under it or the
// write failed (R2: given back after the next flush, as abortAlloc).

// maxHostRun bounds one run allocated ahead.
const maxHostRun = 64

// hostRun is the host clusters allocated ahead for the next clusters of
// one write that ends at guest offset end. Owned by the write's
// coroutine.
type hostRun struct {
	end   int64
	hosts []int64
}

// newHostRun starts the run state of a write ending at end.
func newHostRun(end int64) *hostRun { return &hostRun{end: end} }

// release gives back the clusters allocated ahead and not used.
// REQUIRES: metaLock held.
func (h *hostRun) release(d metaIO) {
	if h == nil {
		return
	}
	for _, off := range h.hosts {
		d.abortAlloc(off, nil)
	}
	h.hosts = nil
}

// needsNewCluster is QEMU's cluster_needs_new_alloc for a decoded entry.
func needsNewCluster(le format.L2Entry) bool {
	return !(le.Type == format.Normal && le.Copied)
}

// allocForSub returns the host cluster for the cluster at guest offset
// start, entry l2i of table t, which needs a new one: the next one
// allocated ahead, or, when it and the clusters after it up to run.end
// all need one, a fresh run of them (the first stays with the caller).
// Without a run (nil) it is allocData. REQUIRES: metaLock held.
func (d writer) allocForSub(co *aio.Co, run *hostRun, t *l2Table, l2i, start int64) (int64, error) {
	if run == nil || d.mu.geo.ExternalData {
		return d.allocData(co, start) // datafile.go
	}
	if len(run.hosts) > 0 {
		h := run.hosts[0]
		run.hosts = run.hosts[1:]
		return h, nil
	}
	cs := d.mu.geo.ClusterSize()
	limit := min((run.end-start+cs-1)/cs, d.mu.geo.L2Entries()-l2i, maxHostRun)
	n := int64(1)
	d.mu.Lock()
	for ; n < limit; n++ {
		e, bm, _ := d.mu.geo.L2EntryAt(t.buf, l2i+n)
		le, err := d.mu.geo.DecodeL2Entry(e, bm)
		if err != nil || !needsNewCluster(le) {
			break
		}
	}
	d.mu.Unlock()
	if n < 2 {
		return d.allocCluster(co)
	}
	hosts, err := d.allocFreeRun(co, n)
	if err != nil {
		return 0, err
	}
	run.hosts = hosts[1:]
	return hosts[0], nil
}

// allocFreeRun allocates n clusters at the first run of n free clusters
// from the allocator's search start (QEMU's alloc_clusters_noref). The
// clusters are those allocCluster hands out from there, so they are the
// run unless a new refcount block has to go in front of it. As in QEMU,
// the search start moves past the run: free clusters skipped before it
// are found again after a free lowers it (or at the next open); so no
// scan goes over the same used clusters twice.
// REQUIRES: metaLock held.
func (d writer) allocFreeRun(co *aio.Co, n int64) ([]int64, error) {
	cs := d.mu.geo.ClusterSize()
	var s int64
	for try := 0; ; try++ {
		d.mu.Lock()
		s = max(d.mu.freeIdx, 1)
		d.mu.Unlock()
		for i := s; i < s+n; i++ {
			free, err := d.clusterFree(co, i)
			if err != nil {
				return nil, err
			}
			if !free {
				s = i + 1
			}
		}
		d.mu.Lock()
		grows := (s+n)*cs > d.mu.geo.FileSize
		pending := len(d.mu.pendingFrees) > 0
		d.mu.Unlock()
		if try > 0 || !grows || !pending {
			break
		}
		// As reuseBeforeGrow: clusters freed meanwhile (a cluster this
		// write moved away from, R2) are reused before the file grows,
		// as QEMU, which frees at once, would.
		if err := d.flushMetadata(co, nil); err != nil {
			return nil, err
		}
	}
	d.mu.Lock()
	d.mu.freeIdx = s
	d.mu.Unlock()
	d.setAllocRun(n) // a new refcount block goes after the run (alloc_place.go)
	defer d.setAllocRun(0)
	hosts := make([]int64, 0, n)
	for i := int64(0); i < n; i++ {
		h, err := d.allocCluster(co)
		if err != nil {
			for _, g := range hosts {
				d.abortAlloc(g, nil)
			}
			return nil, err
		}
		hosts = append(hosts, h)
	}
	return hosts, nil
}

// clusterFree reports whether host cluster idx has refcount 0 and may be
// handed out. REQUIRES: metaLock held.
func (d writer) clusterFree(co *aio.Co, idx int64) (bool, error) {
	cs := d.mu.geo.ClusterSize()
	d.mu.Lock()
	_, bogus := d.mu.damageTargets[idx*cs]
	d.mu.Unlock()
	if bogus {
		return false, nil
	}
	rb, _, bi, err := d.refcountBlock(co, idx)
	switch {
	case err == errNoSpace:
		return true, nil
	case err != nil:
		return false, err
	case rb == nil:
		return true, nil
	}
	d.mu.Lock()
	rc, err := format.RefcountGet(rb.buf, d.mu.geo.RefcountOrder, bi)
	d.mu.Unlock()
	return err == nil && rc == 0, err
}

// newRun returns how many clusters of the run plan, from the i-th on,
// need a new host cluster in a row (runHost would allocate them); they get
// the first run of that many free clusters, as QEMU's handle_alloc gives
// them (standard images too). 0 with an external data file.
func (p *runPlan) newRun(d writer, i int) int64 {
	if d.mu.geo.ExternalData {
		return 0
	}
	k := int64(0)
	for j := i; j < len(p.old); j++ {
		le := p.old[j]
		if (le.Type == format.ZeroAlloc || le.Type == format.Normal) && le.Copied {
			break // runHost reuses it
		}
		k++
	}
	return min(k, maxHostRun)
}
