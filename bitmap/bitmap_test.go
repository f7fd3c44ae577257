package bitmap

import (
	"math/rand/v2"
	"testing"
	"unsafe"
)

// model is a plain []bool per chunk.
type model struct {
	gran, size int64
	bits       []bool
}

func (m *model) set(off, n int64) {
	for o := max(off, 0); o < min(off+n, m.size); o++ {
		m.bits[o/m.gran] = true
	}
}

func (m *model) reset(off, n int64) {
	for c := range m.bits {
		s, e := int64(c)*m.gran, min(int64(c+1)*m.gran, m.size)
		if s >= off && (e <= off+n || (off+n >= m.size && e == m.size)) {
			m.bits[c] = false
		}
	}
}

// count is QEMU's: every dirty chunk counts a whole granularity, the
// partial last one too.
func (m *model) count() int64 {
	var n int64
	for _, b := range m.bits {
		if b {
			n += m.gran
		}
	}
	return n
}

func TestAgainstModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 200; round++ {
		gran := int64(512) << rng.IntN(6)
		size := rng.Int64N(300*gran) + 1
		b, err := New("b", size, gran)
		if err != nil {
			t.Fatal(err)
		}
		m := &model{gran: gran, size: size, bits: make([]bool, (size+gran-1)/gran)}
		for op := 0; op < 50; op++ {
			off := rng.Int64N(size+gran) - gran/2
			n := rng.Int64N(20 * gran)
			switch rng.IntN(4) {
			case 0, 1:
				b.Mark(off, n)
				m.set(off, n)
			case 2:
				if off < 0 {
					off = 0
				}
				b.ResetRange(off, n)
				m.reset(off, n)
			case 3:
				b.SetEnabled(false)
				b.Mark(off, n) // not tracked
				b.SetEnabled(true)
			}
			if b.Count() != m.count() {
				t.Fatalf("round %d op %d: count %d, model %d (gran %d size %d)", round, op, b.Count(), m.count(), gran, size)
			}
		}
		// Extents cover exactly the model's dirty chunks.
		got := make([]bool, len(m.bits))
		b.Extents(func(off, n int64) bool {
			for o := off; o < off+n; o += gran {
				got[o/gran] = true
			}
			return true
		})
		for c := range got {
			if got[c] != m.bits[c] || b.Get(int64(c)*gran) != m.bits[c] {
				t.Fatalf("round %d: chunk %d: extents %v get %v model %v", round, c, got[c], b.Get(int64(c)*gran), m.bits[c])
			}
		}
		if b.IsEmpty() != (m.count() == 0) {
			t.Fatal("IsEmpty wrong")
		}
	}
}

func TestMergeCopySubtract(t *testing.T) {
	a, _ := New("a", 1<<20, 4096)
	b, _ := New("b", 1<<20, 65536)
	a.Mark(0, 1)
	b.Mark(100000, 1)
	if err := a.Merge(b); err != nil {
		t.Fatal(err)
	}
	if !a.Get(0) || !a.Get(65536) || !a.Get(131071) || a.Get(131072) || a.Count() != 4096+65536 {
		t.Fatalf("merge across granularities: count %d", a.Count())
	}
	c := a.Copy("c", false)
	if !c.Equal(a) || c.Enabled() {
		t.Fatal("copy")
	}
	c.Mark(500000, 1)
	if c.Get(500000) {
		t.Fatal("disabled copy tracked a write")
	}
	if err := a.Subtract(c); err != nil || !a.IsEmpty() {
		t.Fatal("subtract")
	}
	d, _ := New("d", 1<<19, 4096)
	if a.Merge(d) == nil {
		t.Fatal("merge of different sizes accepted")
	}
	for _, g := range []int64{0, 256, 3000, 1 << 32} {
		if _, err := New("x", 1, g); err == nil {
			t.Fatalf("granularity %d accepted", g)
		}
	}
}

func TestMarkZeroAllocs(t *testing.T) {
	b, _ := New("a", 1<<30, 65536)
	rng := rand.New(rand.NewPCG(3, 4))
	allocs := testing.AllocsPerRun(1000, func() { b.Mark(rng.Int64N(1<<30), 4096) })
	if allocs != 0 {
		t.Fatalf("Mark: %.1f allocations", allocs)
	}
}

func BenchmarkMark4K(b *testing.B) {
	bm, _ := New("a", 1<<30, 65536)
	bm.Fill()
	off := int64(0)
	for i := 0; i < b.N; i++ {
		bm.Mark(off, 4096)
		off = (off + 12345*4096) & (1<<30 - 1)
	}
}

// TestMarkLineLayout: the fields Mark reads fill the first cache line of
// a 128-byte struct (so the allocator aligns it and control-path writes
// to name and busy never share the marking line).
func TestMarkLineLayout(t *testing.T) {
	var b Bitmap
	if sz := unsafe.Sizeof(b); sz != 128 {
		t.Fatalf("Bitmap is %d bytes, want 128", sz)
	}
	for name, off := range map[string]uintptr{"g": unsafe.Offsetof(b.g), "shift": unsafe.Offsetof(b.shift), "enabled": unsafe.Offsetof(b.enabled)} {
		if off >= 64 {
			t.Errorf("%s at offset %d, outside the first cache line", name, off)
		}
	}
	for name, off := range map[string]uintptr{"name": unsafe.Offsetof(b.name), "busy": unsafe.Offsetof(b.busy)} {
		if off < 64 {
			t.Errorf("%s at offset %d, on the marking line", name, off)
		}
	}
	for i := 0; i < 100; i++ {
		p, _ := New("x", 1<<20, 65536)
		if uintptr(unsafe.Pointer(p))%64 != 0 {
			t.Fatalf("bitmap at %p is not cache-line aligned", p)
		}
	}
}
