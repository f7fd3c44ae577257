package block_test

import (
	"testing"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

func wantQ(t *testing.T, what string, pairs ...any) {
	t.Helper()
	for i := 0; i < len(pairs); i += 2 {
		n := pairs[i].(*block.Node)
		if got, want := n.Quiesce(), pairs[i+1].(int); got != want {
			t.Fatalf("%s: %s.quiesce = %d, want %d", what, n.Name(), got, want)
		}
	}
}

func wantRefs(t *testing.T, what string, pairs ...any) {
	t.Helper()
	for i := 0; i < len(pairs); i += 2 {
		n := pairs[i].(*block.Node)
		if got, want := n.Refs(), pairs[i+1].(int); got != want {
			t.Fatalf("%s: %s refs = %d, want %d", what, n.Name(), got, want)
		}
	}
}

// TestT10GraphChangeDrainAll: nodes created during drain-all are born
// drained; deleting a drained node during drain-all leaves drain-all end
// balanced.
func TestT10GraphChangeDrainAll(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	da := blocktest.NewDriver(64 << 10)
	a := e.Open(da, block.Options{Name: "a"})
	fa := e.FrontEnd("fa", a, block.FrontEndOptions{})

	e.G.DrainAllBegin()
	wantQ(t, "a in drain-all", a, 1)
	if da.DrainCount.Load() != 1 {
		t.Fatalf("a drainCount %d, want 1", da.DrainCount.Load())
	}

	db := blocktest.NewDriver(64 << 10)
	b := e.Open(db, block.Options{Name: "b"})
	fb := e.FrontEnd("fb", b, block.FrontEndOptions{})
	wantQ(t, "b born", b, 1, a, 1)
	if db.DrainCount.Load() != 1 || da.DrainCount.Load() != 1 {
		t.Fatalf("drainCount a=%d b=%d, want 1/1", da.DrainCount.Load(), db.DrainCount.Load())
	}
	if fb.Quiesce() != 1 {
		t.Fatalf("fb quiesce %d, want 1", fb.Quiesce())
	}

	fa.Close() // a still referenced by us
	wantQ(t, "after dropping fa", a, 1)
	a.Unref() // deleted inside the section; its Close asserts D14
	if !da.Closed.Load() {
		t.Fatal("a was not closed")
	}
	wantQ(t, "b after a's deletion", b, 1)

	e.G.DrainAllEnd()
	wantQ(t, "after end", b, 0)
	if db.DrainCount.Load() != 0 || fb.Quiesce() != 0 || e.G.DrainAllCount() != 0 {
		t.Fatalf("after end: b drainCount %d fb quiesce %d drainAll %d", db.DrainCount.Load(), fb.Quiesce(), e.G.DrainAllCount())
	}
	if len(e.G.Nodes()) != 1 {
		t.Fatalf("registry holds %d nodes, want 1", len(e.G.Nodes()))
	}
	fb.Close()
}

// testIOThread is T11, T12 and T37: a read submitted on IOThread A whose
// completion hops through IOThread B, plus a BH on A that runs a
// synchronous flush of N (a nested wait on A) while holding N's in-flight
// count; the drain from the main Context must finish both.
func testIOThread(t *testing.T, k drainKind, fromCo bool) {
	e := blocktest.NewEnv(t, 2)
	ioA, ioB := e.IO[0], e.IO[1]
	d := blocktest.NewDriver(64 << 10)
	d.ReadHop = ioB
	n := e.Open(d, block.Options{Name: "n"})
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{DisableQueuing: true, AllowContextChange: true})
	n.Unref()
	if err := fe.SetContext(ioA); err != nil {
		t.Fatal(err)
	}
	if n.Context() != ioA {
		t.Fatal("node did not follow its front end to IOThread A")
	}
	q := fe.Queue(ioA)
	res := blocktest.NewResult()
	e.On(ioA, func() { q.Read(make([]byte, 512), 0, res, 0) })

	if !fromCo {
		// Pin a BH on A inside the drain: it flushes N synchronously (a
		// nested wait on A's own loop), then drops the count it holds.
		var flushErr error
		n.IncInFlight()
		ioA.Schedule(func() {
			flushErr = n.Flush()
			n.DecInFlight()
		})
		begin(e.G, k, n, nil)
		if got := n.InFlight(); got != 0 {
			t.Fatalf("in-flight %d when drained begin returned", got)
		}
		res.Wait(e)
		if res.Err != nil || flushErr != nil {
			t.Fatalf("read %v, flush %v", res.Err, flushErr)
		}
		end(e.G, k, n, nil)
	} else {
		// The drain comes from a coroutine on A: it is handed over to the
		// main Context, and the coroutine resumes afterwards.
		var inside int
		var finished bool
		e.Co(ioA, func(co *aio.Co) {
			begin(e.G, k, n, co)
			inside = n.Quiesce()
			finished = res.Finished()
			end(e.G, k, n, co)
		})
		if !finished || res.Err != nil {
			t.Fatalf("coroutine drain returned before the read completed (finished %v err %v)", finished, res.Err)
		}
		if inside < 1 {
			t.Fatalf("quiesce %d inside the coroutine's section", inside)
		}
	}
	wantQ(t, "after", n, 0)
	if err := fe.SetContext(e.Main); err != nil || n.Context() != e.Main {
		t.Fatalf("move back: %v (node on %s)", err, n.Context().Name())
	}
	fe.Close()
}

func TestT11IOThreadDrainAll(t *testing.T)     { testIOThread(t, drainAll, false) }
func TestT12IOThreadDrain(t *testing.T)        { testIOThread(t, drainNode, false) }
func TestT12IOThreadDrainFromCo(t *testing.T)  { testIOThread(t, drainNode, true) }
func TestT37IOThreadDrainSubtree(t *testing.T) { testIOThread(t, drainSubtree, false) }
func TestT37IOThreadDrainSubtreeFromCo(t *testing.T) {
	testIOThread(t, drainSubtree, true)
}

// topGraph is the graph of T21–T23/T42: F → top (Forward, to waitChild)
// with children null1, waitChild (test driver), null2.
type topGraph struct {
	fe                    *block.FrontEnd
	top, null1, wc, null2 *block.Node
	wcd                   *blocktest.Driver
}

func newTopGraph(t *testing.T, e *blocktest.Env) *topGraph {
	x := &topGraph{wcd: blocktest.NewDriver(64 << 10)}
	x.top = e.Open(&blocktest.Forward{ChildName: "wait", Size: 64 << 10}, block.Options{Name: "top"})
	x.null1 = e.Open(&blocktest.Null{Size: 64 << 10}, block.Options{Name: "null1"})
	x.wc = e.Open(x.wcd, block.Options{Name: "waitChild"})
	x.null2 = e.Open(&blocktest.Null{Size: 64 << 10}, block.Options{Name: "null2"})
	e.Attach(x.top, x.null1, "null1", block.RoleFiltered)
	e.Attach(x.top, x.wc, "wait", block.RoleFiltered)
	e.Attach(x.top, x.null2, "null2", block.RoleFiltered)
	x.null1.Unref()
	x.wc.Unref()
	x.null2.Unref()
	x.fe = e.FrontEnd("fe", x.top, block.FrontEndOptions{})
	x.top.Unref()
	return x
}

// coRead reads 64 KiB directly from n (an internal request) in coroutine co.
func coRead(co *aio.Co, g *block.Graph, n *block.Node) error {
	res := &coResult{co: co}
	r := g.Pool(co.Context()).Get()
	r.Op = block.OpRead
	r.SetBuf(make([]byte, 64<<10))
	n.Submit(r, res)
	for !res.done {
		co.Yield()
	}
	return res.err
}

type coResult struct {
	co   *aio.Co
	done bool
	err  error
}

func (c *coResult) RequestDone(_ *block.Request, err error) {
	c.done, c.err = true, err
	c.co.Wake()
}

// testDeletion is T21, T22, T23 and T42: a coroutine's read from waitChild
// completes while a drain polls, and the coroutine then deletes top (T21)
// or detaches all its children (T22/T23/T42) — inside the drain's wait.
func testDeletion(t *testing.T, k drainKind, detach bool) {
	e := blocktest.NewEnv(t, 0)
	x := newTopGraph(t, e)
	// A long read, so the drain surely begins while it is in flight.
	x.wcd.ReadDelay = 20 * time.Millisecond
	drainNodeOf := x.wc
	if k == drainSubtree {
		drainNodeOf = x.top
	}
	// The caller keeps the drained node alive across the drain (drain.md
	// §1.10 rule 4): take the reference before anything can delete it.
	e.OnMain(drainNodeOf.Ref)
	coDone := make(chan error, 1)
	e.Main.Schedule(func() {
		e.Main.Go(func(co *aio.Co) {
			err := coRead(co, e.G, x.wc)
			// Graph changes from a coroutine go through the main Context.
			co.RunOn(e.Main, func() {
				if detach {
					for _, c := range x.top.Children() {
						e.G.Detach(c)
					}
					return
				}
				x.fe.Close() // deletes top, detaching waitChild
			})
			coDone <- err
		})
	})
	var inflightAtBegin int64
	e.OnMain(func() {
		// Let the coroutine's read start, then drain while it sleeps.
		for !x.wcd.HasRead.Load() {
			e.Main.Poll(false)
		}
		inflightAtBegin = x.wc.InFlight()
		begin(e.G, k, drainNodeOf, nil)
		end(e.G, k, drainNodeOf, nil)
		drainNodeOf.Unref()
	})
	if inflightAtBegin != 1 {
		t.Fatalf("waitChild in-flight %d when the drain began, want 1 (the read)", inflightAtBegin)
	}
	select {
	case err := <-coDone:
		if err != nil {
			t.Fatalf("coroutine read: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("coroutine did not finish")
	}
	if detach {
		if n := len(x.top.Children()); n != 0 {
			t.Fatalf("top still has %d children", n)
		}
		wantQ(t, "after", x.top, 0)
		x.fe.Close()
	}
	if !x.wcd.Closed.Load() {
		t.Fatal("waitChild not deleted with its last parent")
	}
	if n := len(e.G.Nodes()); n != 0 {
		t.Fatalf("%d nodes left", n)
	}
}

func TestT21DeletionDrain(t *testing.T)      { testDeletion(t, drainNode, false) }
func TestT22DetachDrainAll(t *testing.T)     { testDeletion(t, drainAll, true) }
func TestT23DetachDrain(t *testing.T)        { testDeletion(t, drainNode, true) }
func TestT42DetachDrainSubtree(t *testing.T) { testDeletion(t, drainSubtree, true) }

// hookClass wraps NodeClass with a DrainedBegin hook (T25).
type hookClass struct {
	block.ChildClass
	onBegin func(c *block.Child)
}

func (h *hookClass) DrainedBegin(c *block.Child) {
	if h.onBegin != nil {
		f := h.onBegin
		h.onBegin = nil // first invocation only
		f(c)
	}
	h.ChildClass.DrainedBegin(c)
}

// testDetachIndirect is T24 (byParentCb) and T25: a graph change made by a
// BH that a completion (T24) or a quiesce callback (T25) scheduled, while
// holding B's in-flight count, runs inside the drains' polling phase.
func testDetachIndirect(t *testing.T, byParentCb bool) {
	e := blocktest.NewEnv(t, 0)
	dpa := blocktest.NewDriver(64 << 10)
	dpa.SleepInDrainBegin = !byParentCb
	pa := e.Open(dpa, block.Options{Name: "PA"})
	pb := e.Open(&blocktest.Forward{Size: 64 << 10}, block.Options{Name: "PB"})
	a := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "A"})
	b := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "B"})
	c := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "C"})

	var edgePBB *block.Child
	var edgePBC *block.Child
	detachBH := func() {
		b.DecInFlight()
		e.G.Detach(edgePBB)
		var err error
		edgePBC, err = e.G.Attach(pb, c, block.ChildSpec{Name: "PB-C", Role: block.RoleBacking})
		if err != nil {
			t.Errorf("attach PB-C: %v", err)
		}
	}
	spec := block.ChildSpec{Name: "PA-A", Role: block.RoleBacking}
	if !byParentCb {
		spec.Class = &hookClass{ChildClass: block.NodeClass, onBegin: func(*block.Child) {
			b.IncInFlight()
			e.Main.Schedule(detachBH)
		}}
	}
	if _, err := e.G.Attach(pa, a, spec); err != nil {
		t.Fatal(err)
	}
	edgePBB = e.Attach(pb, b, "PB-B", block.RoleFiltered)
	e.Attach(pb, a, "PB-A", block.RoleBacking)
	fe := e.FrontEnd("fe", pa, block.FrontEndOptions{})
	pa.Unref()
	wantRefs(t, "before", pa, 1, pb, 1, a, 3, b, 2, c, 1)

	q := fe.Queue(e.Main)
	cb := &funcDone{fn: func(err error) {
		if byParentCb {
			b.IncInFlight()
			e.Main.Schedule(detachBH)
		}
	}}
	e.OnMain(func() {
		q.Read(make([]byte, 512), 0, cb, 0)
		pb.DrainedBegin()
		a.DrainedBegin()
		b.DrainedBegin()
		c.DrainedBegin()
	})
	if edgePBC == nil || edgePBC.Node() != c {
		t.Fatal("PB-C was not attached during the drains")
	}
	wantRefs(t, "after begins", pa, 1, pb, 1, a, 3, b, 1, c, 2)
	ch := pb.Children()
	if len(ch) != 2 || ch[0] != edgePBC || ch[1].Name() != "PB-A" {
		t.Fatalf("PB's children %v, want [PB-C PB-A]", ch)
	}
	wantQ(t, "after begins", pa, 1, pb, 3, a, 1, b, 1, c, 1)

	pb.DrainedEnd()
	a.DrainedEnd()
	b.DrainedEnd()
	c.DrainedEnd()
	wantQ(t, "after ends", pa, 0, pb, 0, a, 0, b, 0, c, 0)
	fe.Close()
	pb.Unref()
	wantRefs(t, "after unrefs", a, 1, b, 1, c, 1)
	a.Unref()
	b.Unref()
	c.Unref()
}

type funcDone struct{ fn func(err error) }

func (f *funcDone) RequestDone(_ *block.Request, err error) { f.fn(err) }

func TestT24DetachParentCb(t *testing.T) { testDetachIndirect(t, true) }
func TestT25DetachDriverCb(t *testing.T) { testDetachIndirect(t, false) }

// TestT26AttachDrain: a node that becomes the parent of a drained node is
// quiesced (D13), also when it then replaces the drained node under F.
func TestT26AttachDrain(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	dbase, dover := blocktest.NewDriver(64<<10), blocktest.NewDriver(64<<10)
	base := e.Open(dbase, block.Options{Name: "base"})
	fe := e.FrontEnd("fe", base, block.FrontEndOptions{})
	base.Unref()
	base.DrainedBegin()
	wantQ(t, "base drained", base, 1)
	if dbase.DrainCount.Load() != 1 || base.InFlight() != 0 {
		t.Fatal("base not drained")
	}
	overlay := e.Open(dover, block.Options{Name: "overlay"})
	e.Attach(overlay, base, "backing", block.RoleBacking)
	if err := e.G.ReplaceNode(base, overlay); err != nil {
		t.Fatal(err)
	}
	overlay.Unref()
	if fe.Root() != overlay {
		t.Fatal("overlay did not replace base under the front end")
	}
	if base.InFlight() != 0 || overlay.InFlight() != 0 {
		t.Fatal("in flight after append")
	}
	wantQ(t, "after append", base, 1, overlay, 1)
	if dbase.DrainCount.Load() != 1 || dover.DrainCount.Load() != 1 {
		t.Fatalf("drainCount base %d overlay %d, want 1/1", dbase.DrainCount.Load(), dover.DrainCount.Load())
	}
	base.DrainedEnd()
	wantQ(t, "after end", base, 0, overlay, 0)
	if dbase.DrainCount.Load() != 0 || dover.DrainCount.Load() != 0 || fe.Quiesce() != 0 {
		t.Fatal("drain counts not back to 0")
	}
	fe.Close()
}

// TestT27SetAioContext: the drain owner may move a drained node between
// Contexts, twice in one section; begin and end under different Contexts
// stay balanced.
func TestT27SetAioContext(t *testing.T) {
	e := blocktest.NewEnv(t, 2)
	d := blocktest.NewDriver(64 << 10)
	n := e.Open(d, block.Options{Name: "n"})
	n.DrainedBegin()
	if err := n.SetContext(e.IO[0]); err != nil {
		t.Fatal(err)
	}
	wantQ(t, "moved to A inside the section", n, 1)
	n.DrainedEnd()
	wantQ(t, "ended under A", n, 0)
	n.DrainedBegin()
	if err := n.SetContext(e.IO[1]); err != nil {
		t.Fatal(err)
	}
	if err := n.SetContext(e.Main); err != nil {
		t.Fatal(err)
	}
	wantQ(t, "moved twice", n, 1)
	n.DrainedEnd()
	wantQ(t, "after", n, 0)
	if n.Context() != e.Main || d.DrainCount.Load() != 0 {
		t.Fatalf("node on %s, drainCount %d", n.Context().Name(), d.DrainCount.Load())
	}
	n.Unref()
}

// TestT35Multiparent: two front-end nodes A and B share the backing node K.
// Our subtree drain quiesces each node of the subtree once and propagates
// up through edges (current semantics), so K's 0→1 also quiesces B.
// Legacy counted A 1, B 1, K 1 then all 2; ours: subtree(A) → A 2 (own +
// K's edge), B 1, K 1; subtree(B) → A 2, B 2, K 2; end(B) → A 2, B 1, K 1;
// end(A) → 0. Driver hooks run once per node while any count is > 0.
func TestT35Multiparent(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	da, db, dk := blocktest.NewDriver(64<<10), blocktest.NewDriver(64<<10), blocktest.NewDriver(64<<10)
	a := e.Open(da, block.Options{Name: "A"})
	b := e.Open(db, block.Options{Name: "B"})
	k := e.Open(dk, block.Options{Name: "K"})
	e.Attach(a, k, "backing", block.RoleBacking)
	e.Attach(b, k, "backing", block.RoleBacking)
	k.Unref()
	fa := e.FrontEnd("fa", a, block.FrontEndOptions{})
	fb := e.FrontEnd("fb", b, block.FrontEndOptions{})
	a.Unref()
	b.Unref()
	hooks := func(what string, want int32) {
		t.Helper()
		for _, d := range []*blocktest.Driver{da, db, dk} {
			if d.DrainCount.Load() != want {
				t.Fatalf("%s: drainCount %d, want %d", what, d.DrainCount.Load(), want)
			}
		}
	}
	a.SubtreeDrainedBegin()
	wantQ(t, "subtree(A)", a, 2, b, 1, k, 1)
	hooks("subtree(A)", 1)
	b.SubtreeDrainedBegin()
	wantQ(t, "subtree(B)", a, 2, b, 2, k, 2)
	hooks("subtree(B)", 1)
	b.SubtreeDrainedEnd()
	wantQ(t, "end(B)", a, 2, b, 1, k, 1)
	a.SubtreeDrainedEnd()
	wantQ(t, "end(A)", a, 0, b, 0, k, 0)
	hooks("end(A)", 0)
	fa.Close()
	fb.Close()
}

// TestT36GraphChangeDrainSubtree: attaching and detaching a child under
// subtree-drained parents adjusts the counts exactly (coverage). Derivation
// (ours): 3× subtree(A) → A 3 own + 1 via K's edge = 4, K 3; 2× subtree(B)
// → B 2. Attach K under B: K gains B's 2 subtree drains → 5, B +1 through
// the new edge → 3. Detach → K 3, B 2; re-attach → K 5, B 3. Two ends on B
// → B 1 (only K's edge), K 3; three ends on A → all 0. Legacy had A = B =
// K = 5 at the peak because callbacks ran per nesting level.
func TestT36GraphChangeDrainSubtree(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	a := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "A"})
	b := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "B"})
	k := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "K"})
	e.Attach(a, k, "backing", block.RoleBacking)
	k.Unref()
	fa := e.FrontEnd("fa", a, block.FrontEndOptions{})
	fb := e.FrontEnd("fb", b, block.FrontEndOptions{})
	a.Unref()
	b.Unref()
	for i := 0; i < 3; i++ {
		a.SubtreeDrainedBegin()
	}
	for i := 0; i < 2; i++ {
		b.SubtreeDrainedBegin()
	}
	wantQ(t, "drained", a, 4, b, 2, k, 3)
	kb := e.Attach(b, k, "backing", block.RoleBacking)
	wantQ(t, "attached", a, 4, b, 3, k, 5)
	e.G.Detach(kb)
	wantQ(t, "detached", a, 4, b, 2, k, 3)
	e.Attach(b, k, "backing", block.RoleBacking)
	wantQ(t, "re-attached", a, 4, b, 3, k, 5)
	for i := 0; i < 2; i++ {
		b.SubtreeDrainedEnd()
	}
	wantQ(t, "B ended", a, 4, b, 1, k, 3)
	for i := 0; i < 3; i++ {
		a.SubtreeDrainedEnd()
	}
	wantQ(t, "all ended", a, 0, b, 0, k, 0)
	fa.Close()
	fb.Close()
}

// TestInsertAboveKeepsLoopingEdges: a filter put above a source whose
// other child is an overlay of that source (a fleecing backup's
// copy-before-write filter and its scratch target) takes the source's
// other parents, while the overlay's backing edge stays on the source;
// ReplaceNode refuses the same move as a cycle.
func TestInsertAboveKeepsLoopingEdges(t *testing.T) {
	e := blocktest.NewEnv(t, 1)
	src := e.Open(blocktest.NewMem(1<<20), block.Options{Name: "src"})
	user := e.Open(&blocktest.Forward{}, block.Options{Name: "user"})
	uc := e.Attach(user, src, "file", block.RoleFile|block.RolePrimary)
	ov := e.Open(&blocktest.Forward{}, block.Options{Name: "scratch"})
	bc := e.Attach(ov, src, "backing", block.RoleBacking)
	f := e.Open(&blocktest.Forward{}, block.Options{Name: "filter"})
	e.Attach(f, src, "file", block.RoleFiltered|block.RolePrimary)
	e.Attach(f, ov, "target", 0)
	if err := e.G.ReplaceNode(src, f); err == nil {
		t.Fatal("ReplaceNode made a loop through the scratch's backing edge")
	}
	if err := e.G.InsertAbove(src, f); err != nil {
		t.Fatal(err)
	}
	e.G.Control(func() {
		if uc.Node() != f {
			t.Errorf("the user's edge points at %s, want the filter", uc.Node().Name())
		}
		if bc.Node() != src {
			t.Errorf("the scratch's backing edge points at %s, want the source", bc.Node().Name())
		}
	})
}
