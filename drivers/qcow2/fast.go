package qcow2

import (
	"sync/atomic"
	"unsafe"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/internal/invariants"
)

// Lock-free hot paths (docs/design/qcow2-metadata.md).
//
// A cached read, and an in-place write to COPIED clusters, take no
// driver-wide lock. They read:
//
//   - the published view (Driver.view): an immutable copy of the geometry,
//     the active L1 table's slice, the damage record and the fixed
//     metadata ranges, replaced (publishLocked, under mu) whenever one of
//     them changes; L1 entries are read with atomic loads, and the one
//     place that changes an active entry in place stores it atomically
//     (storeL1);
//   - the end of the file (fileEnd, atomic);
//   - the L2 table through its tier-1 slot (cache.Set.View), one atomic
//     load per entry, and the slot's sequence checked after the loads
//     (Table.Valid): an eviction, a discard or a change of the table in
//     between makes the read fall back to the locked path;
//   - for writes, the metadata clusters for the overlap check (metaSet,
//     lock-free reads) and the corrupt and header-ready flags (atomics).
//
// Before reading any of it the request enters the current I/O epoch
// (hold), and it leaves only when its data I/O completed: a cluster whose
// pointer the request may have read is not freed (applyFrees waits for
// the epoch) until then, and an L2 table's cluster likewise — so a
// validated read can never name a cluster that was reused meanwhile.
//
// Anything the fast path does not handle (a table not in tier 1, a
// compressed or unallocated cluster, extended L2, damage, a race with a
// writer) falls back to the locked path, which decides under mu as before.

// fastView is the immutable part of what the fast paths read (see above).
type fastView struct {
	geo    format.Geometry // FileSize as at publication; fileEnd is current
	l1     []uint64        // the active L1 table (entries: atomic loads)
	damage *format.Image
	// fixed holds the header cluster, the L1 table, the refcount table,
	// the snapshot table and every snapshot's L1 table, for the overlap
	// check of in-place writes (the single clusters are in metaSet).
	fixed []hostRange
}

type hostRange struct{ off, n int64 }

// publishLocked replaces the view after a change of geometry, L1 table,
// damage, header offsets or snapshot list. REQUIRES: mu held, or the
// driver not yet shared (Open).
func (d *Driver) publishLocked() {
	v := &fastView{geo: d.mu.geo, l1: d.mu.l1, damage: d.mu.damage}
	v.fixed = d.fixedRangesLocked(make([]hostRange, 0, 5+len(d.mu.snaps)))
	d.view.Store(v)
	d.fileEnd.Store(d.mu.geo.FileSize)
}

// fixedRangesLocked appends the metadata ranges that are not single
// clusters, as overlapsMetadataLocked checks them. REQUIRES: mu held.
func (d *Driver) fixedRangesLocked(dst []hostRange) []hostRange {
	cs := d.mu.geo.ClusterSize()
	h := d.mu.hdr
	dst = append(dst, hostRange{0, cs},
		hostRange{int64(h.L1Offset), int64(len(d.mu.l1)) * 8},
		hostRange{int64(h.RefcountTableOffset), int64(h.RefcountTableClusters) * cs},
		hostRange{int64(h.SnapshotsOffset), d.mu.snapSz},
		hostRange{int64(h.CryptoOffset), int64(h.CryptoLength)})
	for i := range d.mu.snaps {
		off, n := snapL1Range(&d.mu.snaps[i], &d.mu.geo) // snapshot_check.go
		dst = append(dst, hostRange{off, n})
	}
	return dst
}

// checkViewLocked asserts (invariants builds) that the published view
// matches the fields under mu: a change that forgot publishLocked would
// let the fast paths map through a stale L1 table. REQUIRES: mu held.
func (d *Driver) checkViewLocked() {
	if !invariants.Enabled {
		return
	}
	v := d.view.Load()
	g, vg := d.mu.geo, v.geo
	g.FileSize, vg.FileSize = 0, 0
	stale := g != vg || len(v.l1) != len(d.mu.l1) || v.damage != d.mu.damage ||
		(len(v.l1) > 0 && &v.l1[0] != &d.mu.l1[0]) || d.fileEnd.Load() != d.mu.geo.FileSize
	if !stale {
		var buf [8]hostRange
		fixed := d.fixedRangesLocked(buf[:0])
		stale = len(fixed) != len(v.fixed)
		for i := 0; !stale && i < len(fixed); i++ {
			stale = fixed[i] != v.fixed[i]
		}
	}
	if stale {
		failStaleView(d.nodeName())
	}
}

//go:noinline
func failStaleView(node string) {
	invariants.Failf("qcow2 %s: published view is stale (a metadata change without publishLocked)", node)
}

// storeL1 sets entry i of an L1 table that the fast paths may be reading.
// REQUIRES: mu held.
func storeL1(l1 []uint64, i int64, e uint64) {
	atomic.StoreUint64(&l1[i], e)
}

// setCorruptLocked records the error every later request fails with.
// REQUIRES: mu held.
func (d *Driver) setCorruptLocked(err error) {
	d.mu.corruptErr = err
	d.corrupt.Store(err != nil)
}

// overlaps reports whether [off, off+n) touches a fixed metadata range
// or a metadata cluster: overlapsMetadataLocked without mu.
func (v *fastView) overlaps(ms *metaSet, off, n int64) bool {
	cs := v.geo.ClusterSize()
	if off < cs {
		return true
	}
	for _, r := range v.fixed {
		if r.n > 0 && off < (r.off+r.n+cs-1)&^(cs-1) && r.off&^(cs-1) < off+n {
			return true
		}
	}
	for c := off &^ (cs - 1); c < off+n; c += cs {
		if ms.has(c) {
			return true
		}
	}
	return false
}

// hold enters the current I/O epoch without a lock (see read.go's epoch
// comment). A free that moved the epoch between the load and the count
// is not waited for by anybody: the request steps out and tries again.
// The count is striped by Context (epochStripe): two IOThreads holding
// epochs on one image do not bounce one cache line per request.
func (d *Driver) hold(ctx *aio.Context) epochRef { return d.holdIn(epochStripe(ctx)) }

// holdIn is hold with the stripe given.
func (d *Driver) holdIn(s int) epochRef {
	for {
		e := d.ioEpoch.Load()
		d.ioActive[e&1][s].n.Add(1)
		ref := epochRef(e) | epochRef(s)<<32
		if d.ioEpoch.Load() == e {
			return ref
		}
		d.unhold(ref)
	}
}

// epochStripes is the number of per-parity epoch counters.
const epochStripes = 8

// epochRef is a held epoch: the epoch in the low 32 bits, the stripe its
// count is in above them. It rides in a child request's Tag.
type epochRef uint64

func (r epochRef) parity() uint32 { return uint32(r) & 1 }
func (r epochRef) stripe() int    { return int(r>>32) % epochStripes }

// epochStripe picks ctx's stripe (a hash of the Context's address: fixed
// for its life; nil, for callers outside a request, is stripe 0).
func epochStripe(ctx *aio.Context) int {
	if ctx == nil {
		return 0
	}
	return int((uint64(uintptr(unsafe.Pointer(ctx))) * 0x9e3779b97f4a7c15) >> 61)
}

// oneData maps a read or write of [off, off+n) inside one cluster of a
// standard-L2 image to its host offset when the cluster is allocated data
// in a table resident in tier 1, without a lock; copied reports the
// entry's COPIED bit and the L1 entry's. It reports false for anything
// else, and for any change it raced with. REQUIRES: an epoch held.
func (d reader) oneData(v *fastView, fileEnd, off, n int64) (host int64, copied, ok bool) {
	g := v.geo // a copy: the view's, with the current end of file
	g.FileSize = fileEnd
	l1i, ok := g.OneClusterIndex(off, n, len(v.l1))
	if !ok || (v.damage != nil && v.damage.DamagedL1.Has(l1i)) {
		return 0, false, false
	}
	e1 := atomic.LoadUint64(&v.l1[l1i])
	l2Off, ok := g.CleanL2Table(e1)
	if !ok {
		return 0, false, false
	}
	t, seq, hit := d.l2.set.View(d.l2.key(l2Off))
	if !hit {
		return 0, false, false
	}
	e := t.Word(int(g.StandardL2Index(off)))
	host, ok = g.DataHostEntry(e, off)
	if !ok || !t.Valid(seq) {
		return 0, false, false
	}
	t.Referenced()
	return host, e1&format.EntryCopied != 0 && e&format.EntryCopied != 0, true
}

// readFast starts r without a lock when every cluster of it is allocated
// data mapped by tables resident in tier 1; otherwise it reports false
// and r is the locked path's. No allocation.
func (d reader) readFast(r *block.Request) bool {
	if d.corrupt.Load() {
		return false
	}
	ep := d.hold(r.Context())
	v := d.view.Load()
	end := d.fileEnd.Load()
	cs := v.geo.ClusterSize()
	off, n := r.Off, r.Len
	host, _, ok := d.oneData(v, end, off, min(n, cs-off&(cs-1)))
	if !ok {
		d.unhold(ep)
		return false
	}
	k := min(n, cs-off&(cs-1))
	if k == n {
		d.countHits(r.Context(), 1)
		sub := r.Sub()
		sub.Op, sub.Off, sub.Len, sub.Iov = block.OpRead, host, n, r.Iov
		sub.Tag = uint64(ep)
		d.event(block.DbgReadAIO)
		d.data.Submit(sub, &d.oneDone)
		return true
	}
	s := d.states.get(d.Driver)
	s.ext = append(s.ext[:0], format.Extent{Kind: format.ExtentData, GuestOff: off, Len: k, HostOff: host})
	hits := uint64(1)
	for off, n = off+k, n-k; n > 0; off, n = off+k, n-k {
		k = min(n, cs)
		h, _, ok := d.oneData(v, end, off, k)
		if !ok {
			d.states.put(s)
			d.unhold(ep)
			return false
		}
		hits++
		if x := &s.ext[len(s.ext)-1]; x.HostOff+x.Len == h {
			x.Len += k
		} else {
			s.ext = append(s.ext, format.Extent{Kind: format.ExtentData, GuestOff: off, Len: k, HostOff: h})
		}
	}
	d.countHits(r.Context(), hits)
	if len(s.ext) == 1 {
		host := s.ext[0].HostOff
		d.states.put(s)
		sub := r.Sub()
		sub.Op, sub.Off, sub.Len, sub.Iov = block.OpRead, host, r.Len, r.Iov
		sub.Tag = uint64(ep)
		d.event(block.DbgReadAIO)
		d.data.Submit(sub, &d.oneDone)
		return true
	}
	s.epoch, s.held = ep, true
	s.r = r
	s.pending = 1
	var skip int64
	for i := range s.ext {
		x := &s.ext[i]
		d.event(block.DbgReadAIO)
		d.subRead(s, r, d.data, x.HostOff, skip, x.Len)
		skip += x.Len
	}
	s.release()
	return true
}

// writeFast starts an in-place write (R7) without a lock when every
// cluster of r is COPIED allocated data in a table resident in tier 1, no
// FUA, the header is ready (R10), nothing is corrupt and no cluster
// overlaps metadata (R5); otherwise it reports false. No allocation.
func (d writer) writeFast(r *block.Request) bool {
	if r.Flags&block.FUA != 0 || d.corrupt.Load() || !d.headerReady.Load() {
		return false
	}
	ep := d.hold(r.Context())
	v := d.view.Load()
	end := d.fileEnd.Load()
	cs := v.geo.ClusterSize()
	s := d.states.get(d.Driver)
	s.ext = s.ext[:0]
	hits := uint64(0)
	for off, n := r.Off, r.Len; n > 0; {
		k := min(n, cs-off&(cs-1))
		h, copied, ok := d.oneData(v, end, off, k)
		if !ok || !copied || (!v.geo.ExternalData && v.overlaps(&d.meta, h, k)) {
			d.states.put(s)
			d.unhold(ep)
			return false
		}
		hits++
		if m := len(s.ext); m > 0 && s.ext[m-1].HostOff+s.ext[m-1].Len == h {
			s.ext[m-1].Len += k
		} else {
			s.ext = append(s.ext, format.Extent{Kind: format.ExtentData, GuestOff: off, Len: k, HostOff: h})
		}
		off, n = off+k, n-k
	}
	if len(s.ext) == 0 {
		d.states.put(s)
		d.unhold(ep)
		return false
	}
	d.countHits(r.Context(), hits)
	s.epoch, s.held = ep, true
	d.startWrite(s, r)
	return true
}

// countHits adds n tier-1 hits of the fast paths to ctx's counter (one
// cache line per Context: no line shared between IOThreads per request).
func (d reader) countHits(ctx *aio.Context, n uint64) {
	if b := d.batchFor(ctx); b != nil {
		b.hits.Add(n)
		return
	}
	d.otherHits.Add(n)
}

// fastHits sums the fast paths' hit counters.
func (d reader) fastHits() uint64 {
	n := d.otherHits.Load()
	if p := d.batches.Load(); p != nil {
		for _, b := range *p {
			n += b.hits.Load()
		}
	}
	return n
}
