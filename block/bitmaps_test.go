package block_test

import (
	"errors"
	"math/rand/v2"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/bitmap"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

// TestBitmapTracksWritePaths: writes, write-zeroes and discards through a
// front end on an IOThread, and through a filter node, mark every enabled
// bitmap of the nodes they complete on; reads and flushes do not; a
// disabled bitmap records nothing; names are unique and busy bitmaps
// cannot be removed.
func TestBitmapTracksWritePaths(t *testing.T) {
	e := blocktest.NewEnv(t, 1)
	const size = 1 << 20
	base := e.Open(blocktest.NewMem(size), block.Options{Name: "base"})
	fwd := &blocktest.Forward{}
	top := e.Open(fwd, block.Options{Name: "top"})
	fwd.Edge.Store(e.Attach(top, base, "file", block.RoleFile|block.RolePrimary))
	base.Unref()
	fe := e.FrontEnd("fe", top, block.FrontEndOptions{AllowContextChange: true})
	top.Unref()
	if err := fe.SetContext(e.IO[0]); err != nil {
		t.Fatal(err)
	}
	onBase, err := base.AddBitmap("b0", 4096)
	if err != nil {
		t.Fatal(err)
	}
	onTop, err := top.AddBitmap("t0", 0)
	if err != nil || onTop.Granularity() != bitmap.DefaultGranularity || onTop.Size() != size {
		t.Fatalf("default bitmap: %v", err)
	}
	off, err := base.AddBitmap("off", 4096)
	if err != nil {
		t.Fatal(err)
	}
	off.SetEnabled(false)
	if _, err := base.AddBitmap("b0", 4096); !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("duplicate name: %v", err)
	}

	q := oneAtATime(t, e, fe)
	buf := make([]byte, 4096)
	q(func(q *block.Queue, r *blocktest.Result) { q.Write(buf, 8192, 0, r, 0) })
	q(func(q *block.Queue, r *blocktest.Result) { q.WriteZeroes(65536, 8192, 0, r, 0) })
	q(func(q *block.Queue, r *blocktest.Result) { q.Discard(200000, 4096, r, 0) })
	q(func(q *block.Queue, r *blocktest.Result) { q.Read(buf, 500000, r, 0) })
	q(func(q *block.Queue, r *blocktest.Result) { q.Flush(r, 0) })

	var got []int64
	onBase.Extents(func(o, n int64) bool { got = append(got, o, n); return true })
	want := []int64{8192, 4096, 65536, 8192, 200000 &^ 4095, 4096 * 2}
	// 200000 is not 4 KiB aligned: the discard touches two chunks.
	if len(got) != len(want) {
		t.Fatalf("base extents %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("base extents %v, want %v", got, want)
		}
	}
	if onTop.Count() != 3*65536 || !onTop.Get(0) || !onTop.Get(65536) || !onTop.Get(196608) || onTop.Get(131072) {
		t.Fatalf("top bitmap count %d", onTop.Count())
	}
	if !off.IsEmpty() {
		t.Fatal("disabled bitmap tracked writes")
	}
	off.SetBusy(true)
	if err := base.RemoveBitmap("off"); !errors.Is(err, bitmap.ErrBusy) {
		t.Fatalf("remove of a busy bitmap: %v", err)
	}
	off.SetBusy(false)
	if err := base.RemoveBitmap("off"); err != nil || base.Bitmap("off") != nil || len(base.Bitmaps()) != 1 {
		t.Fatalf("remove: %v", err)
	}
	if err := base.RemoveBitmap("nope"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("remove of a missing bitmap: %v", err)
	}
	// Synchronous node writes (control paths) are tracked too.
	onBase.Clear()
	if _, err := base.WriteAt(buf, 4096*100); err != nil {
		t.Fatal(err)
	}
	if !onBase.Get(4096*100) || onBase.Count() != 4096 {
		t.Fatal("synchronous write not tracked")
	}
	fe.SetContext(e.Main)
	fe.Close()
}

// writer keeps depth 4 KiB random writes in flight on a queue.
type writer struct {
	q                   *block.Queue
	buf                 []byte
	rng                 *rand.Rand
	size                int64
	remaining, inflight int
}

func (w *writer) RequestDone(r *block.Request, err error) {
	w.inflight--
	if w.remaining > 0 {
		w.remaining--
		w.inflight++
		w.q.Write(w.buf, w.rng.Int64N(w.size/4096)*4096, 0, w, 0)
	}
}

func (w *writer) run(ctx interface{ WaitWhile(func() bool) bool }, total, depth int) {
	w.remaining = total
	for i := 0; i < depth; i++ {
		w.remaining--
		w.inflight++
		w.q.Write(w.buf, w.rng.Int64N(w.size/4096)*4096, 0, w, 0)
	}
	ctx.WaitWhile(func() bool { return w.inflight > 0 })
}

func newWriteBench(tb testing.TB, withBitmap bool) (*blocktest.Env, *writer, func()) {
	e := blocktest.NewEnv(tb, 0)
	const size = 1 << 30
	n := e.Open(&blocktest.Null{Size: size}, block.Options{Name: "null"})
	if withBitmap {
		if _, err := n.AddBitmap("dirty", 65536); err != nil {
			tb.Fatal(err)
		}
	}
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{})
	n.Unref()
	w := &writer{q: fe.Queue(e.Main), buf: make([]byte, 4096), rng: rand.New(rand.NewPCG(1, 1)), size: size}
	return e, w, func() { fe.Close() }
}

// TestTrackedWriteZeroAllocs: the 4 KiB random write path with a dirty
// bitmap on the node allocates nothing per request.
func TestTrackedWriteZeroAllocs(t *testing.T) {
	skipAllocBudget(t)
	e, w, done := newWriteBench(t, true)
	defer done()
	var per float64
	e.OnMain(func() {
		w.run(e.Main, 1000, 32)
		per = testing.AllocsPerRun(5, func() { w.run(e.Main, 20000, 32) })
	})
	if per > 2 {
		t.Fatalf("%.0f allocations for 20000 tracked writes", per)
	}
	n := e.G.NodeByName("null")
	if n.Bitmap("dirty").Count() == 0 {
		t.Fatal("writes not tracked")
	}
}

// BenchmarkWrite4KRandom{NoBitmap,Bitmap}: the cost of dirty tracking on
// the 4 KiB random write path (front end → null node, queue depth 32).
func BenchmarkWrite4KRandomNoBitmap(b *testing.B) { benchWrite(b, false) }
func BenchmarkWrite4KRandomBitmap(b *testing.B)   { benchWrite(b, true) }

func benchWrite(b *testing.B, withBitmap bool) {
	e, w, done := newWriteBench(b, withBitmap)
	defer done()
	b.ReportAllocs()
	e.OnMain(func() {
		w.run(e.Main, 1000, 32)
		b.ResetTimer()
		w.run(e.Main, b.N, 32)
		b.StopTimer()
	})
}

// TestTruncateResizesBitmaps: a truncate resizes every bitmap of the
// node, enabled, disabled and busy alike (a backup's frozen bitmap and
// its successor keep one size, so their merge still applies); the grown
// area is clean and a write past the old end is then recorded, with
// QEMU's count (qemu-storage-daemon after block_resize and a write past
// the old end: qmp.TestBlockResizeBitmapCount). A shrink drops the chunks
// past the new end. Before, the grow was refused (ErrBitmapTooSmall).
func TestTruncateResizesBitmaps(t *testing.T) {
	e := blocktest.NewEnv(t, 1)
	n := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "n"})
	defer n.Unref()
	b, err := n.AddBitmap("b0", 4096)
	if err != nil {
		t.Fatal(err)
	}
	off, err := n.AddBitmap("off", 4096)
	if err != nil {
		t.Fatal(err)
	}
	off.SetEnabled(false)
	frozen, err := n.AddBitmap("frozen", 4096)
	if err != nil {
		t.Fatal(err)
	}
	succ, _ := bitmap.New("succ", frozen.Size(), frozen.Granularity())
	if err := n.AttachBitmap(succ); err != nil {
		t.Fatal(err)
	}
	frozen.SetEnabled(false)
	frozen.SetBusy(true)
	write := func(o int64) {
		t.Helper()
		var werr error
		e.On(e.Main, func() { werr = n.WriteZeroes(o, 512, 0) })
		if werr != nil {
			t.Fatal(werr)
		}
	}
	truncate := func(size int64) {
		t.Helper()
		var terr error
		e.On(e.Main, func() { terr = n.Truncate(size) })
		if terr != nil {
			t.Fatalf("truncate to %d: %v", size, terr)
		}
	}
	write(0)
	frozen.SetRange(60<<10, 1)
	truncate(128 << 10)
	for _, x := range []*bitmap.Bitmap{b, off, frozen, succ} {
		if x.Size() != 128<<10 {
			t.Fatalf("bitmap %s covers %d bytes after growing to %d", x.Name(), x.Size(), 128<<10)
		}
	}
	if b.Count() != 4096 || b.NextDirty(64<<10) != -1 || succ.Count() != 4096 {
		t.Fatalf("after growing: count %d, first dirty past the old end %d, successor %d", b.Count(), b.NextDirty(64<<10), succ.Count())
	}
	write(96 << 10)
	if !b.Get(96<<10) || b.Count() != 8192 || !succ.Get(96<<10) || off.Count() != 0 || frozen.Count() != 4096 {
		t.Fatalf("write past the old end: b0 %v/%d, successor %v, disabled %d, frozen %d",
			b.Get(96<<10), b.Count(), succ.Get(96<<10), off.Count(), frozen.Count())
	}
	if err := frozen.Merge(succ); err != nil {
		t.Fatalf("merging the successor back: %v", err)
	}
	if frozen.Count() != 3*4096 {
		t.Fatalf("frozen after merge: count %d", frozen.Count())
	}
	truncate(32 << 10)
	if b.Size() != 32<<10 || b.Count() != 4096 || frozen.Count() != 4096 {
		t.Fatalf("after shrinking: size %d count %d, frozen %d", b.Size(), b.Count(), frozen.Count())
	}
	truncate(128 << 10)
	if b.Count() != 4096 || b.Get(96<<10) {
		t.Fatalf("a chunk dropped by the shrink came back: count %d", b.Count())
	}
	// A bitmap added afterwards covers the new length.
	c, err := n.AddBitmap("c", 4096)
	if err != nil || c.Size() != 128<<10 {
		t.Fatalf("bitmap added after the resize: %v, size %d", err, c.Size())
	}
	// A failed truncate changes no bitmap.
	var terr error
	e.On(e.Main, func() { terr = n.Truncate(-1) })
	if terr == nil || b.Size() != 128<<10 {
		t.Fatalf("truncate to -1: %v, bitmap size %d", terr, b.Size())
	}
}

// counter is a Done that counts completions and keeps the first error.
type counter struct {
	n   atomic.Int64
	err atomic.Pointer[error]
}

func (c *counter) RequestDone(_ *block.Request, err error) {
	if err != nil {
		c.err.CompareAndSwap(nil, &err)
	}
	c.n.Add(1)
}

// TestTruncateDuringWritesLosesNoMark: writes completing on an IOThread
// while the main Context grows and shrinks the node (never below them)
// are all recorded in the bitmap the node ends with (run with -race).
func TestTruncateDuringWritesLosesNoMark(t *testing.T) {
	e := blocktest.NewEnv(t, 1)
	const gran, chunks = 4096, 2048
	n := e.Open(blocktest.NewDriver(chunks*gran), block.Options{Name: "n"})
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{})
	n.Unref()
	b, err := n.AddBitmap("b0", gran)
	if err != nil {
		t.Fatal(err)
	}
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 0))
	var done counter
	buf := make([]byte, 512)
	e.On(e.IO[0], func() {
		q := fe.Queue(e.IO[0])
		for c := int64(0); c < chunks; c++ {
			q.Write(buf, c*gran+int64(c%8)*512, 0, &done, 0)
		}
	})
	for i := 0; done.n.Load() < chunks; i++ {
		size := int64(chunks+r.IntN(chunks)) * gran
		var terr error
		e.On(e.Main, func() { terr = n.Truncate(size) })
		if terr != nil {
			t.Fatalf("truncate %d to %d: %v", i, size, terr)
		}
	}
	if p := done.err.Load(); p != nil {
		t.Fatal(*p)
	}
	for c := int64(0); c < chunks; c++ {
		if !b.Get(c * gran) {
			t.Fatalf("seed %d: chunk %d written during truncates is clean", seed, c)
		}
	}
	if b.Count() != chunks*gran {
		t.Fatalf("count %d, want %d", b.Count(), chunks*gran)
	}
}

// TestWriteThreshold: a node's write threshold fires once, for the first
// write or write-zeroes that ends past it (discards, reads and writes
// below it do not), with the bytes past it, and is off afterwards; arming
// and disarming it keeps the node's bitmaps, and adding or removing a
// bitmap keeps the threshold.
func TestWriteThreshold(t *testing.T) {
	e := blocktest.NewEnv(t, 1)
	n := e.Open(blocktest.NewMem(1<<20), block.Options{Name: "n"})
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{AllowContextChange: true})
	n.Unref()
	if err := fe.SetContext(e.IO[0]); err != nil {
		t.Fatal(err)
	}
	b0, err := n.AddBitmap("b0", 4096)
	if err != nil {
		t.Fatal(err)
	}
	var fired atomic.Int64
	var exceeded, limit int64
	n.SetWriteThreshold(65536, func(x, l int64) { exceeded, limit = x, l; fired.Add(1) })
	if n.WriteThreshold() != 65536 || n.Bitmap("b0") != b0 {
		t.Fatalf("threshold %d, bitmap %v", n.WriteThreshold(), n.Bitmap("b0"))
	}
	if _, err := n.AddBitmap("b1", 4096); err != nil || n.WriteThreshold() != 65536 {
		t.Fatalf("a bitmap added: %v, threshold %d", err, n.WriteThreshold())
	}
	if err := n.RemoveBitmap("b1"); err != nil || n.WriteThreshold() != 65536 {
		t.Fatalf("a bitmap removed: %v, threshold %d", err, n.WriteThreshold())
	}
	q := oneAtATime(t, e, fe)
	buf := make([]byte, 4096)
	q(func(q *block.Queue, r *blocktest.Result) { q.Write(buf, 61440, 0, r, 0) })        // ends at the threshold
	q(func(q *block.Queue, r *blocktest.Result) { q.Discard(131072, 4096, r, 0) })       // not a write
	q(func(q *block.Queue, r *blocktest.Result) { q.Read(buf, 200000, r, 0) })           // not a write
	q(func(q *block.Queue, r *blocktest.Result) { q.WriteZeroes(98304, 8192, 0, r, 0) }) // past it
	q(func(q *block.Queue, r *blocktest.Result) { q.Write(buf, 500000, 0, r, 0) })       // off now
	if fired.Load() != 1 || exceeded != 98304+8192-65536 || limit != 65536 {
		t.Fatalf("fired %d times, exceeded %d, limit %d", fired.Load(), exceeded, limit)
	}
	if n.WriteThreshold() != 0 || n.Bitmap("b0") != b0 {
		t.Fatalf("after: threshold %d, bitmap %v", n.WriteThreshold(), n.Bitmap("b0"))
	}
	n.SetWriteThreshold(1, func(int64, int64) { fired.Add(1) })
	n.SetWriteThreshold(0, nil)
	q(func(q *block.Queue, r *blocktest.Result) { q.Write(buf, 0, 0, r, 0) })
	if fired.Load() != 1 || n.Bitmap("b0") != b0 {
		t.Fatalf("disarmed: fired %d, bitmap %v", fired.Load(), n.Bitmap("b0"))
	}
}

// oneAtATime returns a function that runs one request on fe's queue of
// e.IO[0] and waits for it, failing the test on an error.
func oneAtATime(t *testing.T, e *blocktest.Env, fe *block.FrontEnd) func(func(*block.Queue, *blocktest.Result)) {
	return func(fn func(q *block.Queue, r *blocktest.Result)) {
		t.Helper()
		res := blocktest.NewResult()
		e.On(e.IO[0], func() { fn(fe.Queue(e.IO[0]), res) })
		res.Wait(e)
		if res.Err != nil {
			t.Fatal(res.Err)
		}
	}
}
