package qcow2

import (
	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Allocation behaviour shared with QEMU's (issue 22 item 5): where a
// write lands and when write-zeroes records zero clusters instead of
// writing zero bytes.

// runHost picks the host cluster for one whole-cluster write of a run
// (planRun) whose old entry is le: le's own preallocated zero cluster
// (ZERO_ALLOC with COPIED: refcount 1, ours alone) is reused in place, as
// planCluster does for a single cluster and QEMU's handle_copied does;
// anything else gets a new cluster. REQUIRES: metaLock held.
func (d writer) runHost(co *aio.Co, le format.L2Entry, guest int64) (host int64, reused bool, err error) {
	if (le.Type == format.ZeroAlloc || le.Type == format.Normal) && le.Copied {
		// A preallocated zero cluster, or a data cluster (iotfilters:
		// planRun's in-place members), is written where it is.
		if d.dataOverlaps(le.HostOff, d.mu.geo.ClusterSize()) { // datafile.go
			return 0, false, d.markCorrupt(co, le.HostOff, "data write")
		}
		return le.HostOff, true, nil
	}
	host, err = d.allocData(co, guest) // datafile.go
	return host, false, err
}

// abort gives back the first n host clusters of the run that were
// allocated for it (not the reused ones). REQUIRES: metaLock held.
func (p *runPlan) abort(d writer, n int) {
	for i, h := range p.hosts[:n] {
		if !p.reused[i] {
			d.abortData(h, nil) // datafile.go
		}
	}
}

// statusWait is the Done of one block-status request a coroutine waits
// for; it keeps the answer, which the request loses when it is recycled.
type statusWait struct {
	co     *aio.Co
	done   bool
	err    error
	status block.Status
	pnum   int64
}

func (w *statusWait) RequestDone(r *block.Request, err error) {
	w.err, w.status, w.pnum, w.done = err, r.Status, r.Pnum, true
	w.co.Wake()
}

// backingReadsZero reports whether guest bytes [off, off+n) read as zero
// from the backing node by its allocation status alone (zero clusters,
// holes, unallocated with nothing below, or past the backing node's end),
// as QEMU's is_zero decides before it widens a partial write-zeroes. Bytes
// that are data, even zero bytes, or that a deeper backing node decides,
// count as not zero: the caller then writes zeros, which is always right.
func (d writer) backingReadsZero(co *aio.Co, parent *block.Request, off, n int64) (bool, error) {
	end := min(off+n, d.backingSize)
	for off < end {
		var r *block.Request
		if parent != nil {
			r = parent.Sub()
		} else { // amend and resize run without a guest request (as childIO)
			r = d.node.Graph().Pool(co.Context()).Get()
		}
		r.Op, r.Off, r.Len = block.OpBlockStatus, off, end-off
		w := &statusWait{co: co}
		d.backing.Submit(r, w)
		for !w.done {
			co.Yield()
		}
		if w.err != nil {
			return false, w.err
		}
		if w.status&block.StatusZero == 0 || w.pnum <= 0 {
			return false, nil
		}
		off += w.pnum
	}
	return true, nil
}

// restReadsZero reports whether the rest of the cluster around a partial
// write-zeroes of guest bytes [off, off+k) reads as zero from the backing
// node, so that the whole cluster may become a zero cluster instead of
// being allocated and filled with zeros (QEMU's qcow2_co_pwrite_zeroes;
// iotest 154). Only for version 3 images with a backing node whose
// cluster is unallocated here (the caller checked le). REQUIRES: metaLock
// held.
func (d writer) restReadsZero(co *aio.Co, r *block.Request, off, k int64) (bool, error) {
	cs := d.mu.geo.ClusterSize()
	start := off &^ (cs - 1)
	d.mu.Lock()
	end := min(start+cs, d.mu.geo.Size)
	d.mu.Unlock()
	if ok, err := d.backingReadsZero(co, r, start, off-start); !ok || err != nil {
		return false, err
	}
	return d.backingReadsZero(co, r, off+k, end-off-k)
}
