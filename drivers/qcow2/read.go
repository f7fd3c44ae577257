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
	held    bool     // holds an I/O epoch (see Driver.ioActive)
	epoch   epochRef // the epoch held
	m       l2Mapper
	aes     *aesWork // an AES in-place write's ciphertext (aes.go)
}

// stateFreeList recycles reqStates across Contexts: a sync.Pool, whose
// per-P caches keep Contexts on different threads off one shared lock.
type stateFreeList struct {
	p sync.Pool
}

func (l *stateFreeList) get(d *Driver) *reqState {
	s, _ := l.p.Get().(*reqState)
	if s == nil {
		s = &reqState{d: d, ext: make([]format.Extent, 0, 16), iov: make([][]byte, 0, 16)}
		s.m.d = d
		s.m.fn = s.m.lookup
	}
	return s
}

func (l *stateFreeList) put(s *reqState) {
	s.r, s.err, s.pending, s.held = nil, nil, 0, false
	s.ext = s.ext[:0]
	clear(s.iov)
	s.iov = s.iov[:0]
	s.m.foundBuf, s.m.priv = nil, l2Private{}
	l.p.Put(s)
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
	if d.aes != nil && err == nil && r.Op == block.OpRead {
		err = d.aesReadDone(r, s.ext) // aes.go
	}
	if s.aes != nil {
		d.aes.put(s.aes)
		s.aes = nil
	}
	if s.held {
		d.unhold(s.epoch)
	}
	d.states.put(s)
	r.Complete(err)
}

// Read reads r.Len bytes at r.Off: without a lock when its clusters are
// data mapped by tables in tier 1 (readFast, fast.go), else under mu
// (readLocked). Inside a plugged section of its Context the read joins
// the Context's batch (batch.go) and starts when the section ends.
func (d *Driver) Read(r *block.Request) {
	if ctx := r.Context(); ctx.Plugged() > 0 && readerOf(d).queueRead(ctx, r) {
		return
	}
	if !readerOf(d).readFast(r) {
		readerOf(d).readLocked(r)
	}
}

// readLocked maps r under mu and starts it: every read readFast does not
// take (a table only in tier 2 or on disk, compressed, unallocated or zero
// clusters, extended L2, damage, a race with a writer).
func (d reader) readLocked(r *block.Request) {
	s := d.states.get(d.Driver)
	m := &s.m
	m.reset(true)
	d.mu.Lock()
	d.checkViewLocked()
	err := d.mu.corruptErr
	fast := err == nil
	if fast {
		switch host, how := d.mapData(m, r.Off, r.Len); how {
		case mapHit:
			ep := d.hold(r.Context()) // under mu: no free moves the epoch meanwhile
			d.mu.Unlock()
			d.states.put(s)
			d.readOne(r, host, ep)
			return
		case mapMiss:
			fast = false
		default:
			s.ext, err = format.Map(s.ext[:0], &d.mu.geo, d.mu.l1, m.fn, r.Off, r.Len)
			if err == errMiss {
				err, fast = nil, false
			}
		}
	}
	if fast && err == nil {
		for i := range s.ext {
			if s.ext[i].Kind == format.ExtentCompressed {
				fast = false
				break
			}
		}
	}
	if err != nil || !fast {
		d.mu.Unlock()
		d.states.put(s)
		if err != nil {
			d.failRead(r, err) // read_damage.go
			return
		}
		r.Context().Go(func(co *aio.Co) {
			ep := d.hold(r.Context())
			err := d.readGuest(co, r, r.Iov, r.Off, r.Len)
			d.unhold(ep)
			r.CompleteLater(d.formatErr(block.OpRead, r.Off, d.readDamage(co, err))) // read_damage.go
		})
		return
	}
	epoch := d.hold(r.Context())
	d.mu.Unlock()
	if len(s.ext) == 1 && s.ext[0].Kind == format.ExtentData {
		// Several clusters, contiguous on the host.
		host := s.ext[0].HostOff
		d.states.put(s)
		d.readOne(r, host, epoch)
		return
	}
	s.epoch, s.held = epoch, true
	s.r = r
	s.pending = 1
	var skip int64
	for i := range s.ext {
		x := &s.ext[i]
		switch {
		case x.Kind == format.ExtentData:
			d.event(block.DbgReadAIO)
			d.subRead(s, r, d.data, x.HostOff, skip, x.Len)
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

// readOne starts a read that is one host extent, holding epoch ep: the
// child reads straight into r's buffers and its completion (oneDone)
// completes r, with no per-request state.
func (d reader) readOne(r *block.Request, host int64, ep epochRef) {
	d.event(block.DbgReadAIO)
	sub := r.Sub()
	sub.Op, sub.Off, sub.Len, sub.Iov = block.OpRead, host, r.Len, r.Iov
	sub.Tag = uint64(ep)
	d.data.Submit(sub, &d.oneDone)
}

// l2Mapper is the L2Func of a locked mapping (Map under mu), and what it
// found: the table a one-cluster lookup (mapData) already counted, handed
// to the Map after it without a second lookup, and the table that missed.
// It belongs to one request (reqState) or one coroutine (mapRange); fn
// runs only under Driver.mu.
type l2Mapper struct {
	d *Driver
	// count: fast-path lookups, counted as hits and misses, with tier 2;
	// otherwise tier 1 only, not counted (a slow path's second look).
	count    bool
	priv     l2Private // a table a reader could not cache (l2Fetch)
	foundOff int64
	foundBuf []byte
	miss     int64 // the table that missed, after errMiss
	fn       format.L2Func
}

func newL2Mapper(d *Driver) *l2Mapper {
	m := &l2Mapper{d: d}
	m.fn = m.lookup // bound once: no allocation per Map
	return m
}

func (m *l2Mapper) reset(count bool) {
	m.count, m.foundOff, m.foundBuf, m.miss = count, -1, nil, -1
	m.priv = l2Private{}
}

// lookup returns the cached table at off or errMiss (naming it in miss).
// REQUIRES: Driver.mu held.
func (m *l2Mapper) lookup(off int64) ([]byte, error) {
	if off == m.foundOff {
		return m.foundBuf, nil
	}
	d := m.d
	var b []byte
	switch {
	case m.count:
		b = d.l2.lookup(off)
	case off == m.priv.off && m.priv.buf != nil && d.l2.snap(off) == m.priv.snap:
		b = m.priv.buf
	default:
		if t, ok := d.l2.set.Resident(d.l2.key(off)); ok {
			b = d.l2.tabs[t.Slot()].buf
		}
	}
	if b == nil {
		m.miss = off
		return nil, errMiss
	}
	return b, nil
}

// mapData's verdicts.
const (
	mapHit   = iota // plain data: the host offset is valid
	mapMiss         // the L2 table is in no cache (m.miss names it)
	mapOther        // anything else: Map decides (and reports errors)
)

// mapData is the locked read path's mapping for the common case, a
// request inside one cluster of a standard-L2 image whose cluster is
// allocated data: it returns the host offset without building extents.
// Anything else — another cluster type, an entry or L1 entry that would
// not decode cleanly, extended L2, a range across clusters — is mapOther,
// and the caller runs Map with m, which handles and reports it. A table it
// found is left in m for that Map, so the lookup is counted once.
// No allocation. REQUIRES: mu held.
func (d reader) mapData(m *l2Mapper, off, n int64) (int64, int) {
	l2Off, ok := d.mu.geo.OneClusterL2(d.mu.l1, off, n)
	if !ok {
		return 0, mapOther
	}
	table := d.l2.lookup(l2Off)
	if table == nil {
		m.miss = l2Off
		return 0, mapMiss
	}
	m.foundOff, m.foundBuf = l2Off, table
	host, ok := d.mu.geo.DataHost(table, off)
	if !ok {
		return 0, mapOther
	}
	return host, mapHit
}

// oneDone completes a fast-path read that was one child request (Read):
// the child's Parent is the guest request and its Tag the epoch held.
type oneDone struct{ d *Driver }

func (o *oneDone) RequestDone(sub *block.Request, err error) {
	r := sub.Parent
	o.d.unhold(epochRef(sub.Tag))
	if o.d.aes != nil && err == nil {
		err = o.d.aesDecrypt(r.Iov, 0, r.Len, r.Off) // aes.go: r is one data extent
	}
	r.Complete(err)
}

// subRead reads n bytes at off of child c into r.Iov at skip, as one
// child request counted in s.
func (d reader) subRead(s *reqState, r *block.Request, c *block.Child, off, skip, n int64) {
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
func (d reader) mapRange(co *aio.Co, parent *block.Request, dst []format.Extent, off, n int64) ([]format.Extent, error) {
	m := newL2Mapper(d.Driver)
	m.reset(false)
	for tries := 0; ; tries++ {
		d.mu.Lock()
		if err := d.mu.corruptErr; err != nil {
			d.mu.Unlock()
			return dst, err
		}
		if d.mu.damage != nil {
			if err := d.damageInRangeLocked(off, n); err != nil {
				d.mu.Unlock()
				return dst[:0], err
			}
		}
		g := d.mu.geo
		g.Size = d.mapEndLocked(off) // past the disk: the VM state area
		ext, err := format.Map(dst[:0], &g, d.mu.l1, m.fn, off, n)
		d.mu.Unlock()
		if err != errMiss {
			return ext, err
		}
		if tries > 4 {
			return ext, &format.FormatError{Field: "l2_cache", Reason: "L2 table evicted repeatedly", Err: format.ErrLimit}
		}
		if m.priv, err = d.l2Fetch(co, parent, m.miss); err != nil {
			return ext, err
		}
	}
}

// readGuest reads the guest range [off, off+n) into iov in a coroutine:
// data extents from the file, compressed clusters inflated, unallocated
// ranges from the backing node (zeros past its end) or zeros.
func (d reader) readGuest(co *aio.Co, parent *block.Request, iov [][]byte, off, n int64) error {
	var ext []format.Extent
	var win [][]byte
	var cbuf []byte
	var skip int64
	cov := d.mu.geo.L1Coverage()
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
				d.event(block.DbgReadAIO)
				if err := d.childIO(co, parent, d.data, block.OpRead, x.HostOff, win, x.Len); err != nil {
					return err
				}
				if d.aes != nil { // aes.go
					if err := d.aesDecrypt(win, 0, x.Len, x.GuestOff); err != nil {
						return err
					}
				}
			case format.ExtentCompressed:
				if cbuf == nil {
					cbuf = make([]byte, d.mu.geo.ClusterSize())
				}
				if err := d.inflateCached(co, parent, cbuf, x.Compressed); err != nil {
					return err
				}
				in := x.GuestOff & (d.mu.geo.ClusterSize() - 1)
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
func (d reader) inflateCached(co *aio.Co, parent *block.Request, dst []byte, c format.CompressedDescriptor) error {
	d.mu.Lock()
	hit := d.mu.zcache.buf != nil && d.mu.zcache.desc == c
	if hit {
		copy(dst, d.mu.zcache.buf)
	}
	d.mu.Unlock()
	if hit {
		return nil
	}
	if err := d.readCompressed(co, parent, dst, c); err != nil {
		return err
	}
	d.mu.Lock()
	if d.mu.zcache.buf == nil {
		d.mu.zcache.buf = make([]byte, len(dst))
	}
	copy(d.mu.zcache.buf, dst)
	d.mu.zcache.desc = c
	d.mu.Unlock()
	return nil
}

// readCompressed inflates the compressed cluster described by c into dst.
func (d reader) readCompressed(co *aio.Co, parent *block.Request, dst []byte, c format.CompressedDescriptor) error {
	size := c.Size()
	if size <= 0 || size > 2*d.mu.geo.ClusterSize() {
		return format.Corrupt("compressed_size", uint64(max(size, 0)), "compressed cluster size out of range")
	}
	src := make([]byte, size)
	if err := d.fileRead(co, parent, src, c.HostOff); err != nil {
		return err
	}
	return format.DecompressCluster(dst, src, d.mu.hdr.CompressionType)
}

// readBacking fills [skip, skip+n) of iov with the backing node's bytes at
// guest offset off, zeros past its end, or zeros without a backing node.
func (d reader) readBacking(co *aio.Co, parent *block.Request, iov [][]byte, skip, off, n int64) error {
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
	end := min(r.Off+r.Len, d.mu.geo.Size)
	cov := d.mu.geo.L1Coverage()
	n := min(end, (r.Off/cov+1)*cov) - r.Off
	var err error
	miss := false
	if n <= 0 {
		d.mu.Unlock()
		d.states.put(s)
		r.Complete(nil)
		return
	}
	s.m.reset(true)
	s.ext, err = format.Map(s.ext[:0], &d.mu.geo, d.mu.l1, s.m.fn, r.Off, n)
	if err == errMiss {
		miss, err = true, nil
	}
	if !miss && err == nil {
		readerOf(d).setStatus(r, s.ext)
	}
	d.mu.Unlock()
	d.states.put(s)
	if !miss {
		r.Complete(d.formatErr(block.OpBlockStatus, r.Off, err))
		return
	}
	r.Context().Go(func(co *aio.Co) {
		ext, err := readerOf(d).mapRange(co, r, nil, r.Off, n)
		if err == nil {
			readerOf(d).setStatus(r, ext)
		}
		r.CompleteLater(d.formatErr(block.OpBlockStatus, r.Off, err))
	})
}

func (d reader) extStatus(k format.ExtentKind) block.Status {
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

func (d reader) setStatus(r *block.Request, ext []format.Extent) {
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

// unhold leaves epoch e. Only the holder that brings the count to zero
// while a free waits (freeWaiting) takes mu: waitIOEpoch sets the flag
// before it looks at the count, so either it sees the zero or the holder
// sees the flag.
func (d *Driver) unhold(ref epochRef) {
	if d.ioActive[ref.parity()][ref.stripe()].n.Add(-1) != 0 || !d.freeWaiting.Load() {
		return
	}
	d.mu.Lock()
	var w *aio.Co
	if d.activeIn(ref.parity()) == 0 && d.mu.freeWaiter != nil && d.mu.freeParity == ref.parity() {
		w, d.mu.freeWaiter = d.mu.freeWaiter, nil
		d.freeWaiting.Store(false)
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
	old := d.ioEpoch.Load()
	d.ioEpoch.Store(old + 1)
	for {
		d.mu.freeWaiter, d.mu.freeParity = co, old&1
		d.freeWaiting.Store(true)
		if d.activeIn(old&1) == 0 {
			break
		}
		d.mu.Unlock()
		co.Yield()
		d.mu.Lock()
	}
	d.mu.freeWaiter = nil
	d.freeWaiting.Store(false)
	d.mu.Unlock()
}

// activeIn returns the requests holding an epoch of parity p, over all
// stripes.
func (d *Driver) activeIn(p uint32) int64 {
	var n int64
	for i := range d.ioActive[p] {
		n += d.ioActive[p][i].n.Load()
	}
	return n
}

// epochCount is the number of requests holding one epoch parity in one
// stripe. Each count sits 128 bytes from its neighbours, so no two share
// a cache line whatever the array's alignment.
type epochCount struct {
	n atomic.Int64
	_ [120]byte
}
