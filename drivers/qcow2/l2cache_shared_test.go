package qcow2

import (
	"bytes"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/cache"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
)

// l2StickyClean is a shared cache that keeps the first copy offered for each
// table and refuses every later one: the worst a cache that may drop Sets
// (ristretto) can do, since the copy it keeps goes stale.
type l2StickyClean struct {
	*cache.LRU
	mu   sync.Mutex
	seen map[cache.Key]bool
}

func newL2StickyClean(maxBytes int64) *l2StickyClean {
	return &l2StickyClean{LRU: cache.NewLRU(maxBytes), seen: map[cache.Key]bool{}}
}

func (s *l2StickyClean) Offer(k cache.Key, gen uint64, data []byte) {
	s.mu.Lock()
	if s.seen[k] {
		s.mu.Unlock()
		return
	}
	s.seen[k] = true
	s.mu.Unlock()
	s.LRU.Offer(k, gen, data)
}

func (s *l2StickyClean) offered(k cache.Key) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[k]
}

// l2OpenWith opens path as a read-write qcow2 node with opts.
func l2OpenWith(t testing.TB, e *testEnv, path string, opts DriverOptions) (*block.Node, *Driver) {
	t.Helper()
	file, err := raw.NewNode(e.g, path, raw.Options{Locking: raw.LockingOff}, block.Options{})
	if err != nil {
		t.Fatal(err)
	}
	n, err := NewNode(e.g, file, opts, block.Options{})
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() { n.Unref() })
	return n, n.Driver().(*Driver)
}

// l2SpreadImage creates an image of 4 KiB clusters whose L2 tables each
// cover 2 MiB, big enough for tables L2 tables.
func l2SpreadImage(t testing.TB, e *testEnv, tables int) (path string, cov int64) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "x.qcow2")
	cov = 4096 * 512
	if err := e.create(path, int64(tables)*cov, format.CreateOptions{ClusterSize: 4096}); err != nil {
		t.Fatal(err)
	}
	return path, cov
}

func l2Pattern(tag byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = tag ^ byte(i*7)
	}
	return b
}

func l2MustWrite(t testing.TB, n *block.Node, b []byte, off int64) {
	t.Helper()
	if _, err := n.WriteAt(b, off); err != nil {
		t.Fatalf("write at %#x: %v", off, err)
	}
}

func l2MustRead(t testing.TB, n *block.Node, want []byte, off int64) {
	t.Helper()
	got := make([]byte, len(want))
	if _, err := n.ReadAt(got, off); err != nil {
		t.Fatalf("read at %#x: %v", off, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read at %#x: content differs at byte %d", off, firstDiff(got, want))
	}
}

// TestQcow2L2TiersBoundedAndShared: with a 4-table tier 1, writing and
// reading 16 tables keeps at most 4 resident, moves the others to the
// shared cache, and serves re-reads from there without reading the tables
// from the file again.
func TestQcow2L2TiersBoundedAndShared(t *testing.T) {
	e := newTestEnv(t)
	const tables = 16
	path, cov := l2SpreadImage(t, e, tables)
	shared := cache.NewLRU(16 << 20)
	n, d := l2OpenWith(t, e, path, DriverOptions{L2CacheBytes: 4 * 4096, SharedCache: shared})
	for i := range tables {
		l2MustWrite(t, n, l2Pattern(byte(i), 4096), int64(i)*cov)
	}
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	before := d.CacheStats()
	if before.L2.Resident > 4 || before.L2.Evictions < tables-4 || before.SharedOffers < tables-4 {
		t.Fatalf("after writing %d tables: %+v, want at most 4 resident and %d evictions offered", tables, before, tables-4)
	}
	for i := range tables {
		l2MustRead(t, n, l2Pattern(byte(i), 4096), int64(i)*cov)
	}
	st := d.CacheStats()
	if st.FileLoads != before.FileLoads {
		t.Errorf("re-reading loaded %d L2 tables from the file, want 0", st.FileLoads-before.FileLoads)
	}
	if got := st.SharedHits - before.SharedHits; got < tables-4 {
		t.Errorf("%d shared-cache hits re-reading %d tables with 4 in tier 1, want at least %d", got, tables, tables-4)
	}
	if st.Shared.Hits < st.SharedHits {
		t.Errorf("shared cache counts %d hits, fewer than this image's %d", st.Shared.Hits, st.SharedHits)
	}
	// A cached read of a tier-1 table: one hit, no miss.
	last := int64(tables-1) * cov
	h0 := d.CacheStats()
	for range 10 {
		l2MustRead(t, n, l2Pattern(byte(tables-1), 4096), last)
	}
	h1 := d.CacheStats()
	if h1.L2.Hits-h0.L2.Hits != 10 || h1.L2.Misses != h0.L2.Misses {
		t.Errorf("10 cached reads: %d tier-1 hits, %d misses; want 10 and 0", h1.L2.Hits-h0.L2.Hits, h1.L2.Misses-h0.L2.Misses)
	}
}

// TestQcow2L2SharedCopyNeverStale: a table that went to the shared cache
// is changed (through tier 1), written back and evicted again, and the
// shared cache refuses the new copy, keeping the old one. A re-read must
// see the change: the old copy's generation no longer matches.
func TestQcow2L2SharedCopyNeverStale(t *testing.T) {
	e := newTestEnv(t)
	const tables = 8
	path, cov := l2SpreadImage(t, e, tables)
	shared := newL2StickyClean(16 << 20)
	n, d := l2OpenWith(t, e, path, DriverOptions{L2CacheBytes: 4 * 4096, SharedCache: shared})
	for i := range tables {
		l2MustWrite(t, n, l2Pattern(byte(i), 4096), int64(i)*cov)
	}
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	t0 := int64(d.mu.l1[0] & format.OffsetMask)
	_, inTier1 := d.l2.set.Resident(d.l2.key(t0))
	d.mu.Unlock()
	if inTier1 || !shared.offered(d.l2.key(t0)) {
		t.Fatalf("table 0 (%#x): in tier 1 %t, offered %t; want only in the shared cache", t0, inTier1, shared.offered(d.l2.key(t0)))
	}
	d.mu.Lock()
	oldGen := d.l2.gens[t0]
	d.mu.Unlock()
	// Change table 0: allocate a cluster it did not map.
	fresh := l2Pattern(0xee, 4096)
	l2MustWrite(t, n, fresh, 8*4096)
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	// Push it out of tier 1: in-place writes bring 4 other tables in.
	for i := 1; i <= 4; i++ {
		l2MustWrite(t, n, l2Pattern(byte(i), 4096), int64(i)*cov)
	}
	d.mu.Lock()
	_, inTier1 = d.l2.set.Resident(d.l2.key(t0))
	d.mu.Unlock()
	if inTier1 || !shared.LRU.Contains(d.l2.key(t0), oldGen) {
		t.Fatalf("table 0 in tier 1 %t, old copy in the shared cache %t: the test did not set up a stale copy",
			inTier1, shared.LRU.Contains(d.l2.key(t0), oldGen))
	}
	stale0 := d.CacheStats().Shared.Stale
	l2MustRead(t, n, fresh, 8*4096)
	l2MustRead(t, n, l2Pattern(0, 4096), 0)
	if st := d.CacheStats(); st.Shared.Stale == stale0 {
		t.Errorf("the read did not meet the stale copy (Stale %d): %+v", st.Shared.Stale, st)
	}
}

// l2BareDriver returns a driver with only its L2 cache set up (no file):
// for tests of the cache layer's generation rules.
func l2BareDriver(t *testing.T, shared cache.Clean) *Driver {
	t.Helper()
	d := &Driver{opts: DriverOptions{L2CacheBytes: 4 * 512, SharedCache: shared}}
	d.mu.geo = format.Geometry{ClusterBits: 9, Size: 1 << 20}
	d.mu.l1 = make([]uint64, 64)
	if err := d.initL2(); err != nil {
		t.Fatal(err)
	}
	if d.l2.capacity != 4 {
		t.Fatalf("tier 1 holds %d tables, want 4", d.l2.capacity)
	}
	return d
}

// churn brings 4 other tables into tier 1, evicting whatever was there.
func l2Churn(t *testing.T, c *l2Cache, base int64) {
	t.Helper()
	for i := range int64(4) {
		tb, err := c.insert(base+i*512, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.unpin(tb)
	}
}

func l2FlushNoIO(t *testing.T, c *l2Cache) {
	t.Helper()
	if err := c.set.Flush(func(*cache.Table) error { return nil }, func() error { return nil }); err != nil {
		t.Fatal(err)
	}
}

// TestQcow2L2GenerationFreeReuseAndChange: the shared copy of a table is
// never returned after the table is freed, after its cluster is reused for
// a different table, or after a change, whether or not the shared cache
// takes the newer copy.
func TestQcow2L2GenerationFreeReuseAndChange(t *testing.T) {
	const x = 100 * 512
	oldT, newT, changed := l2TableOf(0xa1), l2TableOf(0xb2), l2TableOf(0xc3)
	for _, tc := range []struct {
		name   string
		shared func() cache.Clean
		sticky bool
	}{
		{"lru", func() cache.Clean { return cache.NewLRU(1 << 20) }, false},
		{"sticky", func() cache.Clean { return newL2StickyClean(1 << 20) }, true},
		{"tinylfu", func() cache.Clean {
			c, err := cache.NewClean(cache.CleanConfig{MaxBytes: 1 << 20, TableSize: 512, Policy: cache.PolicyTinyLFU})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			return c
		}, true}, // may drop: only "never stale" is asserted
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := l2BareDriver(t, tc.shared())
			c := d.l2
			d.mu.Lock()
			defer d.mu.Unlock()
			tb, err := c.insert(x, oldT)
			if err != nil {
				t.Fatal(err)
			}
			c.unpin(tb)
			l2Churn(t, c, 1<<20)
			if b := c.lookup(x); !tc.sticky && !bytes.Equal(b, oldT) {
				t.Fatalf("evicted table not served by the shared cache: %x", b[:min(len(b), 4)])
			}
			// Freed: the old copy must not come back.
			c.drop(x)
			if b := c.lookup(x); b != nil {
				t.Fatalf("freed table still served (%#x)", b[0])
			}
			// Reused for another table, written back, evicted.
			tb, err = c.create(x, newT)
			if err != nil {
				t.Fatal(err)
			}
			c.unpin(tb)
			l2FlushNoIO(t, c)
			l2Churn(t, c, 2<<20)
			b := c.lookup(x)
			if b != nil && !bytes.Equal(b, newT) {
				t.Fatalf("reused cluster served %#x, want the new table or a miss", b[0])
			}
			if !tc.sticky && b == nil {
				t.Fatal("the new table was not served by the shared cache")
			}
			// Changed through tier 1 after coming from the shared cache.
			if b == nil {
				b = newT
			}
			tb, err = c.insert(x, b)
			if err != nil {
				t.Fatal(err)
			}
			copy(tb.buf, changed)
			c.markDirty(tb)
			c.unpin(tb)
			l2FlushNoIO(t, c)
			l2Churn(t, c, 3<<20)
			b = c.lookup(x)
			if b != nil && !bytes.Equal(b, changed) {
				t.Fatalf("changed table served as %#x, want the change or a miss", b[0])
			}
			if !tc.sticky && b == nil {
				t.Fatal("the changed table was not served by the shared cache")
			}
		})
	}
}

func l2TableOf(v byte) []byte { return bytes.Repeat([]byte{v}, 512) }

// TestQcow2L2SharedBetweenImages: two images with the same table offsets
// and different contents share one small-tier-1 setup and one shared
// cache; neither ever reads the other's tables.
func TestQcow2L2SharedBetweenImages(t *testing.T) {
	e := newTestEnv(t)
	const tables = 8
	shared := cache.NewLRU(16 << 20)
	var nodes [2]*block.Node
	var drvs [2]*Driver
	var cov int64
	for k := range nodes {
		var path string
		path, cov = l2SpreadImage(t, e, tables)
		nodes[k], drvs[k] = l2OpenWith(t, e, path, DriverOptions{L2CacheBytes: 4 * 4096, SharedCache: shared})
		// Image 1 maps guest cluster 1 of each table, image 0 cluster 0:
		// the same L2 table offsets map different guest clusters.
		for i := range tables {
			l2MustWrite(t, nodes[k], l2Pattern(byte(16*k+i), 4096), int64(i)*cov+int64(k)*4096)
		}
		if err := nodes[k].Flush(); err != nil {
			t.Fatal(err)
		}
	}
	for round := range 3 {
		for i := range tables {
			for k := range nodes {
				l2MustRead(t, nodes[k], l2Pattern(byte(16*k+i), 4096), int64(i)*cov+int64(k)*4096)
				other := 1 - k
				l2MustRead(t, nodes[k], make([]byte, 4096), int64(i)*cov+int64(other)*4096)
			}
		}
		_ = round
	}
	for k, d := range drvs {
		if st := d.CacheStats(); st.SharedHits == 0 {
			t.Errorf("image %d never hit the shared cache: %+v", k, st)
		}
	}
}

// TestQcow2SharedCacheFromCaller: the clean tier is the one the caller
// passes in DriverOptions.SharedCache; without one, each image gets a
// private cache (no process-wide cache shared behind the caller's back).
func TestQcow2SharedCacheFromCaller(t *testing.T) {
	e := newTestEnv(t)
	path, _ := l2SpreadImage(t, e, 2)
	shared := cache.NewLRU(1 << 20)
	_, a := l2OpenWith(t, e, path, DriverOptions{SharedCache: shared})
	if a.l2.shared != cache.Clean(shared) {
		t.Error("the image does not use the cache its opener passed")
	}
	p1, p2 := e.mustOpen(path, true), e.mustOpen(path, true)
	defer p1.Unref()
	defer p2.Unref()
	c1, c2 := drv(t, p1).l2.shared, drv(t, p2).l2.shared
	if c1 == nil || c1 == c2 || c1 == cache.Clean(shared) {
		t.Error("images opened without a SharedCache share one")
	}
}

// TestQcow2L2TinyCacheConcurrentWrites: with a 4-table tier 1, partial
// (COW) writes to 16 tables all in flight at once pin more tables than fit;
// writers wait for a slot instead of growing the set, and the image ends
// up right.
func TestQcow2L2TinyCacheConcurrentWrites(t *testing.T) {
	needQemu(t)
	e := newTestEnv(t)
	const tables = 16
	path, cov := l2SpreadImage(t, e, tables)
	size := int64(tables) * cov
	n, d := l2OpenWith(t, e, path, DriverOptions{L2CacheBytes: 4 * 4096, SharedCache: cache.NewLRU(1 << 20)})
	ref := make([]byte, size)
	var offs []int64
	var bufs [][]byte
	for i := range int64(tables) {
		for j := range int64(4) {
			off := i*cov + j*4096*3 + 1024 // partial clusters: COW
			b := l2Pattern(byte(i*4+j), 1024)
			offs = append(offs, off)
			bufs = append(bufs, b)
			copy(ref[off:], b)
		}
	}
	cd := &countDone{}
	rbuf := make([]byte, 4096)
	e.main.Run(func() {
		pool := e.g.Pool(e.main)
		for i, off := range offs {
			r := pool.Get()
			r.Op, r.Off = block.OpWrite, off
			r.SetBuf(bufs[i])
			n.Submit(r, cd)
			if i%5 == 0 {
				r := pool.Get()
				r.Op, r.Off = block.OpRead, off&^4095
				r.SetBuf(rbuf)
				n.Submit(r, cd)
			}
		}
		want := len(offs) + (len(offs)+4)/5
		e.main.WaitWhile(func() bool { return cd.n < want })
	})
	if len(cd.errs) > 0 {
		t.Fatal(cd.errs[0])
	}
	st := d.CacheStats()
	if st.L2.Resident > 4 || st.RoomWaits == 0 {
		t.Errorf("stats %+v: want at most 4 resident tables and writers that waited for room", st)
	}
	for i, off := range offs {
		l2MustRead(t, n, bufs[i], off)
	}
	checkSame(t, readAll(t, n, 1<<20), ref)
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, path)
	qemuCompare(t, path, ref)
}

// TestQcow2L2CountersColdAndWarm: a cold read of a table on disk counts one
// tier-1 miss, one fill and one file load; warm reads count hits only.
func TestQcow2L2CountersColdAndWarm(t *testing.T) {
	e := newTestEnv(t)
	path, cov := l2SpreadImage(t, e, 2)
	w, _ := l2OpenWith(t, e, path, DriverOptions{})
	l2MustWrite(t, w, l2Pattern(1, 4096), cov)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	n := e.mustOpen(path, true)
	defer n.Unref()
	d := drv(t, n)
	s0 := d.CacheStats()
	l2MustRead(t, n, l2Pattern(1, 4096), cov)
	s1 := d.CacheStats()
	if s1.L2.Misses-s0.L2.Misses != 1 || s1.L2.Fills-s0.L2.Fills != 1 || s1.FileLoads-s0.FileLoads != 1 || s1.L2.Hits != s0.L2.Hits {
		t.Fatalf("cold read: %d misses, %d fills, %d file loads, %d hits; want 1, 1, 1, 0",
			s1.L2.Misses-s0.L2.Misses, s1.L2.Fills-s0.L2.Fills, s1.FileLoads-s0.FileLoads, s1.L2.Hits-s0.L2.Hits)
	}
	for range 5 {
		l2MustRead(t, n, l2Pattern(1, 4096), cov)
	}
	s2 := d.CacheStats()
	if s2.L2.Hits-s1.L2.Hits != 5 || s2.L2.Misses != s1.L2.Misses || s2.FileLoads != s1.FileLoads {
		t.Fatalf("5 warm reads: %d hits, %d misses, %d file loads; want 5, 0, 0",
			s2.L2.Hits-s1.L2.Hits, s2.L2.Misses-s1.L2.Misses, s2.FileLoads-s1.FileLoads)
	}
}

// TestL2HintHitsKeepRecency: reads that hit through the hint index (no set
// lookup) still count as uses for eviction. With a 4-table tier 1 holding
// tables 0-3, rereading table 0 and then bringing in table 4 must evict
// table 1, the least recently used, not table 0; and every read returns
// its own data, before and after the eviction.
func TestL2HintHitsKeepRecency(t *testing.T) {
	e := newTestEnv(t)
	path, cov := l2SpreadImage(t, e, 5)
	// A shared cache too small for any table: every table read comes
	// from the file into tier 1, so residency there is all there is.
	n, d := l2OpenWith(t, e, path, DriverOptions{L2CacheBytes: 4 * 4096, SharedCache: cache.NewLRU(1)})
	for i := range 5 {
		l2MustWrite(t, n, l2Pattern(byte(i), 4096), int64(i)*cov)
	}
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	tableOff := func(i int) int64 {
		d.mu.Lock()
		defer d.mu.Unlock()
		return int64(d.mu.l1[int64(i)*cov/d.mu.geo.L1Coverage()] & format.OffsetMask)
	}
	resident := func(i int) bool {
		off := tableOff(i)
		d.mu.Lock()
		defer d.mu.Unlock()
		_, ok := d.l2.set.Resident(d.l2.key(off))
		return ok
	}
	for i := range 4 {
		l2MustRead(t, n, l2Pattern(byte(i), 4096), int64(i)*cov)
	}
	// Table 4 went in last while writing; make 0..3 the residents, in
	// order, then use table 0 again through the hints.
	for i := range 4 {
		if !resident(i) {
			t.Fatalf("table %d not resident after its read", i)
		}
	}
	st0 := d.CacheStats()
	for range 10 {
		l2MustRead(t, n, l2Pattern(0, 4096), 0)
	}
	if st := d.CacheStats(); st.L2.Hits-st0.L2.Hits < 10 {
		t.Fatalf("10 rereads of a resident table counted %d hits", st.L2.Hits-st0.L2.Hits)
	}
	l2MustRead(t, n, l2Pattern(4, 4096), 4*cov)
	if !resident(0) {
		t.Errorf("table 0, used most recently through hints, was evicted")
	}
	if resident(1) {
		t.Errorf("table 1, the least recently used, is still resident")
	}
	for i := range 5 {
		l2MustRead(t, n, l2Pattern(byte(i), 4096), int64(i)*cov)
	}
}
