package format_test

import (
	"encoding/binary"
	"errors"
	"math/rand"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// memImage is a synthetic image for mapping tests: an L1 table and L2
// tables held in memory.
type memImage struct {
	g   format.Geometry
	l1  []uint64
	l2s map[int64][]byte
}

func (m *memImage) l2(off int64) ([]byte, error) {
	t, ok := m.l2s[off]
	if !ok {
		return nil, errors.New("no such L2 table")
	}
	return t, nil
}

// modelAt classifies one guest byte with nothing but the spec's formulas
// and bit masks, independently of the package's decoders: class and host
// offset (-1 when none).
func (m *memImage) modelAt(off int64) (string, int64) {
	cs := int64(1) << m.g.ClusterBits
	esz := int64(8)
	if m.g.ExtendedL2 {
		esz = 16
	}
	n := cs / esz
	l1i, l2i, in := (off/cs)/n, (off/cs)%n, off%cs
	l2Off := int64(m.l1[l1i] & 0x00fffffffffffe00)
	if l2Off == 0 {
		return "unallocated", -1
	}
	t := m.l2s[l2Off]
	e := binary.BigEndian.Uint64(t[l2i*esz:])
	host := int64(e & 0x00fffffffffffe00)
	if e>>62&1 == 1 {
		return "compressed", -1
	}
	if !m.g.ExtendedL2 {
		switch {
		case e&1 == 1 && host != 0:
			return "zero", host + in
		case e&1 == 1:
			return "zero", -1
		case host == 0:
			return "unallocated", -1
		}
		return "data", host + in
	}
	bm := binary.BigEndian.Uint64(t[l2i*esz+8:])
	sc := in / (cs / 32)
	switch {
	case bm>>sc&1 == 1:
		return "data", host + in
	case bm>>(32+sc)&1 == 1 && host != 0:
		return "zero", host + in
	case bm>>(32+sc)&1 == 1:
		return "zero", -1
	}
	return "unallocated", -1
}

// modelRuns classifies [off, off+n) byte by byte (in steps of step, which
// must divide every boundary) and merges the result like normalizeOurs.
func (m *memImage) modelRuns(off, n, step int64) []run {
	var rs []run
	for p := off; p < off+n; {
		q := min(off+n, (p/step+1)*step)
		c, h := m.modelAt(p)
		r := run{Start: p, Length: q - p, Class: c, Off: h}
		if c == "compressed" {
			// Compressed runs never merge across clusters in Map, but the
			// normalized form merges all offset-less runs; keep the same.
			r.Off = -1
		}
		rs = appendRun(rs, r)
		p = q
	}
	return rs
}

// randomImage builds a consistent random image: every L2 entry is valid
// for g, host offsets distinct and inside a file of 1 GiB.
func randomImage(rng *rand.Rand, g format.Geometry) *memImage {
	cs := g.ClusterSize()
	m := &memImage{g: g, l2s: map[int64][]byte{}}
	m.g.FileSize = 1 << 30
	nL1 := int(format.L1EntriesFor(uint64(g.Size), g.ClusterBits, g.ExtendedL2))
	m.l1 = make([]uint64, nL1)
	next := int64(16) * cs // host allocator; clusters 0..15 are "metadata"
	alloc := func() int64 { next += cs; return next - cs }
	for i := range m.l1 {
		if rng.Intn(5) == 0 {
			continue // unallocated L2 table
		}
		off := alloc()
		m.l1[i] = uint64(off) | format.EntryCopied
		t := make([]byte, cs)
		for j := int64(0); j < g.L2Entries(); j++ {
			var e, bm uint64
			switch rng.Intn(7) {
			case 0: // unallocated
			case 1, 2: // normal; runs of contiguous hosts are likely
				e = uint64(alloc()) | format.EntryCopied
			case 3:
				if g.ZeroFlag {
					e = 1
				}
			case 4:
				if g.ZeroFlag {
					e = uint64(alloc()) | 1
				}
			case 5:
				e, _ = g.EncodeCompressed(alloc()+int64(rng.Intn(512)), 1+int64(rng.Intn(int(cs))))
			case 6:
				e = uint64(alloc())
			}
			if g.ExtendedL2 && e&format.EntryCompressed == 0 {
				a := rng.Uint32()
				z := rng.Uint32() &^ a
				if e == 0 {
					a = 0
				}
				bm = uint64(z)<<32 | uint64(a)
			}
			if g.ExtendedL2 {
				binary.BigEndian.PutUint64(t[j*16:], e)
				binary.BigEndian.PutUint64(t[j*16+8:], bm)
			} else {
				binary.BigEndian.PutUint64(t[j*8:], e)
			}
		}
		m.l2s[off] = t
	}
	return m
}

// checkExtents verifies the structural invariants of Map's output.
func checkExtents(t *testing.T, exts []format.Extent, off, n int64) {
	t.Helper()
	p := off
	for i, x := range exts {
		if x.GuestOff != p || x.Len <= 0 {
			t.Fatalf("extent %d %+v: not contiguous from %#x or empty", i, x, p)
		}
		p += x.Len
	}
	if p != off+n {
		t.Fatalf("extents end at %#x, want %#x", p, off+n)
	}
}

// TestQcow2MapMatchesModel maps random ranges of random images, crossing
// cluster, subcluster and L2-table boundaries, and compares with the
// byte-level model.
func TestQcow2MapMatchesModel(t *testing.T) {
	geoms := []format.Geometry{
		{ClusterBits: 9, RefcountOrder: 4, ZeroFlag: true, Size: 200 << 10},       // 32 KiB per L2 table
		{ClusterBits: 9, RefcountOrder: 4, ZeroFlag: false, Size: 100<<10 + 1000}, // v2, unaligned size
		{ClusterBits: 12, RefcountOrder: 4, ZeroFlag: true, Size: 6 << 20},
		{ClusterBits: 14, RefcountOrder: 4, ExtendedL2: true, Size: 40 << 20}, // 512 B subclusters
		{ClusterBits: 16, RefcountOrder: 4, ExtendedL2: true, Size: 300 << 20},
	}
	rng := rand.New(rand.NewSource(1))
	for _, g := range geoms {
		m := randomImage(rng, g)
		// Every classification boundary is a multiple of the subcluster
		// (or cluster) size, so the model can step by it.
		step := m.g.SubclusterSize()
		for iter := 0; iter < 60; iter++ {
			off := rng.Int63n(g.Size)
			if iter%2 == 0 && g.Size > g.L1Coverage() {
				// Near an L2 table boundary.
				k := 1 + rng.Int63n((g.Size-1)/g.L1Coverage())
				off = max(0, k*g.L1Coverage()-rng.Int63n(4*g.ClusterSize()))
			}
			if iter%3 == 1 {
				// On a subcluster boundary, or one byte either side of it.
				scs := m.g.SubclusterSize()
				off = min(g.Size-1, max(0, off/scs*scs+rng.Int63n(3)-1))
			}
			n := rng.Int63n(min(g.Size-off, 2*g.L1Coverage(), 8<<20)) + 1
			if iter == 0 && g.Size <= 64<<20 {
				off, n = 0, g.Size
			}
			if iter == 1 { // exactly across an L2 table boundary
				off = g.L1Coverage() - 700
				n = min(1400, g.Size-off)
			}
			exts, err := format.Map(nil, &m.g, m.l1, m.l2, off, n)
			if err != nil {
				t.Fatalf("cb=%d ext=%v Map(%#x,%#x): %v", g.ClusterBits, g.ExtendedL2, off, n, err)
			}
			checkExtents(t, exts, off, n)
			got, want := normalizeOurs(exts), m.modelRuns(off, n, step)
			if runsString(got) != runsString(want) {
				t.Fatalf("cb=%d ext=%v Map(%#x,%#x):\nours:\n%smodel:\n%s", g.ClusterBits, g.ExtendedL2, off, n, runsString(got), runsString(want))
			}
			for _, x := range exts {
				if x.Kind == format.ExtentCompressed {
					_, l2i, _ := m.g.Split(x.GuestOff)
					l1i, _, _ := m.g.Split(x.GuestOff)
					e, _, _ := m.g.L2EntryAt(m.l2s[int64(m.l1[l1i]&format.OffsetMask)], l2i)
					d, _ := m.g.DecodeCompressed(e)
					if x.Compressed != d || x.GuestOff/m.g.ClusterSize() != (x.GuestOff+x.Len-1)/m.g.ClusterSize() {
						t.Fatalf("compressed extent %+v: descriptor %+v, or spans clusters", x, d)
					}
				}
			}
		}
	}
}

// TestQcow2MapHandBuilt pins the merging rules on a small hand-built image
// with 512-byte clusters (64 L2 entries: one table maps 32 KiB).
func TestQcow2MapHandBuilt(t *testing.T) {
	g := format.Geometry{ClusterBits: 9, RefcountOrder: 4, ZeroFlag: true, Size: 96 << 10, FileSize: 1 << 20}
	t0 := make([]byte, 512)
	t1 := make([]byte, 512)
	put := func(tb []byte, i int, e uint64) { binary.BigEndian.PutUint64(tb[i*8:], e) }
	put(t0, 62, 0x10000|format.EntryCopied) // last two clusters of table 0 ...
	put(t0, 63, 0x10200|format.EntryCopied)
	put(t1, 0, 0x10400|format.EntryCopied) // ... continue contiguously into table 1
	put(t1, 1, 1)                          // zero plain
	put(t1, 2, 1)                          // zero plain (merges)
	put(t1, 3, 0x20000|1)                  // zero alloc (separate: has a host offset)
	c, _ := g.EncodeCompressed(0x30010, 300)
	put(t1, 4, c)
	put(t1, 5, c)
	m := &memImage{g: g, l1: []uint64{0x1000 | format.EntryCopied, 0x1200 | format.EntryCopied, 0}, l2s: map[int64][]byte{0x1000: t0, 0x1200: t1}}
	exts, err := format.Map(nil, &g, m.l1, m.l2, 62*512+100, 32<<10)
	if err != nil {
		t.Fatal(err)
	}
	d := format.CompressedDescriptor{HostOff: 0x30010, Sectors: 1}
	want := []format.Extent{
		{Kind: format.ExtentData, GuestOff: 62*512 + 100, Len: 3*512 - 100, HostOff: 0x10000 + 100},
		{Kind: format.ExtentZero, GuestOff: 65 * 512, Len: 1024},
		{Kind: format.ExtentZero, GuestOff: 67 * 512, Len: 512, HostOff: 0x20000},
		{Kind: format.ExtentCompressed, GuestOff: 68 * 512, Len: 512, Compressed: d},
		{Kind: format.ExtentCompressed, GuestOff: 69 * 512, Len: 512, Compressed: d},
		{Kind: format.ExtentUnallocated, GuestOff: 70 * 512, Len: 62*512 + 100 + 32<<10 - 70*512},
	}
	if len(exts) != len(want) {
		t.Fatalf("got %d extents %+v, want %+v", len(exts), exts, want)
	}
	for i := range want {
		if exts[i] != want[i] {
			t.Errorf("extent %d = %+v, want %+v", i, exts[i], want[i])
		}
	}
	// Unallocated L2 tables (entry 2) and the end of the disk.
	exts, err = format.Map(exts[:0], &g, m.l1, m.l2, 64<<10, 32<<10)
	if err != nil || len(exts) != 1 || exts[0] != (format.Extent{Kind: format.ExtentUnallocated, GuestOff: 64 << 10, Len: 32 << 10}) {
		t.Errorf("unallocated table: %+v %v", exts, err)
	}
	for _, r := range [][2]int64{{-1, 10}, {0, -1}, {96 << 10, 1}, {0, 96<<10 + 1}, {1 << 62, 1 << 62}} {
		if _, err := format.Map(nil, &g, m.l1, m.l2, r[0], r[1]); !errors.Is(err, format.ErrRange) {
			t.Errorf("Map(%d,%d): %v, want ErrRange", r[0], r[1], err)
		}
	}
	if exts, err := format.Map(nil, &g, m.l1, m.l2, 96<<10, 0); err != nil || len(exts) != 0 {
		t.Errorf("empty range at the end: %v %v", exts, err)
	}
	// A short L2 table from the callback, an L1 shorter than the disk,
	// and a callback error are errors, not panics.
	short := func(int64) ([]byte, error) { return make([]byte, 100), nil }
	if _, err := format.Map(nil, &g, m.l1, short, 0, 512); !errors.Is(err, format.ErrRange) {
		t.Errorf("short L2 table: %v", err)
	}
	if _, err := format.Map(nil, &g, m.l1[:1], m.l2, 40<<10, 512); !errors.Is(err, format.ErrCorrupt) {
		t.Errorf("L1 shorter than the disk: %v", err)
	}
	boom := errors.New("boom")
	if _, err := format.Map(nil, &g, m.l1, func(int64) ([]byte, error) { return nil, boom }, 0, 512); !errors.Is(err, boom) {
		t.Errorf("callback error: %v", err)
	}
}

// TestQcow2MapNoAllocs asserts that Map allocates nothing when dst has
// room and the L2 callback serves cached tables (style B6.9).
func TestQcow2MapNoAllocs(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	for _, g := range []format.Geometry{
		{ClusterBits: 9, RefcountOrder: 4, ZeroFlag: true, Size: 1 << 20},
		{ClusterBits: 16, RefcountOrder: 4, ExtendedL2: true, Size: 1 << 30},
	} {
		m := randomImage(rng, g)
		l2 := m.l2 // method value created once, outside the measured loop
		dst := make([]format.Extent, 0, 4096)
		off, n := g.L1Coverage()-3*g.ClusterSize()-100, 8*g.ClusterSize()
		var err error
		allocs := testing.AllocsPerRun(100, func() {
			dst, err = format.Map(dst[:0], &m.g, m.l1, l2, off, n)
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(dst) < 2 {
			t.Fatalf("only %d extents; the test should cross boundaries", len(dst))
		}
		if allocs != 0 {
			t.Errorf("cb=%d: Map allocated %.1f times per call", g.ClusterBits, allocs)
		}
	}
}

func BenchmarkQcow2Map(b *testing.B) {
	g := format.Geometry{ClusterBits: 16, RefcountOrder: 4, ZeroFlag: true, Size: 1 << 30}
	m := randomImage(rand.New(rand.NewSource(3)), g)
	l2 := m.l2
	dst := make([]format.Extent, 0, 64)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		off := int64(i*4096) % (g.Size - 1<<20)
		dst, _ = format.Map(dst[:0], &m.g, m.l1, l2, off, 128<<10)
	}
}

// TestMapDataAgreesWithMap: the read fast path's one-cluster mapping
// (Geometry.OneClusterL2 + DataHost) answers only where Map yields exactly one data
// extent, with the same host offset, and never where Map reports an error —
// on random images of every cluster size, with random bits of the L1 and L2
// entries flipped (hostile entries must fall through to Map).
func TestMapDataAgreesWithMap(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	hits := 0
	for _, cb := range []uint32{9, 12, 16, 21} {
		for _, flip := range []bool{false, true} {
			g := format.Geometry{ClusterBits: cb, RefcountOrder: 4, ZeroFlag: true, Size: 1 << 32}
			m := randomImage(rng, g)
			if flip {
				for i := range m.l1 {
					if rng.Intn(4) == 0 {
						m.l1[i] ^= 1 << rng.Intn(64)
					}
				}
				for _, tab := range m.l2s {
					for k := 0; k < 64; k++ {
						j := rng.Intn(len(tab) / 8)
						e := binary.BigEndian.Uint64(tab[j*8:]) ^ 1<<rng.Intn(64)
						binary.BigEndian.PutUint64(tab[j*8:], e)
					}
				}
			}
			cs := g.ClusterSize()
			var dst []format.Extent
			for k := 0; k < 20000; k++ {
				off := rng.Int63n(g.Size)
				if k%3 == 0 {
					off &^= cs - 1
				}
				n := 1 + rng.Int63n(min(2*cs, 1<<17))
				if k%5 == 0 {
					n = 1 + rng.Int63n(cs)
				}
				var err error
				dst, err = format.Map(dst[:0], &m.g, m.l1, m.l2, off, n)
				l2Off, ok := m.g.OneClusterL2(m.l1, off, n)
				if !ok {
					continue
				}
				tab, terr := m.l2(l2Off)
				if terr != nil {
					// A flipped L1 bit names a table the image does not
					// have: the driver would load it; Map saw the same.
					if err == nil {
						t.Fatalf("cb=%d off=%#x: OneClusterL2 gave table %#x that Map did not look up", cb, off, l2Off)
					}
					continue
				}
				host, ok := m.g.DataHost(tab, off)
				if !ok {
					continue
				}
				hits++
				if err != nil || len(dst) != 1 || dst[0].Kind != format.ExtentData || dst[0].HostOff != host || dst[0].Len != n {
					t.Fatalf("cb=%d flip=%t off=%#x n=%d: fast mapping says data at %#x, Map says %+v, %v", cb, flip, off, n, host, dst, err)
				}
			}
		}
	}
	if hits < 1000 {
		t.Fatalf("only %d fast-path mappings: the test does not exercise it", hits)
	}
}
