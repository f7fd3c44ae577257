package block_test

import (
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/internal/invariants"
)

func skipAllocBudget(t *testing.T) {
	if raceEnabled || invariants.Enabled {
		t.Skip("allocation budgets hold for production builds (no -race, no invariants tag); make test runs them in a third pass")
	}
}

// qdReader keeps depth reads in flight on one queue until total were issued.
type qdReader struct {
	q                   *block.Queue
	bufs                [][]byte
	remaining, inflight int
	errs                int
}

func (b *qdReader) RequestDone(r *block.Request, err error) {
	if err != nil {
		b.errs++
	}
	b.inflight--
	if b.remaining > 0 {
		b.remaining--
		b.inflight++
		b.q.Read(b.bufs[r.Tag], int64(r.Tag)*4096, b, r.Tag)
	}
}

// TestDrainAndRequestPathZeroAllocs: an idle drained section, a drain-all
// over a 16-node chain, and the steady-state read path through a front end
// and a node at queue depth 32 allocate nothing.
func TestDrainAndRequestPathZeroAllocs(t *testing.T) {
	skipAllocBudget(t)
	e := blocktest.NewEnv(t, 0)
	prev := e.Open(&blocktest.Null{Size: 1 << 20}, block.Options{Name: "null"})
	for i := 0; i < 15; i++ {
		n := e.Open(&blocktest.Forward{}, block.Options{})
		e.Attach(n, prev, "file", block.RoleFile)
		prev.Unref()
		prev = n
	}
	top := prev
	fe := e.FrontEnd("fe", top, block.FrontEndOptions{})
	top.Unref()

	var drain, drainAll float64
	e.OnMain(func() {
		top.DrainedBegin() // warm up
		top.DrainedEnd()
		drain = testing.AllocsPerRun(100, func() {
			top.DrainedBegin()
			top.DrainedEnd()
		})
		e.G.DrainAllBegin()
		e.G.DrainAllEnd()
		drainAll = testing.AllocsPerRun(100, func() {
			e.G.DrainAllBegin()
			e.G.DrainAllEnd()
		})
	})
	if drain != 0 {
		t.Errorf("DrainedBegin+DrainedEnd on an idle node: %.1f allocations, want 0", drain)
	}
	if drainAll != 0 {
		t.Errorf("DrainAllBegin+DrainAllEnd over 16 nodes: %.1f allocations, want 0", drainAll)
	}

	const depth, total = 32, 20000
	b := &qdReader{q: fe.Queue(e.Main)}
	for i := 0; i < depth; i++ {
		b.bufs = append(b.bufs, make([]byte, 4096))
	}
	run := func() {
		b.remaining = total
		for i := 0; i < depth; i++ {
			b.remaining--
			b.inflight++
			b.q.Read(b.bufs[i], int64(i)*4096, b, uint64(i))
		}
		e.Main.WaitWhile(func() bool { return b.inflight > 0 })
	}
	var perRun float64
	e.OnMain(func() {
		run() // warm up: the pool grows to depth requests
		perRun = testing.AllocsPerRun(5, run)
	})
	if b.errs != 0 {
		t.Fatalf("%d read errors", b.errs)
	}
	// The closure passed to WaitWhile is the only allocation a run may
	// make; 20000 requests through 16 nodes must add nothing.
	if perRun > 2 {
		t.Errorf("%.0f allocations for %d reads through 16 nodes: the request path allocates", perRun, total)
	}
}

// TestPaddedRequestZeroAllocs: reads and writes that are not aligned to
// the node's 4096-byte alignment are padded through a bounce buffer taken
// from the Context's arena, so the padded path (read, and a write's
// read-modify-write) allocates nothing once the request pool is warm, and
// the arena gets every block back.
func TestPaddedRequestZeroAllocs(t *testing.T) {
	skipAllocBudget(t)
	e := blocktest.NewEnvOpts(t, blocktest.EnvOptions{ArenaSize: 1 << 20})
	mem := blocktest.NewMem(1 << 20)
	n := e.Open(mem, block.Options{Name: "mem", Align: 4096})
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{})
	n.Unref()

	const depth, total = 8, 2000
	b := &paddedIO{q: fe.Queue(e.Main)}
	for i := 0; i < depth; i++ {
		b.bufs = append(b.bufs, make([]byte, 512))
	}
	run := func() {
		b.remaining = total
		for i := 0; i < depth; i++ {
			b.remaining--
			b.inflight++
			b.issue(uint64(i))
		}
		e.Main.WaitWhile(func() bool { return b.inflight > 0 })
	}
	var perRun float64
	var used int
	e.OnMain(func() {
		run()
		perRun = testing.AllocsPerRun(5, run)
		used = e.Main.Arena().Used()
	})
	if b.errs != 0 {
		t.Fatalf("%d I/O errors", b.errs)
	}
	if perRun > 2 {
		t.Errorf("%.0f allocations for %d padded requests: the padded path allocates", perRun, total)
	}
	if used != 0 {
		t.Errorf("arena holds %d bytes after every request completed: a bounce buffer was not returned", used)
	}
}

// paddedIO alternates unaligned reads and writes (512 bytes at offset
// 4096·k+512) at a fixed queue depth.
type paddedIO struct {
	q                   *block.Queue
	bufs                [][]byte
	remaining, inflight int
	n                   uint64
	errs                int
}

func (b *paddedIO) issue(tag uint64) {
	b.n++
	off := int64(b.n%64)*4096 + 512
	if b.n%2 == 0 {
		b.q.Write(b.bufs[tag], off, 0, b, tag)
	} else {
		b.q.Read(b.bufs[tag], off, b, tag)
	}
}

func (b *paddedIO) RequestDone(r *block.Request, err error) {
	if err != nil {
		b.errs++
	}
	b.inflight--
	if b.remaining > 0 {
		b.remaining--
		b.inflight++
		b.issue(r.Tag)
	}
}
