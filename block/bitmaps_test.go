package block_test

import (
	"errors"
	"math/rand/v2"
	"strings"
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

	q := func(fn func(q *block.Queue, r *blocktest.Result)) {
		res := blocktest.NewResult()
		e.On(e.IO[0], func() { fn(fe.Queue(e.IO[0]), res) })
		res.Wait(e)
		if res.Err != nil {
			t.Fatal(res.Err)
		}
	}
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

// TestTruncateRefusedPastBitmap: a node with a dirty bitmap cannot grow
// past the bitmap's length (writes there would not be recorded, and a
// backup from the bitmap would miss them); it may shrink, and grows again
// once the bitmap is removed.
func TestTruncateRefusedPastBitmap(t *testing.T) {
	e := blocktest.NewEnv(t, 1)
	n := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "n"})
	defer n.Unref()
	b, err := n.AddBitmap("b0", 4096)
	if err != nil {
		t.Fatal(err)
	}
	var terr error
	e.On(e.Main, func() { terr = n.Truncate(128 << 10) })
	if !errors.Is(terr, block.ErrBitmapTooSmall) || !errors.Is(terr, syscall.EBUSY) || !strings.Contains(terr.Error(), `"b0"`) {
		t.Fatalf("grow past the bitmap: %v, want it refused naming b0", terr)
	}
	if l, _ := n.Length(); l != 64<<10 {
		t.Fatalf("length %d after a refused grow", l)
	}
	e.On(e.Main, func() { terr = n.Truncate(32 << 10) })
	if terr != nil {
		t.Fatalf("shrink: %v", terr)
	}
	e.On(e.Main, func() { terr = n.Truncate(64 << 10) })
	if terr != nil {
		t.Fatalf("grow back within the bitmap: %v", terr)
	}
	if err := n.RemoveBitmap(b.Name()); err != nil {
		t.Fatal(err)
	}
	e.On(e.Main, func() { terr = n.Truncate(128 << 10) })
	if terr != nil {
		t.Fatalf("grow without a bitmap: %v", terr)
	}
}
