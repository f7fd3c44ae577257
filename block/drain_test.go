package block_test

import (
	"testing"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

// drainKind selects one of the three drain types.
type drainKind int

const (
	drainAll drainKind = iota
	drainNode
	drainSubtree
)

func (k drainKind) String() string {
	return [...]string{"drain_all", "drain", "drain_subtree"}[k]
}

// begin/end run a drain of kind k on n from a plain goroutine (or, with
// co != nil, from that coroutine via the hand-over).
func begin(g *block.Graph, k drainKind, n *block.Node, co *aio.Co) {
	switch {
	case k == drainAll && co == nil:
		g.DrainAllBegin()
	case k == drainAll:
		g.DrainAllBeginCo(co)
	case k == drainNode && co == nil:
		n.DrainedBegin()
	case k == drainNode:
		n.DrainedBeginCo(co)
	case co == nil:
		n.SubtreeDrainedBegin()
	default:
		n.SubtreeDrainedBeginCo(co)
	}
}

func end(g *block.Graph, k drainKind, n *block.Node, co *aio.Co) {
	switch {
	case k == drainAll && co == nil:
		g.DrainAllEnd()
	case k == drainAll:
		g.DrainAllEndCo(co)
	case k == drainNode && co == nil:
		n.DrainedEnd()
	case k == drainNode:
		n.DrainedEndCo(co)
	case co == nil:
		n.SubtreeDrainedEnd()
	default:
		n.SubtreeDrainedEndCo(co)
	}
}

// g1 is the standard graph G1 of drain.md §2.1: front end F → node N
// ("test-node") —backing→ node B ("backing"), both with the test driver.
type g1 struct {
	e      *blocktest.Env
	fe     *block.FrontEnd
	n, b   *block.Node
	dn, db *blocktest.Driver
}

func newG1(t *testing.T, e *blocktest.Env) *g1 {
	t.Helper()
	x := &g1{e: e, dn: blocktest.NewDriver(64 << 10), db: blocktest.NewDriver(64 << 10)}
	x.n = e.Open(x.dn, block.Options{Name: "test-node"})
	x.b = e.Open(x.db, block.Options{Name: "backing"})
	e.Attach(x.n, x.b, "backing", block.RoleBacking)
	x.b.Unref() // the edge holds it
	x.fe = e.FrontEnd("fe", x.n, block.FrontEndOptions{})
	x.n.Unref() // the front end holds it
	t.Cleanup(func() { x.fe.Close() })
	return x
}

// counts checks drain callback counts of N and B.
func (x *g1) drainCounts(t *testing.T, what string, n, b int32) {
	t.Helper()
	if got, gotB := x.dn.DrainCount.Load(), x.db.DrainCount.Load(); got != n || gotB != b {
		t.Fatalf("%s: drainCount N=%d B=%d, want %d/%d", what, got, gotB, n, b)
	}
}

func (x *g1) quiesce(t *testing.T, what string, n, b int) {
	t.Helper()
	if got, gotB := x.n.Quiesce(), x.b.Quiesce(); got != n || gotB != b {
		t.Fatalf("%s: quiesce N=%d B=%d, want %d/%d", what, got, gotB, n, b)
	}
}

// expectedB is B's drain count inside a section of kind k on N: drain-all
// and subtree drains cover B, a single-node drain does not (D5).
func expectedB(k drainKind) int32 {
	if k == drainNode {
		return 0
	}
	return 1
}

// testDriverCb is T1–T4 and T31/T32: the drain hooks run exactly once per
// section, and drained begin returns only after an in-flight read through
// the front end (sleeping 100µs on a timer) has completed.
func testDriverCb(t *testing.T, k drainKind, inCo bool) {
	e := blocktest.NewEnv(t, 0)
	x := newG1(t, e)
	q := x.fe.Queue(e.Main)
	body := func(co *aio.Co) {
		// (a) without I/O
		x.drainCounts(t, "before", 0, 0)
		begin(e.G, k, x.n, co)
		x.drainCounts(t, "inside", 1, expectedB(k))
		end(e.G, k, x.n, co)
		x.drainCounts(t, "after", 0, 0)

		// (b) with a read in flight
		res := blocktest.NewResult()
		var ranEarly bool
		submit := func() {
			q.Read(nil, 0, res, 0)
			ranEarly = res.Finished()
		}
		if co != nil {
			submit()
		} else {
			e.OnMain(submit)
		}
		if ranEarly {
			t.Fatal("completion ran inside its own submission")
		}
		x.drainCounts(t, "before (b)", 0, 0)
		begin(e.G, k, x.n, co)
		if !res.Finished() || res.Err != nil || res.N != 1 {
			t.Fatalf("drained begin returned before the read completed: finished=%v err=%v n=%d", res.Finished(), res.Err, res.N)
		}
		x.drainCounts(t, "inside (b)", 1, expectedB(k))
		end(e.G, k, x.n, co)
		x.drainCounts(t, "after (b)", 0, 0)
	}
	if inCo {
		e.Co(e.Main, body)
		return
	}
	body(nil)
}

// With a plain goroutine the read could complete between submission and
// begin; the drain then has nothing to wait for. Run submit and begin in
// one main-Context call so the drain's wait is exercised.
func testDriverCbPinned(t *testing.T, k drainKind) {
	e := blocktest.NewEnv(t, 0)
	x := newG1(t, e)
	q := x.fe.Queue(e.Main)
	x.drainCounts(t, "before", 0, 0)
	begin(e.G, k, x.n, nil)
	x.drainCounts(t, "inside", 1, expectedB(k))
	end(e.G, k, x.n, nil)
	x.drainCounts(t, "after", 0, 0)

	res := blocktest.NewResult()
	var ranEarly, doneAtBegin bool
	var inflight int64
	e.OnMain(func() {
		q.Read(nil, 0, res, 0)
		ranEarly = res.Finished()
		inflight = x.fe.InFlight()
		begin(e.G, k, x.n, nil)
		doneAtBegin = res.Finished()
	})
	if ranEarly || inflight != 1 {
		t.Fatalf("after submit: completed=%v fe in-flight=%d, want false/1", ranEarly, inflight)
	}
	if !doneAtBegin || res.Err != nil || res.N != 1 {
		t.Fatalf("drained begin returned before the read completed (done=%v err=%v n=%d)", doneAtBegin, res.Err, res.N)
	}
	x.drainCounts(t, "inside (b)", 1, expectedB(k))
	end(e.G, k, x.n, nil)
	x.drainCounts(t, "after (b)", 0, 0)
	if !x.dn.HasRead.Load() {
		t.Fatal("the read never reached the driver")
	}
}

func TestT01DriverCbDrainAll(t *testing.T)       { testDriverCbPinned(t, drainAll) }
func TestT02DriverCbDrain(t *testing.T)          { testDriverCbPinned(t, drainNode) }
func TestT03DriverCbCoDrainAll(t *testing.T)     { testDriverCb(t, drainAll, true) }
func TestT04DriverCbCoDrain(t *testing.T)        { testDriverCb(t, drainNode, true) }
func TestT31DriverCbDrainSubtree(t *testing.T)   { testDriverCbPinned(t, drainSubtree) }
func TestT32DriverCbCoDrainSubtree(t *testing.T) { testDriverCb(t, drainSubtree, true) }

// testQuiesce is T5–T8 and T33/T34. Current semantics: drain-all quiesces
// N once itself and once through B's edge (N=2, B=1); a single-node drain
// N=1, B=0. Subtree drain (ours, built from single-node quiesces): both
// nodes quiesced once and N again through B's edge: N=2, B=1.
func testQuiesce(t *testing.T, k drainKind, inCo bool) {
	e := blocktest.NewEnv(t, 0)
	x := newG1(t, e)
	wantN, wantB := map[drainKind]int{drainAll: 2, drainNode: 1, drainSubtree: 2}[k], int(expectedB(k))
	body := func(co *aio.Co) {
		x.quiesce(t, "before", 0, 0)
		begin(e.G, k, x.n, co)
		x.quiesce(t, "inside", wantN, wantB)
		if got := x.fe.Quiesce(); got != 1 {
			t.Fatalf("front end quiesce %d inside, want 1", got)
		}
		end(e.G, k, x.n, co)
		x.quiesce(t, "after", 0, 0)
		if got := x.fe.Quiesce(); got != 0 {
			t.Fatalf("front end quiesce %d after, want 0", got)
		}
	}
	if inCo {
		e.Co(e.Main, body)
		return
	}
	body(nil)
}

func TestT05QuiesceDrainAll(t *testing.T)       { testQuiesce(t, drainAll, false) }
func TestT06QuiesceDrain(t *testing.T)          { testQuiesce(t, drainNode, false) }
func TestT07QuiesceCoDrainAll(t *testing.T)     { testQuiesce(t, drainAll, true) }
func TestT08QuiesceCoDrain(t *testing.T)        { testQuiesce(t, drainNode, true) }
func TestT33QuiesceDrainSubtree(t *testing.T)   { testQuiesce(t, drainSubtree, false) }
func TestT34QuiesceCoDrainSubtree(t *testing.T) { testQuiesce(t, drainSubtree, true) }

// TestT09Nested: every pair of drain kinds nested. N.quiesce = 2 + [any
// drain-all or subtree] (each outer/inner adds one own quiesce, B's edge
// adds one while B is quiesced), B.quiesce = number of sections covering
// B, and the driver hooks ran once per node (D2).
func TestT09Nested(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	x := newG1(t, e)
	kinds := []drainKind{drainAll, drainNode, drainSubtree}
	for _, outer := range kinds {
		for _, inner := range kinds {
			begin(e.G, outer, x.n, nil)
			begin(e.G, inner, x.n, nil)
			coversB := int(expectedB(outer)) + int(expectedB(inner))
			wantN := 2
			if coversB > 0 {
				wantN = 3
			}
			x.quiesce(t, outer.String()+"/"+inner.String(), wantN, coversB)
			wantDB := int32(0)
			if coversB > 0 {
				wantDB = 1
			}
			x.drainCounts(t, outer.String()+"/"+inner.String(), 1, wantDB)
			end(e.G, inner, x.n, nil)
			end(e.G, outer, x.n, nil)
			x.quiesce(t, "after "+outer.String()+"/"+inner.String(), 0, 0)
			x.drainCounts(t, "after "+outer.String()+"/"+inner.String(), 0, 0)
		}
	}
}
