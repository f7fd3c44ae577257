package blocktest

import (
	"fmt"
	"runtime"
	"testing"
	"weak"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/internal/invariants"
)

// QDLoop keeps a fixed number of 4 KiB requests in flight on one queue
// until its budget runs out: each completion issues the next request at a
// scattered offset. It runs on the queue's Context.
type QDLoop struct {
	Q     *block.Queue
	Bufs  [][]byte // one buffer per request in flight
	Span  int64    // offsets stay below this (a multiple of 4 KiB)
	Write bool
	Err   error // the first failure

	left, inflight, next int
}

func (l *QDLoop) issue(i int) {
	l.left--
	l.inflight++
	off := int64((l.next*7919)%int(l.Span/4096)) * 4096
	l.next++
	if l.Write {
		l.Q.Write(l.Bufs[i], off, 0, l, uint64(i))
	} else {
		l.Q.Read(l.Bufs[i], off, l, uint64(i))
	}
}

// RequestDone implements block.Done.
func (l *QDLoop) RequestDone(r *block.Request, err error) {
	l.inflight--
	if err != nil && l.Err == nil {
		l.Err = err
	}
	if l.left > 0 {
		l.issue(int(r.Tag))
	}
}

// Run issues count requests, len(Bufs) at a time, and waits for all of
// them. REQUIRES: on the queue's Context.
func (l *QDLoop) Run(ctx *aio.Context, count int) {
	l.left = count
	l.Q.Plug()
	for i := range l.Bufs {
		if l.left == 0 {
			break
		}
		l.issue(i)
	}
	l.Q.Unplug()
	ctx.WaitWhile(func() bool { return l.inflight > 0 })
}

// AllocCheck describes CheckQDAllocs's run.
type AllocCheck struct {
	Ctx    *aio.Context // the submitting Context (the node's, or another one)
	QD     int
	Span   int64 // bytes of the node the requests spread over
	Warm   int   // requests before measuring
	Count  int   // requests per measured run
	Budget float64
	Race   bool // the test binary has the race detector (budgets do not hold)
	// WritesFirst measures writes before reads (reads first otherwise).
	WritesFirst bool
}

// CheckQDAllocs runs 4 KiB reads and writes at queue depth o.QD through
// fe from o.Ctx and fails t when a measured run of o.Count requests
// allocates more than o.Budget times (testing.AllocsPerRun: the
// harness's own few allocations fit any sensible budget, one per request
// does not). It skips with a reason under -race and the invariants tag.
func CheckQDAllocs(t *testing.T, e *Env, fe *block.FrontEnd, o AllocCheck) {
	t.Helper()
	if o.Race || invariants.Enabled {
		t.Skip("allocation budgets hold for production builds (no -race, no invariants tag)")
	}
	var l *QDLoop
	e.On(o.Ctx, func() { l = &QDLoop{Q: fe.Queue(o.Ctx), Span: o.Span} })
	for range o.QD {
		l.Bufs = append(l.Bufs, make([]byte, 4096))
	}
	run := func(count int) { e.On(o.Ctx, func() { l.Run(o.Ctx, count) }) }
	for _, w := range []bool{o.WritesFirst, !o.WritesFirst} {
		l.Write = w
		run(o.Warm)
		allocs := testing.AllocsPerRun(3, func() { run(o.Count) })
		if l.Err != nil {
			t.Fatalf("write=%v from %s: %v", w, o.Ctx.Name(), l.Err)
		}
		t.Logf("write=%v from %s: %.1f allocations per %d requests", w, o.Ctx.Name(), allocs, o.Count)
		if allocs > o.Budget {
			t.Errorf("write=%v from %s: %.0f allocations for %d requests: the request path allocates", w, o.Ctx.Name(), allocs, o.Count)
		}
	}
}

// oneRead records one request's completion.
type oneRead struct {
	done chan error
	ctx  *aio.Context
}

func (o *oneRead) RequestDone(r *block.Request, err error) {
	if err == nil && !o.ctx.InContext() {
		err = fmt.Errorf("completed outside its Context %s", o.ctx.Name())
	}
	o.done <- err
}

// CheckContextsReleased reads 4 KiB through fe from k short-lived
// Contexts in turn, each stopped and forgotten (Graph.ForgetContext)
// after its read, and fails t if the graph or the node's driver still
// reaches any of them after a garbage collection: per-Context state a
// driver keeps for Contexts that come and go (one IOThread per benchmark
// job clone) grows without bound.
func CheckContextsReleased(t *testing.T, e *Env, fe *block.FrontEnd, k int) {
	t.Helper()
	var gone []weak.Pointer[aio.Context]
	for i := range k {
		c, err := aio.New(aio.Options{Name: fmt.Sprintf("short%d", i), CPU: aio.NoCPU, ArenaSize: -1, Entries: 64})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		o := &oneRead{done: make(chan error, 1), ctx: c}
		c.Run(func() { fe.Queue(c).Read(make([]byte, 4096), 0, o, 0) })
		if err := <-o.done; err != nil {
			t.Fatalf("read from %s: %v", c.Name(), err)
		}
		if _, err := c.Stop(); err != nil {
			t.Fatal(err)
		}
		if err := e.G.ForgetContext(c); err != nil {
			t.Fatal(err)
		}
		gone = append(gone, weak.Make(c))
	}
	runtime.GC()
	runtime.GC()
	kept := 0
	for _, w := range gone {
		if w.Value() != nil {
			kept++
		}
	}
	if kept > 0 {
		t.Errorf("%d of %d stopped and forgotten Contexts are still reachable (per-Context state kept for them)", kept, k)
	}
}
