package block_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/internal/invariants"
)

// remoteDriver completes every request from a goroutine of its own (as
// librbd's threads or another Context would): Read hands the request over
// a channel; the worker completes it with CompleteRemote once gate lets
// it through.
type remoteDriver struct {
	block.DriverBase
	reqs chan *block.Request
	gate chan struct{} // nil: complete at once
	sent atomic.Int64
}

func (d *remoteDriver) Length(*block.Node) (int64, error) { return 1 << 20, nil }
func (d *remoteDriver) Read(r *block.Request)             { d.reqs <- r }

func (d *remoteDriver) work() {
	for r := range d.reqs {
		if d.gate != nil {
			<-d.gate
		}
		d.sent.Add(1)
		r.CompleteRemote(nil)
	}
}

// onCtx counts completions and checks each runs on its Context.
type onCtx struct {
	ctx       *aio.Context
	done, bad int
	order     []uint64
}

func (c *onCtx) RequestDone(r *block.Request, err error) {
	c.done++
	if err != nil || !c.ctx.InContext() {
		c.bad++
	}
	if c.order != nil {
		c.order = append(c.order, r.Tag)
	}
}

// TestCompleteRemoteOnOwnContext: requests completed from a foreign
// goroutine complete on their own Context (two Contexts submitting at
// once), in the order they were completed, and a drained section that
// begins while they are held waits until every one has completed.
func TestCompleteRemoteOnOwnContext(t *testing.T) {
	e := blocktest.NewEnv(t, 1)
	d := &remoteDriver{reqs: make(chan *block.Request, 1024), gate: make(chan struct{})}
	go d.work()
	defer close(d.reqs)
	n := e.Open(d, block.Options{Name: "remote"})
	defer n.Unref()
	const k = 100
	cbs := []*onCtx{{ctx: e.Main, order: make([]uint64, 0, k)}, {ctx: e.IO[0], order: make([]uint64, 0, k)}}
	for i, ctx := range []*aio.Context{e.Main, e.IO[0]} {
		cb := cbs[i]
		e.On(ctx, func() {
			p := n.Graph().Pool(ctx)
			for j := range k {
				r := p.Get()
				r.Op, r.Off, r.Tag = block.OpRead, 0, uint64(j)
				r.SetBuf(make([]byte, 512))
				n.Submit(r, cb)
			}
		})
	}
	drained := make(chan struct{})
	go func() { n.DrainedBegin(); close(drained) }()
	select {
	case <-drained:
		t.Fatal("DrainedBegin returned while every request was held by the worker")
	case <-time.After(50 * time.Millisecond):
	}
	close(d.gate)
	<-drained
	var done, bad int
	for i, ctx := range []*aio.Context{e.Main, e.IO[0]} {
		e.On(ctx, func() {
			done += cbs[i].done
			bad += cbs[i].bad
		})
	}
	n.DrainedEnd()
	if done != 2*k || bad != 0 || n.InFlight() != 0 {
		t.Fatalf("after DrainedBegin: %d of %d completed, %d on the wrong Context or failed, in flight %d", done, 2*k, bad, n.InFlight())
	}
	// One worker completes in submission order per Context; the outbox
	// keeps that order.
	for _, cb := range cbs {
		for j, tag := range cb.order {
			if tag != uint64(j) {
				t.Fatalf("%s: completion %d has tag %d: the outbox reordered completions", cb.ctx.Name(), j, tag)
			}
		}
	}
}

// remoteLoop keeps qd reads in flight on a remoteDriver node.
type remoteLoop struct {
	n        *block.Node
	p        *block.Pool
	buf      []byte
	left     int
	inflight int
}

func (l *remoteLoop) issue() {
	l.left--
	l.inflight++
	r := l.p.Get()
	r.Op = block.OpRead
	r.SetBuf(l.buf)
	l.n.Submit(r, l)
}

func (l *remoteLoop) RequestDone(r *block.Request, err error) {
	l.inflight--
	if l.left > 0 {
		l.issue()
	}
}

// TestCompleteRemoteZeroAllocs: a completion through the outbox (from a
// foreign goroutine to the request's Context) allocates nothing.
func TestCompleteRemoteZeroAllocs(t *testing.T) {
	if raceEnabled || invariants.Enabled {
		t.Skip("allocation budgets hold for production builds (no -race, no invariants tag)")
	}
	e := blocktest.NewEnv(t, 0)
	d := &remoteDriver{reqs: make(chan *block.Request, 64)}
	go d.work()
	defer close(d.reqs)
	n := e.Open(d, block.Options{Name: "remote"})
	defer n.Unref()
	l := &remoteLoop{n: n, buf: make([]byte, 512)}
	e.OnMain(func() { l.p = n.Graph().Pool(e.Main) })
	run := func(count int) {
		e.OnMain(func() {
			l.left = count
			for range 16 {
				l.issue()
			}
			e.Main.WaitWhile(func() bool { return l.inflight > 0 })
		})
	}
	run(1000)
	const count = 5000
	allocs := testing.AllocsPerRun(3, func() { run(count) })
	t.Logf("%.1f allocations per %d remote completions", allocs, count)
	if allocs > 8 {
		t.Errorf("%.0f allocations for %d remote completions: the outbox allocates", allocs, count)
	}
}

// inboxDriver owns its state on the node's Context: requests from other
// Contexts come through an Inbox.
type inboxDriver struct {
	block.DriverBase
	ctx   *aio.Context
	in    block.Inbox
	seen  []uint64 // owner only
	wrong int
}

func (d *inboxDriver) Open(n *block.Node) error {
	d.ctx = n.Context()
	d.in.Attach(d.ctx, d.start)
	return nil
}
func (d *inboxDriver) Close(*block.Node) error           { d.in.Detach(); return nil }
func (d *inboxDriver) Length(*block.Node) (int64, error) { return 1 << 20, nil }
func (d *inboxDriver) Read(r *block.Request) {
	if r.Context() != d.ctx {
		d.in.Push(r)
		return
	}
	r.CompleteLater(nil)
}

func (d *inboxDriver) start(r *block.Request) {
	if !d.ctx.InContext() {
		d.wrong++
	}
	d.seen = append(d.seen, r.Tag)
	r.CompleteRemote(nil)
}

// TestInboxHandsOver: requests an IOThread submits reach the driver on
// the node's Context in submission order and complete back on the
// IOThread.
func TestInboxHandsOver(t *testing.T) {
	e := blocktest.NewEnv(t, 1)
	d := &inboxDriver{}
	n := e.Open(d, block.Options{Name: "inbox"})
	defer n.Unref()
	const k = 300
	cb := &onCtx{ctx: e.IO[0]}
	e.On(e.IO[0], func() {
		p := n.Graph().Pool(e.IO[0])
		for j := range k {
			r := p.Get()
			r.Op, r.Tag = block.OpRead, uint64(j)
			r.SetBuf(make([]byte, 512))
			n.Submit(r, cb)
		}
	})
	e.WaitFor("inbox completions", func() bool {
		var done int
		e.On(e.IO[0], func() { done = cb.done })
		return done == k
	})
	e.OnMain(func() {
		if d.wrong != 0 || len(d.seen) != k {
			t.Fatalf("driver saw %d requests, %d outside its Context", len(d.seen), d.wrong)
		}
		for j, tag := range d.seen {
			if tag != uint64(j) {
				t.Fatalf("request %d reached the driver as %d: the inbox reordered", j, tag)
			}
		}
	})
	if cb.bad != 0 {
		t.Fatalf("%d completions failed or ran outside the IOThread", cb.bad)
	}
}
