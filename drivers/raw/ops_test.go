package raw_test

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/raw"
)

// allocated returns the bytes the filesystem allocated for path.
func allocated(t testing.TB, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestDiscardAndWriteZeroes (kernel ring, ext4): discard=unmap punches a
// hole; discard=ignore leaves the data; write-zeroes zeroes with or without
// unmap; unmap deallocates only with discard=unmap; write-zeroes past the
// end grows the file. Block status sees the holes.
func TestDiscardAndWriteZeroes(t *testing.T) {
	for _, mode := range cacheModes {
		t.Run(mode.String(), func(t *testing.T) {
			e := newEnv(t, nil, 0)
			const mb = 1 << 20
			path, model := image(t, 4*mb, 40)
			un := e.node(path, raw.Options{Cache: mode, Discard: raw.DiscardUnmap})

			if err := un.Discard(0, mb); err != nil {
				t.Fatal(err)
			}
			clear(model[:mb]) // a punched hole reads as zeroes on ext4
			if st, pnum, err := un.BlockStatus(0, 4*mb); err != nil || st&block.StatusZero == 0 || pnum != mb {
				t.Fatalf("status after discard: %v %d %v, want zero for 1 MiB", st, pnum, err)
			}
			if st, pnum, err := un.BlockStatus(mb, 4*mb); err != nil || st&block.StatusData == 0 || pnum != 3*mb {
				t.Fatalf("status of the data: %v %d %v, want data for 3 MiB", st, pnum, err)
			}
			before := allocated(t, path)
			if err := un.WriteZeroes(mb, mb, block.MayUnmap); err != nil {
				t.Fatal(err)
			}
			clear(model[mb : 2*mb])
			if a := allocated(t, path); a > before-mb/2 {
				t.Fatalf("write-zeroes with unmap left %d bytes allocated (was %d)", a, before)
			}
			before = allocated(t, path)
			if err := un.WriteZeroes(2*mb+512, 4096, 0); err != nil {
				t.Fatal(err)
			}
			clear(model[2*mb+512 : 2*mb+512+4096])
			if a := allocated(t, path); a < before-8192 {
				t.Fatalf("write-zeroes without unmap deallocated: %d -> %d", before, a)
			}
			// Past the end: the file grows, as a write would make it.
			if err := un.WriteZeroes(4*mb, mb, block.MayUnmap); err != nil {
				t.Fatal(err)
			}
			model = append(model, make([]byte, mb)...)
			if size, _ := un.Length(); size != 5*mb {
				t.Fatalf("size after write-zeroes past the end: %d", size)
			}
			mustEqual(t, "file", fileBytes(t, path), model)

			path2, model2 := image(t, mb, 41)
			ig := e.node(path2, raw.Options{Cache: mode})
			if err := ig.Discard(0, mb); err != nil {
				t.Fatal(err)
			}
			before = allocated(t, path2)
			if err := ig.WriteZeroes(0, 65536, block.MayUnmap); err != nil {
				t.Fatal(err)
			}
			clear(model2[:65536])
			if a := allocated(t, path2); a < before {
				t.Fatalf("discard=ignore deallocated: %d -> %d", before, a)
			}
			mustEqual(t, "discard=ignore file", fileBytes(t, path2), model2)
		})
	}
}

// TestDetectZeroes: with detect-zeroes=unmap (and discard=unmap) a write of
// zeroes deallocates; with off it is an ordinary write; a non-zero write is
// never touched.
func TestDetectZeroes(t *testing.T) {
	e := newEnv(t, nil, 0)
	const mb = 1 << 20
	path, model := image(t, 2*mb, 42)
	n := e.node(path, raw.Options{DetectZeroes: raw.DetectZeroesUnmap, Discard: raw.DiscardUnmap})
	before := allocated(t, path)
	if _, err := n.WriteAt(make([]byte, mb), 0); err != nil {
		t.Fatal(err)
	}
	clear(model[:mb])
	if a := allocated(t, path); a > before-mb/2 {
		t.Fatalf("zero write with detect-zeroes=unmap: %d -> %d bytes allocated", before, a)
	}
	nz := make([]byte, 4096)
	nz[4095] = 1
	if _, err := n.WriteAt(nz, mb); err != nil {
		t.Fatal(err)
	}
	copy(model[mb:], nz)
	mustEqual(t, "file", fileBytes(t, path), model)

	path2, _ := image(t, mb, 43)
	off := e.node(path2, raw.Options{Discard: raw.DiscardUnmap})
	before = allocated(t, path2)
	if _, err := off.WriteAt(make([]byte, mb), 0); err != nil {
		t.Fatal(err)
	}
	if a := allocated(t, path2); a < before {
		t.Fatalf("detect-zeroes=off deallocated: %d -> %d", before, a)
	}
}

// TestBlockStatusSparse: a sparse file reports zero for holes and data for
// written extents, with pnum ending at the extent boundary, and zero past
// the last extent.
func TestBlockStatusSparse(t *testing.T) {
	e := newEnv(t, nil, 0)
	const mb = 1 << 20
	path := filepath.Join(dataDir(t), "sparse.raw")
	if err := raw.Create(path, 8*mb, raw.PreallocOff); err != nil {
		t.Fatal(err)
	}
	n := e.node(path, raw.Options{})
	if _, err := n.WriteAt(pattern(mb, 1), 2*mb); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		off, len, pnum int64
		st             block.Status
	}{
		{0, 8 * mb, 2 * mb, block.StatusZero},
		{mb, mb / 2, mb / 2, block.StatusZero},
		{2 * mb, 8 * mb, mb, block.StatusData},
		{2*mb + 4096, 4096, 4096, block.StatusData},
		{3 * mb, 8 * mb, 5 * mb, block.StatusZero},
	} {
		st, pnum, err := n.BlockStatus(c.off, c.len)
		if err != nil || st&(block.StatusZero|block.StatusData) != c.st || pnum != c.pnum || st&block.StatusAllocated == 0 {
			t.Errorf("status(%d, %d) = %v %d %v; want %v %d (allocated)", c.off, c.len, st, pnum, err, c.st, c.pnum)
		}
	}
}

// TestTruncateAndPreallocation: Create and Truncate with off, falloc and
// full: the size is right, off stays sparse, falloc and full allocate the
// new range, new space reads as zeroes, and shrinking works.
func TestTruncateAndPreallocation(t *testing.T) {
	const mb = 1 << 20
	for _, p := range []raw.Prealloc{raw.PreallocOff, raw.PreallocFalloc, raw.PreallocFull} {
		t.Run(p.String(), func(t *testing.T) {
			e := newEnv(t, nil, 0)
			path := filepath.Join(dataDir(t), "img.raw")
			if err := raw.Create(path, 2*mb, p); err != nil {
				t.Fatal(err)
			}
			a := allocated(t, path)
			if (p == raw.PreallocOff) != (a < mb) {
				t.Fatalf("create with %v allocated %d bytes of 2 MiB", p, a)
			}
			n := e.node(path, raw.Options{Prealloc: p, Cache: raw.CacheNone})
			if _, err := n.WriteAt(pattern(4096, 9), 0); err != nil {
				t.Fatal(err)
			}
			if err := n.Truncate(6 * mb); err != nil {
				t.Fatal(err)
			}
			if size, err := n.Length(); err != nil || size != 6*mb {
				t.Fatalf("length after grow %d %v", size, err)
			}
			a = allocated(t, path)
			if (p == raw.PreallocOff) != (a < 4*mb) {
				t.Fatalf("grow with %v: %d bytes allocated of 6 MiB", p, a)
			}
			buf := pattern(4096, 3)
			if _, err := n.ReadAt(buf, 5*mb); err != nil {
				t.Fatal(err)
			}
			mustEqual(t, "grown range", buf, make([]byte, 4096))
			if err := n.Truncate(mb); err != nil {
				t.Fatal(err)
			}
			if st, _ := os.Stat(path); st.Size() != mb {
				t.Fatalf("size after shrink %d", st.Size())
			}
			got := fileBytes(t, path)
			mustEqual(t, "kept data", got[:4096], pattern(4096, 9))
		})
	}
	if err := raw.Create(filepath.Join(t.TempDir(), "x"), -1, raw.PreallocOff); !block.IsKind(err, block.OutOfBounds) {
		t.Fatalf("create with a negative size: %v", err)
	}
}

// TestOptionNames: every option value parses back from its name.
func TestOptionNames(t *testing.T) {
	for _, c := range []raw.Cache{raw.CacheWriteback, raw.CacheNone, raw.CacheWritethrough} {
		if got, ok := raw.ParseCache(c.String()); !ok || got != c {
			t.Errorf("cache %v", c)
		}
	}
	for _, p := range []raw.Prealloc{raw.PreallocOff, raw.PreallocFalloc, raw.PreallocFull} {
		if got, ok := raw.ParsePrealloc(p.String()); !ok || got != p {
			t.Errorf("prealloc %v", p)
		}
	}
	for _, d := range []raw.DetectZeroes{raw.DetectZeroesOff, raw.DetectZeroesOn, raw.DetectZeroesUnmap} {
		if got, ok := raw.ParseDetectZeroes(d.String()); !ok || got != d {
			t.Errorf("detect-zeroes %v", d)
		}
	}
	for _, d := range []raw.Discard{raw.DiscardIgnore, raw.DiscardUnmap} {
		if got, ok := raw.ParseDiscard(d.String()); !ok || got != d {
			t.Errorf("discard %v", d)
		}
	}
	for _, l := range []raw.Locking{raw.LockingAuto, raw.LockingOn, raw.LockingOff} {
		if got, ok := raw.ParseLocking(l.String()); !ok || got != l {
			t.Errorf("locking %v", l)
		}
	}
	if _, ok := raw.ParseCache("directsync"); ok {
		t.Error("unknown cache mode parsed")
	}
}

// TestDrainWaitsForWorkerOps: a truncate with full preallocation runs on a
// worker goroutine; a drain started while it runs returns only after it
// completed, because the request stays in flight across the hop.
func TestDrainWaitsForWorkerOps(t *testing.T) {
	e := newEnv(t, nil, 0)
	path := filepath.Join(dataDir(t), "img.raw")
	if err := raw.Create(path, 1<<20, raw.PreallocOff); err != nil {
		t.Fatal(err)
	}
	n := e.node(path, raw.Options{Prealloc: raw.PreallocFull})
	fe := e.g.NewFrontEnd(block.FrontEndOptions{Name: "fe"})
	if err := fe.Insert(n); err != nil {
		t.Fatal(err)
	}
	defer fe.Close()
	q := fe.Queue(e.main)
	c := &counter{}
	e.on(func() {
		r := q.Get()
		r.Op, r.Off = block.OpTruncate, 64<<20
		q.Submit(r, c)
	})
	fe.Drain()
	if c.n != 1 || len(c.errs) != 0 {
		t.Fatalf("drain returned with the truncate not completed (%d completions, %v)", c.n, c.errs)
	}
	if st, _ := os.Stat(path); st.Size() != 64<<20 || allocated(t, path) < 60<<20 {
		t.Fatalf("after the drain: size %d, %d bytes allocated", st.Size(), allocated(t, path))
	}
}
