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
