package bitmap

import (
	"math/rand"
	"sync"
	"testing"
)

// TestResizeGrowNewAreaClean: growing keeps every bit and adds clean
// chunks; a mark past the old end is then recorded (QEMU's
// hbitmap_truncate; qemu-img resize + qemu-io write show the same
// extents through qemu-storage-daemon's NBD dirty-bitmap context).
func TestResizeGrowNewAreaClean(t *testing.T) {
	b, _ := New("b0", 1<<20, 64<<10)
	b.Mark(0, 64<<10)
	b.Mark(960<<10, 64<<10)
	if err := b.Resize(2 << 20); err != nil {
		t.Fatal(err)
	}
	if b.Size() != 2<<20 || b.Bits() != 32 {
		t.Fatalf("size %d bits %d after growing to 2 MiB", b.Size(), b.Bits())
	}
	if got := b.Count(); got != 128<<10 {
		t.Fatalf("count %d after growing, want %d (old bits kept, new area clean)", got, 128<<10)
	}
	if b.NextDirty(1<<20) != -1 {
		t.Fatalf("new area dirty at %d", b.NextDirty(1<<20))
	}
	b.Mark(1536<<10, 4096)
	if !b.Get(1536<<10) || b.Count() != 192<<10 {
		t.Fatalf("mark past the old end not recorded: get %v count %d", b.Get(1536<<10), b.Count())
	}
	var ext [][2]int64
	b.Extents(func(off, n int64) bool { ext = append(ext, [2]int64{off, n}); return true })
	want := [][2]int64{{0, 64 << 10}, {960 << 10, 64 << 10}, {1536 << 10, 64 << 10}}
	if len(ext) != len(want) {
		t.Fatalf("extents %v, want %v", ext, want)
	}
	for i := range want {
		if ext[i] != want[i] {
			t.Fatalf("extents %v, want %v", ext, want)
		}
	}
}

// TestResizeShrinkKeepsPartialChunk: shrinking drops the chunks wholly
// past the new end and keeps the partial last one; growing again adds
// clean chunks only (qemu-img resize --shrink to 1000K, then to 2M:
// [960K, 1024K) is still dirty, nothing past it).
func TestResizeShrinkKeepsPartialChunk(t *testing.T) {
	b, _ := New("b0", 1<<20, 64<<10)
	b.Mark(0, 64<<10)
	b.Mark(960<<10, 64<<10)
	if err := b.Resize(1000 << 10); err != nil {
		t.Fatal(err)
	}
	// QEMU counts the partial last chunk whole.
	if b.Bits() != 16 || !b.Get(960<<10) || b.Count() != 2*64<<10 {
		t.Fatalf("after shrink: bits %d, partial chunk %v, count %d", b.Bits(), b.Get(960<<10), b.Count())
	}
	if err := b.Resize(512 << 10); err != nil {
		t.Fatal(err)
	}
	if err := b.Resize(2 << 20); err != nil {
		t.Fatal(err)
	}
	if b.Count() != 64<<10 || b.Get(960<<10) {
		t.Fatalf("a chunk past a shrink came back: count %d", b.Count())
	}
	// A size that ends inside a word: the bits past it are dropped from
	// the word itself.
	c, _ := New("c", 1<<20, 512)
	c.Fill()
	if err := c.Resize(100 * 512); err != nil {
		t.Fatal(err)
	}
	if err := c.Resize(1 << 20); err != nil {
		t.Fatal(err)
	}
	if c.Count() != 100*512 || c.NextClean(0) != 100*512 {
		t.Fatalf("count %d, first clean %d after shrink to 100 chunks and regrow", c.Count(), c.NextClean(0))
	}
	if err := c.Resize(-1); err == nil {
		t.Fatal("negative size accepted")
	}
}

// TestResizeConcurrentMarksNotLost: writers mark distinct chunks while
// the bitmap is grown and shrunk back and forth above all of them; every
// chunk marked before the last Resize returned is dirty afterwards (run
// with -race: the geometry is published atomically).
func TestResizeConcurrentMarksNotLost(t *testing.T) {
	seed := rand.Int63()
	t.Logf("seed %d", seed)
	const gran, chunks, writers = 512, 1 << 14, 4
	b, _ := New("b0", chunks*gran, gran)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		r := rand.New(rand.NewSource(seed))
		for {
			select {
			case <-stop:
				return
			default:
			}
			// Never below the chunks the writers mark.
			if err := b.Resize(int64(chunks+r.Intn(chunks)) * gran); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	var mw sync.WaitGroup
	for w := 0; w < writers; w++ {
		mw.Add(1)
		go func(w int) {
			defer mw.Done()
			for c := w; c < chunks; c += writers {
				if c%3 == 0 {
					b.SetRange(int64(c)*gran, gran)
				} else {
					b.Mark(int64(c)*gran, 1)
				}
			}
		}(w)
	}
	mw.Wait()
	close(stop)
	wg.Wait()
	for c := int64(0); c < chunks; c++ {
		if !b.Get(c * gran) {
			t.Fatalf("seed %d: chunk %d marked during resizes is clean", seed, c)
		}
	}
}
