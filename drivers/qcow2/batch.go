package qcow2

import (
	"sync/atomic"
	"unsafe"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/internal/prefetch"
)

// Read batching.
//
// Under a Plug a Context usually hands the driver a burst of reads: a
// guest's queue, a benchmark's refill. Each read's mapping loads one L2
// entry, and on random reads over a large image that entry is rarely in a
// CPU cache — one miss per request, each paid before the next request is
// looked at (it was the largest cost the driver added over the raw file:
// docs/design/qcow2-read-batching.md). So a read that arrives in a plugged
// section is queued on its Context's readBatch, which defers itself to the
// section's end (aio.Context.Defer). There the batch first prefetches the
// L2 entry of every queued request whose table is resident, then maps and
// starts each one exactly as an unbatched Read would (readLocked): the
// misses overlap. Still inside the section, so the child reads go to the
// kernel in the same io_uring_enter as before.
//
// Nothing about a read's result changes, only when its mapping runs: in-
// flight accounting is the node's (the request counted in flight since its
// Submit), a nested wait runs deferred work first (aio), and a read
// waiting in a batch has mapped nothing, so it holds no epoch and pins no
// table.

// readBatchMax bounds one batch: a read past it starts at once.
const readBatchMax = 64

// maxBatches bounds the Contexts that get a batch: a node moved through
// more Contexts than that reads the later ones unbatched.
const maxBatches = 64

// readBatch is one Context's queued reads, and its count of the fast
// paths' tier-1 hits (a line per Context, so that IOThreads do not share
// one counter). reqs and spare are touched only on ctx's owner.
type readBatch struct {
	// d and ctx never change; other Contexts read ctx when they look for
	// their own batch, so nothing written shares their cache line.
	d   *Driver
	ctx *aio.Context
	_   [112]byte
	// Written by ctx's owner only.
	reqs  []*block.Request
	spare []*block.Request
	hits  atomic.Uint64
	_     [72]byte
}

// batches is the driver's list of readBatches, one per Context that read
// under a Plug; copied on change, so a lookup takes no lock.
type batches = atomic.Pointer[[]*readBatch]

// batchFor returns ctx's batch, creating it on its first plugged read, or
// nil past maxBatches.
func (d reader) batchFor(ctx *aio.Context) *readBatch {
	if p := d.batches.Load(); p != nil {
		for _, b := range *p {
			if b.ctx == ctx {
				return b
			}
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var list []*readBatch
	if p := d.batches.Load(); p != nil {
		for _, b := range *p {
			if b.ctx == ctx {
				return b
			}
		}
		list = append(list, *p...)
	}
	if len(list) >= maxBatches {
		return nil
	}
	b := &readBatch{
		d:     d.Driver,
		ctx:   ctx,
		reqs:  make([]*block.Request, 0, readBatchMax),
		spare: make([]*block.Request, 0, readBatchMax),
	}
	list = append(list, b)
	d.batches.Store(&list)
	return b
}

// queueRead queues r on ctx's batch and reports true, or reports false
// (the caller reads now) when the batch is full or cannot be deferred.
// REQUIRES: ctx plugged, on its owner.
func (d reader) queueRead(ctx *aio.Context, r *block.Request) bool {
	b := d.batchFor(ctx)
	if b == nil || len(b.reqs) == cap(b.reqs) {
		return false
	}
	if len(b.reqs) == 0 && !ctx.Defer(b) {
		return false
	}
	b.reqs = append(b.reqs, r)
	return true
}

// RunDeferred starts the queued reads: prefetch every L2 entry, then map
// and start each. A read queued meanwhile (a completion that reads again)
// goes into the other buffer and a new deferral.
func (b *readBatch) RunDeferred(*aio.Context) {
	reqs := b.reqs
	b.reqs, b.spare = b.spare[:0], nil
	d := b.d
	if len(reqs) > 1 {
		v := d.view.Load()
		for _, r := range reqs {
			readerOf(d).prefetchMapping(v, r.Off, r.Len)
		}
	}
	for i, r := range reqs {
		reqs[i] = nil
		if !readerOf(d).readFast(r) {
			readerOf(d).readLocked(r)
		}
	}
	b.spare = reqs[:0]
}

// prefetchMapping starts loading the L2 entry that maps a one-cluster
// read at off, if its table is resident in tier 1 (not counted as a
// lookup; a prefetch needs no validation). No lock.
func (d reader) prefetchMapping(v *fastView, off, n int64) {
	g := &v.geo
	cs := g.ClusterSize()
	if g.ExtendedL2 || off < 0 || n <= 0 || off&(cs-1)+n > cs || off >= g.Size {
		return
	}
	l1i := uint64(off) >> (2*g.ClusterBits - 3)
	if l1i >= uint64(len(v.l1)) {
		return
	}
	l2Off := atomic.LoadUint64(&v.l1[l1i]) & format.OffsetMask
	if l2Off == 0 {
		return
	}
	t, _, ok := d.l2.set.View(d.l2.key(int64(l2Off)))
	if !ok {
		return
	}
	b := t.Data()
	i := (off / cs) & (cs/8 - 1)
	prefetch.Line(uintptr(unsafe.Pointer(&b[i*8])))
}
