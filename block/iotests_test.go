package block_test

import (
	"sync/atomic"
	"testing"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

// attachWorkDriver models QEMU iotest 094's NBD client: its attach hook
// schedules work on the new Context without holding the node's in-flight
// count (like aio_co_schedule of the connection coroutine). The next move
// must not detach while that work is still pending on the old Context.
type attachWorkDriver struct {
	blocktest.Mem
	scheduled, ran atomic.Int64
	wrongCtx       atomic.Int64
	detachEarly    atomic.Int64
}

func (d *attachWorkDriver) AttachContext(n *block.Node, ctx *aio.Context) {
	d.scheduled.Add(1)
	ctx.Schedule(func() {
		if !ctx.InContext() || n.Context() != ctx {
			d.wrongCtx.Add(1)
		}
		d.ran.Add(1)
	})
}

func (d *attachWorkDriver) DetachContext(n *block.Node) {
	if d.ran.Load() != d.scheduled.Load() {
		d.detachEarly.Add(1)
	}
}

// TestQ1AttachWorkRunsBeforeDetach (iotest 094 analogue, seed 004): move a
// node between Contexts repeatedly while I/O is in flight; the work its
// attach hook scheduled always ran on the right Context before the next
// detach, nothing hangs and no request is lost.
func TestQ1AttachWorkRunsBeforeDetach(t *testing.T) {
	e := blocktest.NewEnv(t, 2)
	d := &attachWorkDriver{Mem: *blocktest.NewMem(1 << 20)}
	n := e.Open(d, block.Options{Name: "nbd"})
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{AllowContextChange: true})
	n.Unref()
	var stop atomic.Bool
	g := &gen{q: fe.Queue(e.IO[0]), rng: newRand(1), size: 1 << 20, stop: &stop}
	for k := range g.slots {
		g.slots[k].buf = make([]byte, 512)
	}
	e.IO[0].Schedule(func() {
		for k := range g.slots {
			g.submit(k)
		}
	})
	ctxs := []*aio.Context{e.IO[0], e.IO[1], e.Main}
	moves := 200
	if testing.Short() {
		moves = 50
	}
	for i := 0; i < moves; i++ {
		if err := fe.SetContext(ctxs[i%3]); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	e.WaitFor("requests", func() bool { return g.outstanding.Load() == 0 })
	e.WaitFor("attach work", func() bool { return d.ran.Load() == d.scheduled.Load() })
	if d.detachEarly.Load() != 0 || d.wrongCtx.Load() != 0 {
		t.Fatalf("detached with attach work pending %d times; work on the wrong Context %d times", d.detachEarly.Load(), d.wrongCtx.Load())
	}
	if d.scheduled.Load() != int64(moves) {
		t.Fatalf("attach hook ran %d times for %d moves", d.scheduled.Load(), moves)
	}
	if g.dups.Load() != 0 || g.errs.Load() != 0 || g.submitted.Load() != g.completed.Load() || g.completed.Load() == 0 {
		t.Fatalf("requests: submitted %d completed %d dups %d errs %d", g.submitted.Load(), g.completed.Load(), g.dups.Load(), g.errs.Load())
	}
	if err := fe.SetContext(e.Main); err != nil {
		t.Fatal(err)
	}
	fe.Close()
}

// TestQ2TransactionTwoNodesOneIOThread (iotest 202 analogue, W5): one
// transaction takes external snapshots of two nodes that live in the same
// IOThread, each action opening a drained section that stays open until
// the transaction's clean-up. There is no loop-wide lock, so nested waits
// cannot hang; I/O keeps arriving from the IOThread throughout.
func TestQ2TransactionTwoNodesOneIOThread(t *testing.T) {
	e := blocktest.NewEnv(t, 1)
	io := e.IO[0]
	var fes []*block.FrontEnd
	var nodes []*block.Node
	var gens []*gen
	var stop atomic.Bool
	for i := 0; i < 2; i++ {
		n := e.Open(blocktest.NewMem(1<<20), block.Options{})
		fe := e.FrontEnd("", n, block.FrontEndOptions{AllowContextChange: true, Context: io})
		if n.Context() != io {
			t.Fatal("node not in the IOThread")
		}
		n.Unref()
		fes, nodes = append(fes, fe), append(nodes, n)
		g := &gen{q: fe.Queue(io), rng: newRand(int64(i)), size: 1 << 20, stop: &stop}
		for k := range g.slots {
			g.slots[k].buf = make([]byte, 512)
		}
		gens = append(gens, g)
		io.Schedule(func() {
			for k := range g.slots {
				g.submit(k)
			}
		})
	}
	var overlays []*block.Node
	e.OnMain(func() {
		// prepare: drain each node (the section stays open), create the
		// overlay, attach the node as its backing, put it in the node's place
		for _, n := range nodes {
			n.DrainedBegin()
			ov, err := e.G.Open(blocktest.NewMem(1<<20), block.Options{Context: n.Context()}) // the snapshot joins its node
			if err != nil {
				t.Error(err)
				return
			}
			if _, err := e.G.Attach(ov, n, block.ChildSpec{Name: "backing", Role: block.RoleBacking}); err != nil {
				t.Error(err)
				return
			}
			if err := e.G.ReplaceNode(n, ov); err != nil {
				t.Error(err)
			}
			ov.Unref()
			overlays = append(overlays, ov)
		}
		// clean: end the drained sections
		for _, n := range nodes {
			n.DrainedEnd()
		}
	})
	stop.Store(true)
	for _, g := range gens {
		e.WaitFor("requests", func() bool { return g.outstanding.Load() == 0 })
		if g.dups.Load() != 0 || g.errs.Load() != 0 || g.submitted.Load() != g.completed.Load() {
			t.Fatalf("requests: submitted %d completed %d dups %d errs %d", g.submitted.Load(), g.completed.Load(), g.dups.Load(), g.errs.Load())
		}
	}
	for i, fe := range fes {
		if fe.Root() != overlays[i] || overlays[i].Context() != io || fe.Quiesce() != 0 || overlays[i].Quiesce() != 0 {
			t.Fatalf("snapshot %d: root %v on %s, quiesce fe %d overlay %d", i, fe.Root().Name(), overlays[i].Context().Name(), fe.Quiesce(), overlays[i].Quiesce())
		}
	}
	for _, fe := range fes {
		if err := fe.SetContext(e.Main); err != nil {
			t.Fatal(err)
		}
		fe.Close()
	}
}
