package qcow2

import (
	"sync/atomic"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/cache"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// l2BenchImage opens a 16-table image (4 KiB clusters, one data cluster at
// the start of each table's range) with the given tier-1 size and a
// private 64 MiB shared cache, and reads every table once.
func l2BenchImage(b *testing.B, tier1Bytes int64) (e *testEnv, n *block.Node, d *Driver, cov int64) {
	e = newTestEnv(b)
	path, cov := l2SpreadImage(b, e, 16)
	n, d = l2OpenWith(b, e, path, DriverOptions{L2CacheBytes: tier1Bytes, SharedCache: cache.NewLRU(64 << 20)})
	for i := range 16 {
		l2MustWrite(b, n, l2Pattern(byte(i), 4096), int64(i)*cov)
	}
	if err := n.Flush(); err != nil {
		b.Fatal(err)
	}
	for i := range 16 {
		l2MustRead(b, n, l2Pattern(byte(i), 4096), int64(i)*cov)
	}
	return e, n, d, cov
}

// l2BenchOffsets returns the guest offsets of the data clusters whose L2
// table is (inTier1) or is not (!inTier1) resident in tier 1.
func l2BenchOffsets(b *testing.B, d *Driver, cov int64, inTier1 bool) []int64 {
	var offs []int64
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range int64(16) {
		t := int64(d.mu.l1[i*cov/d.mu.geo.L1Coverage()] & format.OffsetMask)
		if _, ok := d.l2.set.Resident(d.l2.key(t)); ok == inTier1 {
			offs = append(offs, i*cov)
		}
	}
	if len(offs) == 0 {
		b.Fatalf("no table with tier-1 residency %t", inTier1)
	}
	return offs
}

// benchMapping maps a 4 KiB read at each of offs in turn, as the read fast
// path does (under mu, through an l2Mapper), and reports the tier-2 hits
// per mapping.
func benchMapping(b *testing.B, d *Driver, offs []int64) {
	m := newL2Mapper(d)
	ext := make([]format.Extent, 0, 16)
	var err error
	st0 := d.CacheStats()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		d.mu.Lock()
		m.reset(true)
		ext, err = format.Map(ext[:0], &d.mu.geo, d.mu.l1, m.fn, offs[i], 4096)
		d.mu.Unlock()
		if err != nil || len(ext) != 1 || ext[0].Kind != format.ExtentData {
			b.Fatalf("mapping at %#x: %v %+v", offs[i], err, ext)
		}
		if i++; i == len(offs) {
			i = 0
		}
	}
	st := d.CacheStats()
	b.ReportMetric(float64(st.SharedHits-st0.SharedHits)/float64(b.N), "tier2-hits/op")
	b.ReportMetric(float64(st.FileLoads-st0.FileLoads)/float64(b.N), "file-loads/op")
}

// BenchmarkQcow2CachedReadMapping: the mapping of a cached 4 KiB read, its
// L2 table in the image's own set (tier 1). No metadata I/O, no allocation.
func BenchmarkQcow2CachedReadMapping(b *testing.B) {
	_, _, d, cov := l2BenchImage(b, 0)
	benchMapping(b, d, l2BenchOffsets(b, d, cov, true))
}

// BenchmarkQcow2SharedReadMapping: the same mapping with a 4-table tier 1
// and the 12 tables that do not fit in it: every mapping is a tier-1 miss
// and a generation-checked hit in the shared cache (tier 2).
func BenchmarkQcow2SharedReadMapping(b *testing.B) {
	_, _, d, cov := l2BenchImage(b, 4*4096)
	benchMapping(b, d, l2BenchOffsets(b, d, cov, false))
}

// benchRead submits 4 KiB reads at offs in turn through the node, on the
// main Context, and waits for each: the whole cached read, data I/O
// included.
func benchRead(b *testing.B, e *testEnv, n *block.Node, d *Driver, offs []int64) {
	buf := make([]byte, 4096)
	st0 := d.CacheStats()
	var err error
	e.main.Run(func() {
		pool := e.g.Pool(e.main)
		fd := &flagDone{}
		cond := func() bool { return !fd.done }
		i := 0
		b.ReportAllocs()
		for b.Loop() {
			fd.done = false
			r := pool.Get()
			r.Op, r.Off = block.OpRead, offs[i]
			r.SetBuf(buf)
			n.Submit(r, fd)
			e.main.WaitWhile(cond)
			if fd.err != nil && err == nil {
				err = fd.err
			}
			if i++; i == len(offs) {
				i = 0
			}
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	st := d.CacheStats()
	b.ReportMetric(float64(st.SharedHits-st0.SharedHits)/float64(b.N), "tier2-hits/op")
	b.ReportMetric(float64(st.FileLoads-st0.FileLoads)/float64(b.N), "file-loads/op")
}

// BenchmarkQcow2CachedRead4K: a whole 4 KiB read request with its L2 table
// in tier 1.
func BenchmarkQcow2CachedRead4K(b *testing.B) {
	e, n, d, cov := l2BenchImage(b, 0)
	benchRead(b, e, n, d, l2BenchOffsets(b, d, cov, true))
}

// BenchmarkQcow2SharedRead4K: a whole 4 KiB read request whose L2 table is
// only in the shared cache.
func BenchmarkQcow2SharedRead4K(b *testing.B) {
	e, n, d, cov := l2BenchImage(b, 4*4096)
	benchRead(b, e, n, d, l2BenchOffsets(b, d, cov, false))
}

// BenchmarkQcow2MapNoCache is the floor under the two mapping benchmarks:
// the same mapping under mu with an L2Func that returns the table without
// any cache (a copy taken beforehand), so the difference is the cost of the
// cache lookups.
func BenchmarkQcow2MapNoCache(b *testing.B) {
	_, _, d, cov := l2BenchImage(b, 0)
	offs := l2BenchOffsets(b, d, cov, true)
	d.mu.Lock()
	tables := map[int64][]byte{}
	for _, off := range offs {
		l2Off := int64(d.mu.l1[off/d.mu.geo.L1Coverage()] & format.OffsetMask)
		tables[l2Off] = append([]byte(nil), d.l2.lookup(l2Off)...)
	}
	d.mu.Unlock()
	var fn format.L2Func = func(off int64) ([]byte, error) { return tables[off], nil }
	ext := make([]format.Extent, 0, 16)
	var err error
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		d.mu.Lock()
		ext, err = format.Map(ext[:0], &d.mu.geo, d.mu.l1, fn, offs[i], 4096)
		d.mu.Unlock()
		if err != nil || len(ext) != 1 || ext[0].Kind != format.ExtentData {
			b.Fatalf("mapping at %#x: %v %+v", offs[i], err, ext)
		}
		if i++; i == len(offs) {
			i = 0
		}
	}
}

// BenchmarkQcow2CachedReadMapData: the locked read path's one-cluster
// mapping (mapData: the set's index, one L2 entry) of a cached 4 KiB read,
// under mu; compare BenchmarkQcow2CachedReadMapping, the general Map, and
// BenchmarkQcow2CachedReadOneData, the lock-free mapping.
func BenchmarkQcow2CachedReadMapData(b *testing.B) {
	_, _, d, cov := l2BenchImage(b, 0)
	offs := l2BenchOffsets(b, d, cov, true)
	m := newL2Mapper(d)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		d.mu.Lock()
		m.reset(true)
		_, how := readerOf(d).mapData(m, offs[i], 4096)
		d.mu.Unlock()
		if how != mapHit {
			b.Fatalf("mapping at %#x: verdict %d, want a hit", offs[i], how)
		}
		if i++; i == len(offs) {
			i = 0
		}
	}
}

// BenchmarkQcow2CachedReadOneData: the lock-free one-cluster mapping of the
// read fast path (oneData: the set's View, one atomic L2 entry load, the
// table's sequence checked) of a cached 4 KiB read, with the epoch hold.
func BenchmarkQcow2CachedReadOneData(b *testing.B) {
	_, _, d, cov := l2BenchImage(b, 0)
	offs := l2BenchOffsets(b, d, cov, true)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		ep := d.hold(nil)
		v := d.view.Load()
		_, _, ok := readerOf(d).oneData(v, d.fileEnd.Load(), offs[i], 4096)
		d.unhold(ep)
		if !ok {
			b.Fatalf("mapping at %#x missed", offs[i])
		}
		if i++; i == len(offs) {
			i = 0
		}
	}
}

// BenchmarkQcow2CachedMappingParallel: the mapping of cached 4 KiB reads
// from GOMAXPROCS goroutines at once, the lock-free way (epoch hold,
// oneData, unhold: what readFast does) and the locked way (Driver.mu
// around mapData: what every cached read did before, and what readLocked
// still does). ns/op is wall time per mapping over all goroutines: with
// two CPUs a mapping that scales halves it, one serialised on a mutex
// does not.
func BenchmarkQcow2CachedMappingParallel(b *testing.B) {
	_, _, d, cov := l2BenchImage(b, 0)
	offs := l2BenchOffsets(b, d, cov, true)
	var stripe atomic.Int32
	b.Run("lockfree", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			// One stripe per goroutine, as one per Context.
			s := int(stripe.Add(1)) % epochStripes
			i := 0
			for pb.Next() {
				ep := d.holdIn(s)
				v := d.view.Load()
				_, _, ok := readerOf(d).oneData(v, d.fileEnd.Load(), offs[i], 4096)
				d.unhold(ep)
				if !ok {
					b.Errorf("mapping at %#x missed", offs[i])
					return
				}
				if i++; i == len(offs) {
					i = 0
				}
			}
		})
	})
	b.Run("locked", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			m := newL2Mapper(d)
			i := 0
			for pb.Next() {
				d.mu.Lock()
				m.reset(true)
				_, how := readerOf(d).mapData(m, offs[i], 4096)
				ep := d.hold(nil)
				d.mu.Unlock()
				d.unhold(ep)
				if how != mapHit {
					b.Errorf("mapping at %#x: verdict %d", offs[i], how)
					return
				}
				if i++; i == len(offs) {
					i = 0
				}
			}
		})
	})
}
