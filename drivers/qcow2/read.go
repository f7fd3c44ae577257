package qcow2

import (
	"sync"
	"sync/atomic"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Read path.
//
//	Read ─▶ Map under mu with cached L2 tables only
//	   all tables cached, no compressed cluster
//	        ─▶ one file-child read per data extent, one backing read per
//	           unallocated extent (zeros past the backing end), zero-fill
//	           the rest; complete when the last child read completes: no
//	           allocation
//	   otherwise (L2 miss, compressed cluster)
//	        ─▶ coroutine: readGuest, one L2 table's range at a time

// reqState is the per-request state of the fast paths. It comes from the
// driver's free list, so a steady stream of requests allocates nothing.
//
// INVARIANT: pending counts the child requests in flight plus one guard
// held while they are being issued; r completes when it drops to 0. All
// fields are touched only on r's Context.
type reqState struct {
	d       *Driver
	r       *block.Request
	ext     []format.Extent
	iov     [][]byte
	pending int
	err     error
	next    *reqState
	held    bool   // holds an I/O epoch (see Driver.ioActive)
	epoch   uint32 // the epoch held
}

// stateFreeList recycles reqStates across Contexts.
type stateFreeList struct {
	mu   sync.Mutex
	free *reqState
}

func (l *stateFreeList) get(d *Driver) *reqState {
	l.mu.Lock()
	s := l.free
	if s != nil {
		l.free = s.next
		s.next = nil
	}
	l.mu.Unlock()
	if s == nil {
		s = &reqState{d: d, ext: make([]format.Extent, 0, 16), iov: make([][]byte, 0, 16)}
	}
	return s
}

func (l *stateFreeList) put(s *reqState) {
	s.r, s.err, s.pending, s.held = nil, nil, 0, false
	s.ext = s.ext[:0]
	clear(s.iov)
	s.iov = s.iov[:0]
	l.mu.Lock()
	s.next = l.free
	l.free = s
	l.mu.Unlock()
}

// RequestDone collects one child request of a fast-path request.
func (s *reqState) RequestDone(_ *block.Request, err error) {
	if err != nil && s.err == nil {
		s.err = err
	}
	s.release()
}

func (s *reqState) release() {
	s.pending--
	if s.pending > 0 {
		return
	}
	r, err, d := s.r, s.err, s.d
	if s.held {
		d.unhold(s.epoch)
	}
	d.states.put(s)
	r.Complete(err)
}

// l2Hit is the fast path's L2Func: cached tables only (this image's, then
// the shared clean cache; l2cache.go). REQUIRES: d.mu held.
func (d *Driver) l2Hit(off int64) ([]byte, error) {
	b := d.l2.lookup(off)
	if b == nil {
		d.missOff = off
		return nil, errMiss
	}
	return b, nil
}

// Read reads r.Len bytes at r.Off. Inside a plugged section of its
// Context the read joins the Context's batch (batch.go) and starts when the
// section ends.
func (d *Driver) Read(r *block.Request) {
	if ctx := r.Context(); ctx.Plugged() > 0 && d.queueRead(ctx, r) {
		return
	}
	d.mu.Lock()
	d.readLocked(r)
}

// readLocked maps r and starts it. REQUIRES: mu held; it is released.
func (d *Driver) readLocked(r *block.Request) {
	err := d.corruptErr
	fast := err == nil
	var ext []format.Extent
	if fast {
		switch host, how := d.mapData(r.Off, r.Len); how {
		case mapHit:
			d.readOne(r, host)
			return
		case mapMiss:
			fast = false
		default:
			// d.rext is scratch owned by whoever holds mu: the extents
			// are used or copied out before it is released.
			ext, err = format.Map(d.rext[:0], &d.geo, d.l1, d.l2OnceFn, r.Off, r.Len)
			d.rext = ext[:0]
			if err == errMiss {
				err, fast = nil, false
			}
		}
	}
	if fast && err == nil {
		for i := range ext {
			if ext[i].Kind == format.ExtentCompressed {
				fast = false
				break
			}
		}
	}
	if err != nil {
		d.mu.Unlock()
		r.Complete(d.formatErr(block.OpRead, r.Off, err))
		return
	}
	if !fast {
		d.mu.Unlock()
		r.Context().Go(func(co *aio.Co) {
			d.mu.Lock()
			ep := d.holdLocked()
			d.mu.Unlock()
			err := d.readGuest(co, r, r.Iov, r.Off, r.Len)
			d.unhold(ep)
			r.CompleteLater(d.formatErr(block.OpRead, r.Off, err))
		})
		return
	}
	if len(ext) == 1 && ext[0].Kind == format.ExtentData {
		// Several clusters, contiguous on the host.
		d.readOne(r, ext[0].HostOff)
		return
	}
	epoch := d.holdLocked()
	s := d.states.get(d)
	s.ext = append(s.ext[:0], ext...)
	s.epoch, s.held = epoch, true
	d.mu.Unlock()
	s.r = r
	s.pending = 1
	var skip int64
	for i := range s.ext {
		x := &s.ext[i]
		switch {
		case x.Kind == format.ExtentData:
			d.subRead(s, r, d.file, x.HostOff, skip, x.Len)
		case x.Kind == format.ExtentUnallocated && d.backing != nil:
			// The backing node's guest bytes, zeros past its end.
			have := min(x.Len, max(d.backingSize-x.GuestOff, 0))
			if have > 0 {
				d.subRead(s, r, d.backing, x.GuestOff, skip, have)
			}
			if have < x.Len {
				iovZero(r.Iov, skip+have, x.Len-have)
			}
		default:
			iovZero(r.Iov, skip, x.Len)
		}
		skip += x.Len
	}
	s.release()
}

// readOne starts a read that is one host extent: the child reads straight
// into r's buffers and its completion (oneDone) completes r, with no
// per-request state. REQUIRES: mu held; it is released.
func (d *Driver) readOne(r *block.Request, host int64) {
	epoch := d.holdLocked()
	d.mu.Unlock()
	sub := r.Sub()
	sub.Op, sub.Off, sub.Len, sub.Iov = block.OpRead, host, r.Len, r.Iov
	sub.Tag = uint64(epoch)
	d.file.Submit(sub, &d.oneDone)
}

// mapData's verdicts.
const (
	mapHit   = iota // plain data: the host offset is valid
	mapMiss         // the L2 table is in no cache (d.missOff names it)
	mapOther        // anything else: Map decides (and reports errors)
)

// mapData is the read fast path's mapping for the common case, a request
// inside one cluster of a standard-L2 image whose cluster is allocated
// data: it returns the host offset without building extents. Anything
// else — another cluster type, an entry or L1 entry that would not decode
// cleanly, extended L2, a range across clusters — is mapOther, and the
// caller runs Map, which handles and reports it. A table it found is left
// in d.onceOff/d.onceBuf for that Map, so the lookup is counted once.
// No allocation. REQUIRES: mu held.
func (d *Driver) mapData(off, n int64) (int64, int) {
	d.onceOff = -1
	l2Off, ok := d.geo.OneClusterL2(d.l1, off, n)
	if !ok {
		return 0, mapOther
	}
	table := d.l2.lookup(l2Off)
	if table == nil {
		d.missOff = l2Off
		return 0, mapMiss
	}
	d.onceOff, d.onceBuf = l2Off, table
	host, ok := d.geo.DataHost(table, off)
	if !ok {
		return 0, mapOther
	}
	return host, mapHit
}

// l2Once is the L2Func of Map after mapData: the table mapData found, not
// looked up (or counted) again, else l2Hit. REQUIRES: mu held.
func (d *Driver) l2Once(off int64) ([]byte, error) {
	if off == d.onceOff {
		return d.onceBuf, nil
	}
	return d.l2Hit(off)
}

// oneDone completes a fast-path read that was one child request (Read):
// the child's Parent is the guest request and its Tag the epoch held.
type oneDone struct{ d *Driver }

func (o *oneDone) RequestDone(sub *block.Request, err error) {
	r := sub.Parent
	o.d.unhold(uint32(sub.Tag))
	r.Complete(err)
}

// subRead reads n bytes at off of child c into r.Iov at skip, as one
// child request counted in s.
func (d *Driver) subRead(s *reqState, r *block.Request, c *block.Child, off, skip, n int64) {
	start := len(s.iov)
	s.iov = iovSlice(s.iov, r.Iov, skip, n)
	sub := r.Sub()
	sub.Op, sub.Off, sub.Len = block.OpRead, off, n
	sub.Iov = s.iov[start:len(s.iov):len(s.iov)]
	s.pending++
	c.Submit(sub, s)
}

// mapRange maps [off, off+n) where n stays inside one L2 table's range,
// bringing the L2 table into the cache on a miss (l2Fetch).
func (d *Driver) mapRange(co *aio.Co, parent *block.Request, dst []format.Extent, off, n int64) ([]format.Extent, error) {
	var priv l2Private
	for tries := 0; ; tries++ {
		d.mu.Lock()
		if err := d.corruptErr; err != nil {
			d.mu.Unlock()
			return dst, err
		}
		if d.damage != nil {
			if err := d.damageInRangeLocked(off, n); err != nil {
				d.mu.Unlock()
				return dst[:0], err
			}
		}
		ext, err := format.Map(dst[:0], &d.geo, d.l1, priv.mapFn(d), off, n)
		miss := d.missOff
		d.mu.Unlock()
		if err != errMiss {
			return ext, err
		}
		if tries > 4 {
			return ext, &format.FormatError{Field: "l2_cache", Reason: "L2 table evicted repeatedly", Err: format.ErrLimit}
		}
		if priv, err = d.l2Fetch(co, parent, miss); err != nil {
			return ext, err
		}
	}
}

// readGuest reads the guest range [off, off+n) into iov in a coroutine:
// data extents from the file, compressed clusters inflated, unallocated
// ranges from the backing node (zeros past its end) or zeros.
func (d *Driver) readGuest(co *aio.Co, parent *block.Request, iov [][]byte, off, n int64) error {
	var ext []format.Extent
	var win [][]byte
	var cbuf []byte
	var skip int64
	cov := d.geo.L1Coverage()
	for n > 0 {
		chunk := min(n, (off/cov+1)*cov-off)
		var err error
		ext, err = d.mapRange(co, parent, ext, off, chunk)
		if err != nil {
			return err
		}
		for _, x := range ext {
			switch x.Kind {
			case format.ExtentData:
				win = iovSlice(win[:0], iov, skip, x.Len)
				if err := d.childIO(co, parent, d.file, block.OpRead, x.HostOff, win, x.Len); err != nil {
					return err
				}
			case format.ExtentCompressed:
				if cbuf == nil {
					cbuf = make([]byte, d.geo.ClusterSize())
				}
				if err := d.inflateCached(co, parent, cbuf, x.Compressed); err != nil {
					return err
				}
				in := x.GuestOff & (d.geo.ClusterSize() - 1)
				block.CopyToIov(iov, skip, cbuf[in:in+x.Len])
			case format.ExtentUnallocated:
				if err := d.readBacking(co, parent, iov, skip, x.GuestOff, x.Len); err != nil {
					return err
				}
			default:
				iovZero(iov, skip, x.Len)
			}
			skip += x.Len
		}
		off += chunk
		n -= chunk
	}
	return nil
}

// inflateCached inflates the compressed cluster c into dst, through a
// one-cluster cache of the last cluster inflated (sequential readers of a
// compressed cluster would otherwise inflate it once per request).
func (d *Driver) inflateCached(co *aio.Co, parent *block.Request, dst []byte, c format.CompressedDescriptor) error {
	d.mu.Lock()
	hit := d.zcache.buf != nil && d.zcache.desc == c
	if hit {
		copy(dst, d.zcache.buf)
	}
	d.mu.Unlock()
	if hit {
		return nil
	}
	if err := d.readCompressed(co, parent, dst, c); err != nil {
		return err
	}
	d.mu.Lock()
	if d.zcache.buf == nil {
		d.zcache.buf = make([]byte, len(dst))
	}
	copy(d.zcache.buf, dst)
	d.zcache.desc = c
	d.mu.Unlock()
	return nil
}

// readCompressed inflates the compressed cluster described by c into dst.
func (d *Driver) readCompressed(co *aio.Co, parent *block.Request, dst []byte, c format.CompressedDescriptor) error {
	size := c.Size()
	if size <= 0 || size > 2*d.geo.ClusterSize() {
		return format.Corrupt("compressed_size", uint64(max(size, 0)), "compressed cluster size out of range")
	}
	src := make([]byte, size)
	if err := d.fileRead(co, parent, src, c.HostOff); err != nil {
		return err
	}
	return format.DecompressCluster(dst, src, d.hdr.CompressionType)
}

// readBacking fills [skip, skip+n) of iov with the backing node's bytes at
// guest offset off, zeros past its end, or zeros without a backing node.
func (d *Driver) readBacking(co *aio.Co, parent *block.Request, iov [][]byte, skip, off, n int64) error {
	if d.backing == nil {
		iovZero(iov, skip, n)
		return nil
	}
	have := min(n, max(d.backingSize-off, 0))
	if have > 0 {
		win := iovSlice(nil, iov, skip, have)
		if err := d.childIO(co, parent, d.backing, block.OpRead, off, win, have); err != nil {
			return err
		}
	}
	if have < n {
		iovZero(iov, skip+have, n-have)
	}
	return nil
}

// BlockStatus reports the status of the extent at r.Off, merged with the
// following extents of the same status, within one L2 table's range.
func (d *Driver) BlockStatus(r *block.Request) {
	s := d.states.get(d)
	d.mu.Lock()
	end := min(r.Off+r.Len, d.geo.Size)
	cov := d.geo.L1Coverage()
	n := min(end, (r.Off/cov+1)*cov) - r.Off
	var err error
	miss := false
	if n <= 0 {
		d.mu.Unlock()
		d.states.put(s)
		r.Complete(nil)
		return
	}
	s.ext, err = format.Map(s.ext[:0], &d.geo, d.l1, d.l2HitFn, r.Off, n)
	if err == errMiss {
		miss, err = true, nil
	}
	if !miss && err == nil {
		d.setStatus(r, s.ext)
	}
	d.mu.Unlock()
	d.states.put(s)
	if !miss {
		r.Complete(d.formatErr(block.OpBlockStatus, r.Off, err))
		return
	}
	r.Context().Go(func(co *aio.Co) {
		ext, err := d.mapRange(co, r, nil, r.Off, n)
		if err == nil {
			d.setStatus(r, ext)
		}
		r.CompleteLater(d.formatErr(block.OpBlockStatus, r.Off, err))
	})
}

func (d *Driver) extStatus(k format.ExtentKind) block.Status {
	switch k {
	case format.ExtentData, format.ExtentCompressed:
		return block.StatusData | block.StatusAllocated
	case format.ExtentZero:
		return block.StatusZero | block.StatusAllocated
	}
	if d.backing == nil {
		return block.StatusZero
	}
	return 0
}

func (d *Driver) setStatus(r *block.Request, ext []format.Extent) {
	if len(ext) == 0 {
		return
	}
	st := d.extStatus(ext[0].Kind)
	var pnum int64
	for _, x := range ext {
		if d.extStatus(x.Kind) != st {
			break
		}
		pnum += x.Len
	}
	r.Status, r.Pnum = st, pnum
}

// I/O epochs keep a freed host cluster from being reused while a request
// that mapped it before the free may still read or write it: requests that
// map outside metaLock (fast reads and writes, slow reads) hold the
// current epoch until their data I/O completed, and applyFrees starts a
// new epoch and waits until the old one has no holder before it
// decrements any refcount (QEMU gets the same from its request tracking).

// holdLocked enters the current epoch. REQUIRES: mu held.
func (d *Driver) holdLocked() uint32 {
	e := d.ioEpoch
	d.ioActive[e&1].n.Add(1)
	return e
}

// unhold leaves epoch e, waking a free waiting for it to drain. Only the
// holder that brings the count to zero takes mu: waitIOEpoch reads the
// count and parks under mu, so a drop to zero either happens before its
// look (it does not park) or is followed by this look at freeWaiter.
func (d *Driver) unhold(e uint32) {
	if d.ioActive[e&1].n.Add(-1) != 0 {
		return
	}
	d.mu.Lock()
	var w *aio.Co
	if d.ioActive[e&1].n.Load() == 0 && d.freeWaiter != nil && d.freeParity == e&1 {
		w, d.freeWaiter = d.freeWaiter, nil
	}
	d.mu.Unlock()
	if w != nil {
		w.Wake()
	}
}

// waitIOEpoch starts a new epoch and parks co until every request of the
// previous one has finished its I/O. REQUIRES: metaLock held (one waiter).
func (d *Driver) waitIOEpoch(co *aio.Co) {
	d.mu.Lock()
	old := d.ioEpoch
	d.ioEpoch++
	for d.ioActive[old&1].n.Load() > 0 {
		d.freeWaiter, d.freeParity = co, old&1
		d.mu.Unlock()
		co.Yield()
		d.mu.Lock()
	}
	d.freeWaiter = nil
	d.mu.Unlock()
}

// epochCount is the number of requests holding one epoch parity. Every
// Context that reads or writes the image changes it, so each count has a
// cache line to itself.
type epochCount struct {
	n atomic.Int64
	_ [56]byte
}
