package qcow2

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/cache"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// L2 tables live in the cache package (docs/design/metadata-cache.md):
//
//	tier 0  Driver     L1 table; gens, the generation of each table
//	tier 1  l2Cache    this image's cache.Set: every dirty or pinned L2
//	                   table plus recently used clean ones; bounded, its
//	                   memory allocated at open
//	tier 2  shared     one cache.Clean for every open image
//	                   (DriverOptions.SharedCache): clean, immutable copies
//
// Lookups go tier 1 → tier 2 → file. The fast paths (read mapping, in-place
// write, block status) only look: a tier-2 hit is mapped straight from the
// shared copy, under Driver.mu, without copying or allocating. The slow
// paths bring a table into tier 1 (from tier 2 by copy, else from the file)
// before they use or change it. A clean table that tier 1 evicts is offered
// to tier 2; dirty and pinned tables are never evicted, and reach the file
// only through flushMetadata (stage C, flushL2). Refcount blocks are not in
// the cache package: they stay in Driver.rb, loaded once and written in
// stage A.
//
// Generations. Every tier-2 copy is filed under the generation gens held
// for its table when it was offered, and a lookup presents the current one,
// so a copy that predates a change, a free or a reuse of the cluster can
// never be returned (the shared cache may drop, delay or reorder offers):
//
//   - markDirty moves the table's generation forward (before the changed
//     bytes can reach tier 2, which only happens at eviction after the
//     flush);
//   - drop (the cluster was freed, or is being reused for a new table)
//     moves it forward if the table has one, and bumps freeEpoch;
//   - generations come from one counter per image, never reused, and an
//     offer creates the table's entry first, so a table without an entry
//     has no tier-2 copy worth looking for.
//
// A load from the file snapshots (gens[off], freeEpoch) before its I/O and
// throws the bytes away if either moved meanwhile: the table was changed
// (and possibly written back and evicted) or a cluster was freed.
//
// Locking: every method of l2Cache REQUIRES Driver.mu, except where noted;
// every Insert, Discard and Peek of the set is made under it, so a table
// returned unpinned by get stays valid until mu is released. Only Flush
// runs without mu (under metaLock, which keeps writers out).

// kindL2 labels L2 tables in cache keys (the Set holds nothing else).
const kindL2 cache.Kind = 1

// levelL2 is the write-back level of L2 tables. Refcount blocks, which
// would be level 0, stay outside the set and are written in stage A.
const levelL2 cache.Level = 1

// defaultL2CacheBytes is QEMU's default maximum: with the per-image cap
// (2 × L1 entries + 8 tables) a smaller image gets only what it can use.
// It decides how often random writes over a large image write L2 tables
// back: with 8 MiB, 4 KiB allocating writes over a 64 GiB image wrote 13
// bytes of metadata per byte of data.
const defaultL2CacheBytes = 32 << 20

// DefaultSharedCacheBytes is the budget of the clean L2 cache (tier 2) an
// image gets for itself when DriverOptions.SharedCache is nil. A caller
// that opens several images (a backing chain, a server) creates one cache
// and passes it to each (drivers/chain does).
const DefaultSharedCacheBytes = 64 << 20

// CacheStats are the metadata cache counters of one image
// (Driver.CacheStats).
type CacheStats struct {
	// L2 is the image's own set of L2 tables (tier 1). Hits and Misses
	// count lookups by the fast paths and by writers; a slow path's second
	// look, after its fast path missed, is not counted (a cold read is one
	// miss and one fill). Fills counts tables
	// brought in (from tier 2, from the file, or new), Evictions clean
	// tables pushed out, Full the times no slot could be taken.
	L2 cache.Stats
	// SharedHits and SharedMisses count this image's lookups in the
	// shared clean cache after a tier-1 miss; SharedOffers the clean
	// tables it handed over on eviction (a table the shared cache already
	// held under the same generation is not copied again).
	SharedHits, SharedMisses, SharedOffers uint64
	// FileLoads counts L2 tables read from the image file; PrivateLoads
	// those a reader mapped from its own copy because every tier-1 slot
	// was dirty or pinned. RoomWaits counts the times a writer found every
	// tier-1 slot pinned (after a flush) and waited for an unpin.
	FileLoads, PrivateLoads, RoomWaits uint64
	// Shared is the shared cache's own counters, summed over every image
	// that uses it.
	Shared cache.Stats
}

// CacheStats returns the image's L2 cache counters. It does not allocate.
func (d *Driver) CacheStats() CacheStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.l2
	if c == nil {
		return CacheStats{}
	}
	l2 := c.set.Stats()
	l2.Hits += readerOf(d).fastHits()
	return CacheStats{
		L2:           l2,
		SharedHits:   c.sharedHits,
		SharedMisses: c.sharedMisses,
		SharedOffers: c.offers,
		FileLoads:    c.fileLoads,
		PrivateLoads: c.privateLoads,
		RoomWaits:    c.roomWaits,
		Shared:       c.shared.Stats(),
	}
}

// l2Cache is one image's tier 1 plus its view of tier 2.
//
// INVARIANT: tabs[i].t is slot i of set and tabs[i].buf its bytes
// (len == cluster size), fixed for the set's life.
type l2Cache struct {
	set      *cache.Set
	tabs     []l2Table
	capacity int // tables
	// dirty is the set's count of dirty tables as of the last change made
	// under mu (markDirty, drop, the end of flushL2); during flushL2 it may
	// be higher than the set's. Read by the flush heuristics.
	dirty   int
	image   cache.ImageID
	shared  cache.Clean
	quietFn format.L2Func // Driver.l2Quiet, bound once

	gens      map[int64]uint64 // table offset → generation (see above)
	genSeq    uint64
	freeEpoch uint64

	// unpins counts Unpins; waiters are coroutines (holding no pin) that
	// wait for one because every slot was pinned (roomWait).
	unpins  uint64
	waiters []*aio.Co

	sharedHits, sharedMisses, offers, fileLoads, privateLoads, roomWaits uint64
}

// l2Table is a handle on one tier-1 slot. buf is the slot's bytes: they
// are the table's while the holder keeps it pinned (l2ForWrite, l2Acquire)
// or holds Driver.mu since the lookup (get). Change them only under mu and
// with markDirty.
type l2Table struct {
	buf []byte
	t   *cache.Table
}

// initL2 creates the image's L2 cache at open: tier 1 holds at most
// L2CacheBytes (default 32 MiB), never more than twice the tables the L1
// table can point at plus 8, and at least 4 tables.
func (d *Driver) initL2() error {
	cs := d.mu.geo.ClusterSize()
	bytes := d.opts.L2CacheBytes
	if bytes <= 0 {
		bytes = defaultL2CacheBytes
	}
	n := min(bytes/cs, 2*int64(len(d.mu.l1))+8, 1<<30)
	n = max(n, 4)
	// The tables are allocated now: a size this machine cannot hold is
	// refused instead of taking the process down (iotest 137 asks for
	// 1 TiB on a 32 PiB image).
	if limit := l2CacheLimit(); n*cs > limit {
		return d.openErr(block.Overflow, fmt.Errorf("L2 cache size too big: %d bytes of L2 tables asked for, more than half of this machine's memory (%d bytes)", n*cs, 2*limit))
	}
	shared := d.opts.SharedCache
	if shared == nil {
		// Nobody to share with: a private tier 2 of the default size.
		shared = cache.NewLRU(DefaultSharedCacheBytes)
	}
	c := &l2Cache{
		capacity: int(n),
		image:    cache.NewImageID(),
		shared:   shared,
		gens:     make(map[int64]uint64),
		tabs:     make([]l2Table, n),
	}
	set, err := cache.NewSet(cache.Config{
		Tables:    int(n),
		TableSize: int(cs),
		Load:      errSetLoadFn,
		Evicted:   c.evicted,
	})
	if err != nil {
		return d.openErr(block.Overflow, err)
	}
	c.set = set
	for i := range c.tabs {
		t := set.Slot(i)
		c.tabs[i] = l2Table{buf: t.Data(), t: t}
	}
	d.l2 = c
	return nil
}

var errSetLoad = errors.New("qcow2: L2 tables are inserted by the driver, never loaded by the set")

func errSetLoadFn(cache.Key, []byte) error { return errSetLoad }

func (c *l2Cache) key(off int64) cache.Key {
	return cache.Key{Image: c.image, Kind: kindL2, Off: off}
}

// get returns the tier-1 table at off, unpinned, counting the lookup (the
// locked paths; the lock-free ones use set.View). No allocation.
func (c *l2Cache) get(off int64) *l2Table {
	t, ok := c.set.Peek(c.key(off))
	if !ok {
		return nil
	}
	return &c.tabs[t.Slot()]
}

// lookup returns the bytes of the table at off from tier 1, else from
// tier 2 under the table's current generation, else nil. The bytes are
// valid until mu is released (tier-2 bytes for ever: they are immutable).
// The fast paths' lookup: no allocation, no I/O.
func (c *l2Cache) lookup(off int64) []byte {
	if t := c.get(off); t != nil {
		return t.buf
	}
	return c.sharedGet(off)
}

// sharedGet looks the table at off up in tier 2, counting the lookup.
func (c *l2Cache) sharedGet(off int64) []byte {
	if gen, ok := c.gens[off]; ok {
		if b, ok := c.shared.Get(c.key(off), gen); ok && len(b) == len(c.tabs[0].buf) {
			c.sharedHits++
			return b
		}
	}
	c.sharedMisses++
	return nil
}

// nextGen returns a generation no table of this image had before.
func (c *l2Cache) nextGen() uint64 {
	c.genSeq++
	return c.genSeq
}

// evicted is the set's Evicted hook: offer the clean table leaving tier 1
// to tier 2. It runs inside an Insert, hence under Driver.mu.
func (c *l2Cache) evicted(key cache.Key, data []byte) {
	gen, ok := c.gens[key.Off]
	if !ok {
		gen = c.nextGen()
		c.gens[key.Off] = gen
	}
	if c.shared.Contains(key, gen) {
		return
	}
	c.offers++
	c.shared.Offer(key, gen, append([]byte(nil), data...))
}

// insert makes the table at off resident with the bytes of src (zeros when
// nil) and returns it pinned; a resident table wins over src.
func (c *l2Cache) insert(off int64, src []byte) (*l2Table, error) {
	t, err := c.set.Insert(c.key(off), src)
	if err != nil {
		if err == cache.ErrFull {
			return nil, &format.FormatError{Field: "l2_cache", Reason: "every cached L2 table is dirty or pinned", Err: format.ErrLimit}
		}
		return nil, err
	}
	return &c.tabs[t.Slot()], nil
}

// create puts a new table at off (a cluster just allocated for it) with the
// bytes of src (zeros when nil), dirty and pinned. Whatever was cached for
// the offset before is dropped first.
func (c *l2Cache) create(off int64, src []byte) (*l2Table, error) {
	c.drop(off)
	t, err := c.insert(off, src)
	if err != nil {
		return nil, err
	}
	c.markDirty(t)
	return t, nil
}

// markDirty records a change of t's bytes: a new generation, and a write
// back in the next flush. REQUIRES: t pinned; no flush running (metaLock).
func (c *l2Cache) markDirty(t *l2Table) {
	c.gens[t.t.Key().Off] = c.nextGen()
	t.t.MarkDirty(levelL2)
	c.dirty = c.dirtyCount()
}

// pin pins t, found with get under the same hold of mu. It reports false
// if t is no longer resident (it cannot be, under mu; checked anyway).
func (c *l2Cache) pin(t *l2Table) bool {
	return c.set.Pin(t.t)
}

// unpin drops a pin of t and returns the coroutines to wake (after mu is
// released) because they wait for one.
func (c *l2Cache) unpin(t *l2Table) []*aio.Co {
	t.t.Unpin()
	c.unpins++
	w := c.waiters
	c.waiters = nil
	return w
}

// drop forgets the table at off: its cluster was freed (or is about to hold
// a new table). A dirty copy is not written back. Tier-2 copies are hidden
// by the generation step.
func (c *l2Cache) drop(off int64) {
	if c.set.Discard(c.key(off)) {
		c.dirty = c.dirtyCount()
	}
	if _, ok := c.gens[off]; ok {
		c.gens[off] = c.nextGen()
	}
	c.freeEpoch++
}

// dirtyCount returns the number of dirty tables.
func (c *l2Cache) dirtyCount() int {
	return int(c.set.Stats().Dirty)
}

// l2Snap is what a load from the file checks after its I/O.
type l2Snap struct{ gen, epoch uint64 }

func (c *l2Cache) snap(off int64) l2Snap {
	return l2Snap{gen: c.gens[off], epoch: c.freeEpoch}
}

// l2Private is a table a reader loaded but could not cache (every tier-1
// slot dirty or pinned); it is valid while its snapshot holds (l2Mapper).
type l2Private struct {
	off  int64
	buf  []byte
	snap l2Snap
}

// l2Fetch brings the L2 table at off into tier 1 for a reader (from tier 2,
// else from the file). When tier 1 has no slot to give it returns the
// table as a private copy instead. It takes no metaLock and waits for
// nothing but its read.
func (d metaIO) l2Fetch(co *aio.Co, parent *block.Request, off int64) (l2Private, error) {
	for tries := 0; tries < 8; tries++ {
		d.mu.Lock()
		c := d.l2
		if _, ok := c.set.Resident(c.key(off)); ok {
			d.mu.Unlock()
			return l2Private{}, nil
		}
		if b := c.sharedGet(off); b != nil {
			p, err := d.l2KeepLocked(off, b)
			d.mu.Unlock()
			return p, err
		}
		sn := c.snap(off)
		d.mu.Unlock()
		d.event(block.DbgL2Load)
		buf := make([]byte, d.mu.geo.ClusterSize())
		if err := d.fileRead(co, parent, buf, off); err != nil {
			return l2Private{}, err
		}
		d.mu.Lock()
		if d.l2.snap(off) != sn {
			d.mu.Unlock()
			continue // changed or freed meanwhile: the bytes may be stale
		}
		d.l2.fileLoads++
		p, err := d.l2KeepLocked(off, buf)
		d.mu.Unlock()
		return p, err
	}
	return l2Private{}, &format.FormatError{Field: "l2_cache", Reason: "L2 table changed repeatedly while loading", Err: format.ErrLimit}
}

// l2KeepLocked inserts src as the table at off, or returns it as a private
// copy when tier 1 is full. REQUIRES: mu held; src immutable.
func (d metaIO) l2KeepLocked(off int64, src []byte) (l2Private, error) {
	c := d.l2
	t, err := c.set.Insert(c.key(off), src)
	switch err {
	case nil:
		t.Unpin()
		return l2Private{}, nil
	case cache.ErrFull:
		c.privateLoads++
		return l2Private{off: off, buf: src, snap: c.snap(off)}, nil
	}
	return l2Private{}, err
}

// l2Acquire returns the L2 table at off pinned (release with l2Unpin),
// bringing it into tier 1 from tier 2 or the file. With every slot dirty
// it flushes once and tries again.
// REQUIRES: metaLock held (no table changes meanwhile).
func (d metaIO) l2Acquire(co *aio.Co, parent *block.Request, off int64) (*l2Table, error) {
	flushed := false
	for tries := 0; tries < 8; tries++ {
		d.mu.Lock()
		c := d.l2
		if t, ok := c.set.Lookup(c.key(off)); ok {
			d.mu.Unlock()
			return &c.tabs[t.Slot()], nil
		}
		var src []byte
		if b := c.sharedGet(off); b != nil {
			src = b
		} else {
			sn := c.snap(off)
			d.mu.Unlock()
			d.event(block.DbgL2Load)
			buf := make([]byte, d.mu.geo.ClusterSize())
			if err := d.fileRead(co, parent, buf, off); err != nil {
				return nil, err
			}
			d.mu.Lock()
			if c.snap(off) != sn {
				d.mu.Unlock()
				continue
			}
			c.fileLoads++
			src = buf
		}
		t, err := c.insert(off, src)
		full := err != nil && c.dirtyCount() > 0 && !flushed
		d.mu.Unlock()
		if full {
			flushed = true
			if err := d.flushMetadata(co, parent); err != nil {
				return nil, err
			}
			continue
		}
		return t, err
	}
	return nil, &format.FormatError{Field: "l2_cache", Reason: "L2 table changed repeatedly while loading", Err: format.ErrLimit}
}

// l2Create puts a new table at off (a cluster just allocated for it) with
// the bytes of src (zeros when nil), dirty and pinned. With every slot
// dirty it flushes once and tries again. REQUIRES: metaLock held; no pin
// held by the caller that it expects to be let go.
func (d metaIO) l2Create(co *aio.Co, parent *block.Request, off int64, src []byte) (*l2Table, error) {
	for flushed := false; ; flushed = true {
		d.mu.Lock()
		t, err := d.l2.create(off, src)
		retry := err != nil && !flushed && d.l2.dirtyCount() > 0
		d.mu.Unlock()
		if !retry {
			return t, err
		}
		if err := d.flushMetadata(co, parent); err != nil {
			return nil, err
		}
	}
}

// l2Release unpins t and wakes coroutines waiting for room.
func (d metaIO) l2Release(t *l2Table) {
	d.mu.Lock()
	w := d.l2.unpin(t)
	d.mu.Unlock()
	for _, co := range w {
		co.Wake()
	}
}

// roomWait makes sure tier 1 has a table to give before a writer decides
// anything (admit calls it): l2ForWrite needs one slot at a time, and only
// writers under metaLock take pins or dirty tables, so one free or clean
// unpinned slot now is one when l2ForWrite needs it. With every slot dirty
// or pinned it flushes; if pins alone fill the set (allocating writes
// running without metaLock hold them), it registers for the next unpin and
// returns the wait, which the caller runs with metaLock released before it
// looks at its own conditions again. nil: there is room. REQUIRES:
// metaLock held; it never releases it.
func (d metaIO) roomWait(co *aio.Co) func(*aio.Co) {
	d.mu.Lock()
	avail := d.l2.set.Available()
	dirty := d.l2.dirtyCount()
	d.mu.Unlock()
	if avail > 0 {
		return nil
	}
	if dirty > 0 {
		// An error leaves the set full; l2ForWrite reports it.
		if d.flushMetadata(co, nil) != nil {
			return nil
		}
		d.mu.Lock()
		avail = d.l2.set.Available()
		d.mu.Unlock()
		if avail > 0 {
			return nil
		}
	}
	d.mu.Lock()
	d.l2.roomWaits++
	seen := d.l2.unpins
	d.l2.waiters = append(d.l2.waiters, co)
	d.mu.Unlock()
	return func(co *aio.Co) {
		for {
			d.mu.Lock()
			moved := d.l2.unpins != seen
			d.mu.Unlock()
			if moved {
				return
			}
			co.Yield()
		}
	}
}

// flushL2 is stage C of flushMetadata: every dirty L2 table written, then
// an fsync, after which they are clean. The set pins them meanwhile.
// REQUIRES: metaLock held (no table changes during the flush).
func (d metaIO) flushL2(co *aio.Co, parent *block.Request) error {
	err := d.l2.set.Flush(func(t *cache.Table) error {
		d.l2WriteEvents(t.Key().Off) // close_report.go
		return d.writeMeta(co, parent, t.Data(), t.Key().Off)
	}, func() error {
		return d.fileSync(co, parent)
	})
	d.mu.Lock()
	d.l2.dirty = d.l2.dirtyCount()
	if err == nil {
		d.mu.newL2 = d.mu.newL2[:0]
	}
	d.mu.Unlock()
	return err
}

// refBlock is a loaded refcount block. Refcount blocks are few (one
// covers cluster_size*8/refcount_bits clusters), so all loaded ones stay
// in Driver.rb; dirty ones are written back in stage A of flushMetadata.
type refBlock struct {
	buf   []byte
	dirty bool
	fresh bool // created here, never written yet (refblock_alloc_write)
}

// l2CacheLimit is the most one image's L2 cache may take: half the
// machine's memory (1 GiB where the kernel will not say).
func l2CacheLimit() int64 {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil || si.Totalram == 0 {
		return 1 << 30
	}
	return int64(si.Totalram) * int64(si.Unit) / 2
}
