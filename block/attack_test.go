package block_test

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

// Adversarial drain scenarios (issue 13): graph changes, drains and waits
// made from the callbacks of in-flight requests. A scenario that hung before
// its fix runs under hangWatchdog, so the suite fails instead of hanging.

// hangWatchdog waits until done is closed. After limit it crashes the test
// binary with a message naming the scenario: the Context that hangs cannot
// be stopped, so a test failure (whose cleanup stops the Contexts) would
// hang too. The panic is raised on a fresh goroutine because the testing
// package runs cleanups for a panicking test goroutine.
func hangWatchdog(t *testing.T, done <-chan struct{}, limit time.Duration, what string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(limit):
		msg := fmt.Sprintf("%s: %s did not finish within %v (hang)", t.Name(), what, limit)
		go panic(msg)
		select {}
	}
}

// doneFn adapts a func to block.Done.
type doneFn func(r *block.Request, err error)

func (f doneFn) RequestDone(r *block.Request, err error) { f(r, err) }

// recovered runs fn and returns the panic message it raised, or "".
func recovered(fn func()) (msg string) {
	defer func() {
		if r := recover(); r != nil {
			msg = fmt.Sprint(r)
		}
	}()
	fn()
	return ""
}

func wantPanic(t *testing.T, what, msg string, words ...string) {
	t.Helper()
	if msg == "" {
		t.Fatalf("%s: no panic", what)
	}
	for _, w := range words {
		if !strings.Contains(msg, w) {
			t.Fatalf("%s: panic %q does not mention %q", what, msg, w)
		}
	}
}

// Item 1: a completion callback run by the pool's deferred-completion bottom
// half waits for a request whose completion was deferred behind it in the
// same batch: the nested wait must run that completion.
func TestAttackNestedWaitInDeferredCompletion(t *testing.T) {
	t.Run("main-drain", func(t *testing.T) {
		e := blocktest.NewEnv(t, 0)
		d := blocktest.NewDriver(64 << 10)
		d.ReadDelay = -1 // CompleteLater
		n := e.Open(d, block.Options{Name: "n"})
		done := make(chan struct{})
		var inFlightAfter int64 = -1
		var bDone bool
		e.OnMain(func() {
			p := e.G.Pool(e.Main)
			a, b := p.Get(), p.Get()
			a.Op, b.Op = block.OpRead, block.OpRead
			a.SetBuf(make([]byte, 512))
			b.SetBuf(make([]byte, 512))
			n.Submit(a, doneFn(func(*block.Request, error) {
				n.DrainedBegin() // B is still counted on n
				inFlightAfter = n.InFlight()
				n.DrainedEnd()
				close(done)
			}))
			n.Submit(b, doneFn(func(*block.Request, error) { bDone = true }))
		})
		hangWatchdog(t, done, 5*time.Second, "DrainedBegin inside a deferred completion")
		e.OnMain(func() {
			if inFlightAfter != 0 || !bDone {
				t.Errorf("after the nested drain: in flight %d, B done %v; want 0, true", inFlightAfter, bDone)
			}
		})
		n.Unref()
	})
	t.Run("iothread-waitwhile", func(t *testing.T) {
		e := blocktest.NewEnv(t, 1)
		io := e.IO[0]
		d := blocktest.NewDriver(64 << 10)
		d.ReadDelay = -1
		n := e.Open(d, block.Options{Name: "n"})
		done := make(chan struct{})
		e.On(io, func() {
			p := e.G.Pool(io)
			a, b := p.Get(), p.Get()
			a.Op, b.Op = block.OpRead, block.OpRead
			a.SetBuf(make([]byte, 512))
			b.SetBuf(make([]byte, 512))
			bDone := false
			n.Submit(a, doneFn(func(*block.Request, error) {
				io.WaitWhile(func() bool { return !bDone })
				close(done)
			}))
			n.Submit(b, doneFn(func(*block.Request, error) { bDone = true }))
		})
		hangWatchdog(t, done, 5*time.Second, "WaitWhile for a sibling inside a deferred completion")
		n.Unref()
	})
}

// Item 2: removing a filter with ReplaceNode(filter, leaf) when the
// front end's edge is the filter's only reference. The filter is deleted
// once the replacement is done, and the front end reads from the leaf.
func TestAttackReplaceNodeLastReference(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	leaf := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "leaf"})
	fd := &blocktest.Forward{Size: 64 << 10}
	filter := e.Open(fd, block.Options{Name: "filter"})
	e.Attach(filter, leaf, "file", block.RoleFiltered)
	fe := e.FrontEnd("fe", filter, block.FrontEndOptions{})
	filter.Unref() // the front end's edge is its only reference now
	// Before the fix this panicked on the main Context ("drained end
	// without begin on node filter"), which ends the test binary.
	if err := e.G.ReplaceNode(filter, leaf); err != nil {
		t.Fatalf("ReplaceNode: %v", err)
	}
	if fe.Root() != leaf || !filter.Closed() {
		t.Fatalf("after ReplaceNode: root %v, filter closed %v; want leaf, true", fe.Root().Name(), filter.Closed())
	}
	if q := leaf.Quiesce(); q != 0 || fe.Quiesce() != 0 {
		t.Fatalf("after ReplaceNode: leaf quiesce %d, front end quiesce %d; want 0, 0", q, fe.Quiesce())
	}
	if _, err := fe.ReadAt(make([]byte, 512), 0); err != nil {
		t.Fatalf("read through the front end: %v", err)
	}
	leaf.Unref()
	fe.Close()
}

// Item 3: a Context move whose drain runs a completion callback that edits
// the component: the move must switch the component as it is after the
// wait, not the one it computed before.
func TestAttackMoveStaleComponent(t *testing.T) {
	// setup: front end fe (main, may move) → n (test driver: reads finish
	// after a 100µs timer) —backing→ b, whose only reference is the edge.
	setup := func(t *testing.T) (*blocktest.Env, *block.FrontEnd, *block.Node, *block.Node, *block.Child) {
		e := blocktest.NewEnv(t, 1)
		n := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "n"})
		b := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "b"})
		c := e.Attach(n, b, "backing", block.RoleBacking)
		b.Unref()
		fe := e.FrontEnd("fe", n, block.FrontEndOptions{AllowContextChange: true})
		n.Unref()
		return e, fe, n, b, c
	}
	// moveWithCallback submits a read through fe and moves fe to the
	// IOThread at once, so the move's drain runs cb (the read's callback).
	moveWithCallback := func(t *testing.T, e *blocktest.Env, fe *block.FrontEnd, cb func()) error {
		var err error
		ran := false
		e.OnMain(func() {
			fe.Queue(e.Main).Read(make([]byte, 512), 0, doneFn(func(*block.Request, error) { ran = true; cb() }), 0)
			err = fe.SetContext(e.IO[0])
		})
		if !ran {
			t.Fatalf("the read's callback did not run inside the move's drain")
		}
		return err
	}
	t.Run("node-deleted", func(t *testing.T) {
		e, fe, n, b, c := setup(t)
		// Before the fix: the move quiesced b, the callback deleted b
		// (which ends its quiesces), and the move's own end panicked with
		// "drained end without begin on node b", on the main Context.
		err := moveWithCallback(t, e, fe, func() { e.G.Detach(c) })
		if err != nil {
			t.Fatalf("SetContext: %v", err)
		}
		if !b.Closed() {
			t.Fatalf("b is not deleted after the move released it")
		}
		if n.Context() != e.IO[0] || n.Quiesce() != 0 || fe.Quiesce() != 0 {
			t.Fatalf("n on %s, quiesce n=%d fe=%d; want iothread0, 0, 0", n.Context().Name(), n.Quiesce(), fe.Quiesce())
		}
		if err := fe.SetContext(e.Main); err != nil {
			t.Fatal(err)
		}
		fe.Close()
	})
	t.Run("node-attached", func(t *testing.T) {
		e, fe, n, b, _ := setup(t)
		var x *block.Node
		err := moveWithCallback(t, e, fe, func() {
			x = e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "x"})
			e.Attach(n, x, "extra", block.RoleFile)
			x.Unref()
		})
		if err != nil {
			t.Fatalf("SetContext: %v", err)
		}
		for _, y := range []*block.Node{n, b, x} {
			if y.Context() != e.IO[0] || y.Quiesce() != 0 {
				t.Errorf("%s: on %s with quiesce %d; want iothread0, 0 (the component must not split)", y.Name(), y.Context().Name(), y.Quiesce())
			}
		}
		if err := fe.SetContext(e.Main); err != nil {
			t.Fatal(err)
		}
		fe.Close()
	})
}

// Item 7: a move settles the old Context until it makes no progress, so a
// chain of bottom halves scheduled for the node before the switch runs
// entirely on the old Context; a chain that never ends is reported by the
// settle watchdog, and the move goes on.
func TestAttackMoveSettleChain(t *testing.T) {
	// The node starts on the IOThread; its drain-begin hook (which runs
	// when the move quiesces it) starts a chain of BHs on the old Context.
	setup := func(t *testing.T, steps int64) (*blocktest.Env, *block.Node, *atomic.Int64, *atomic.Int64, *atomic.Bool) {
		e := blocktest.NewEnv(t, 1)
		io := e.IO[0]
		var ran, after atomic.Int64
		var stop atomic.Bool
		d := blocktest.NewDriver(64 << 10)
		var n *block.Node
		d.OnDrainBegin = func(*block.Node) {
			var step func()
			step = func() {
				if n.Context() != io {
					after.Add(1)
				}
				for t0 := time.Now(); time.Since(t0) < 50*time.Microsecond; {
				}
				if ran.Add(1) != steps && !stop.Load() {
					io.Schedule(step)
				}
			}
			io.Schedule(step)
		}
		n = e.Open(d, block.Options{Name: "n", Context: io})
		t.Cleanup(func() { stop.Store(true) })
		return e, n, &ran, &after, &stop
	}
	t.Run("200-steps", func(t *testing.T) {
		e, n, ran, after, _ := setup(t, 200)
		if err := n.SetContext(e.Main); err != nil {
			t.Fatal(err)
		}
		e.WaitFor("the chain", func() bool { return ran.Load() == 200 })
		if a := after.Load(); a != 0 {
			t.Fatalf("%d of 200 chain steps ran on the old Context after the node had switched", a)
		}
		if k, _ := e.G.SettleOverruns(); k != 0 {
			t.Fatalf("settle watchdog fired %d times for a chain that ends", k)
		}
		n.Unref()
	})
	t.Run("never-ends", func(t *testing.T) {
		e, n, _, _, stop := setup(t, -1)
		var reports []error
		e.G.SetSettleWatchdog(50*time.Millisecond, func(err error) { reports = append(reports, err) })
		t0 := time.Now()
		if err := n.SetContext(e.Main); err != nil {
			t.Fatal(err)
		}
		took := time.Since(t0)
		stop.Store(true)
		k, last := e.G.SettleOverruns()
		if k != 1 || len(reports) != 1 || last != reports[0] {
			t.Fatalf("settle watchdog: %d overruns, %d reports; want 1, 1", k, len(reports))
		}
		if msg := last.Error(); !strings.Contains(msg, "settle watchdog") || !strings.Contains(msg, "iothread0") {
			t.Fatalf("watchdog report %q does not name the watchdog and the old Context", msg)
		}
		if n.Context() != e.Main || took < 50*time.Millisecond {
			t.Fatalf("after the watchdog: node on %s after %v; want main after at least 50ms", n.Context().Name(), took)
		}
		n.Unref()
	})
}

// Item 4: a drain called from a front end's completion callback on the main
// Context would wait for the callback's own request. It is refused with a
// panic naming the front end, before anything is quiesced.
func TestAttackDrainInFrontEndCallback(t *testing.T) {
	for _, kind := range []string{"node", "subtree", "all", "frontend", "move"} {
		t.Run(kind, func(t *testing.T) {
			e := blocktest.NewEnv(t, 1)
			x := newG1(t, e)
			done := make(chan struct{})
			var msg string
			e.OnMain(func() {
				x.fe.Queue(e.Main).Read(make([]byte, 512), 0, doneFn(func(*block.Request, error) {
					defer close(done)
					msg = recovered(func() {
						switch kind {
						case "node":
							x.b.DrainedBegin() // b is below the front end
						case "subtree":
							x.n.SubtreeDrainedBegin()
						case "all":
							e.G.DrainAllBegin()
						case "frontend":
							x.fe.Drain()
						case "move":
							_ = x.n.SetContext(e.IO[0])
						}
					})
				}), 0)
			})
			hangWatchdog(t, done, 5*time.Second, "a "+kind+" drain in a front-end completion callback")
			wantPanic(t, kind+" drain in a completion callback", msg, `front end "fe"`, "callback")
			if x.n.Quiesce() != 0 || x.b.Quiesce() != 0 || x.fe.Quiesce() != 0 {
				t.Fatalf("after the refused drain: quiesce n=%d b=%d fe=%d; want 0", x.n.Quiesce(), x.b.Quiesce(), x.fe.Quiesce())
			}
			// A drain after the callback returned works.
			x.n.Drain()
			x.fe.Drain()
		})
	}
}

// Item 5: the quiesce-phase rule. A drain-begin hook that changes the
// graph, drains or moves is refused with a panic naming the rule (before:
// a nil-pointer dereference while the edge list was walked, a misleading
// assertion, or silent acceptance).
func TestAttackQuiescePhaseRule(t *testing.T) {
	// b has two parents p1 and p2 (p1's edge first in b's parent list);
	// p1's drain-begin hook runs while b's parent list is walked.
	cases := []struct {
		name string
		op   func(e *blocktest.Env, p2 *block.Node, c2 *block.Child, x *block.Node)
		word string
	}{
		{"detach", func(e *blocktest.Env, p2 *block.Node, c2 *block.Child, x *block.Node) { e.G.Detach(c2) }, "detaching an edge"},
		{"delete-parent", func(e *blocktest.Env, p2 *block.Node, c2 *block.Child, x *block.Node) { p2.Unref() }, "dropping a node reference"},
		{"attach", func(e *blocktest.Env, p2 *block.Node, c2 *block.Child, x *block.Node) {
			_, _ = e.G.Attach(x, c2.Node(), block.ChildSpec{Name: "late", Role: block.RoleFile})
		}, "attaching an edge"},
		{"drain", func(e *blocktest.Env, p2 *block.Node, c2 *block.Child, x *block.Node) { x.DrainedBegin() }, "a drain"},
		{"move", func(e *blocktest.Env, p2 *block.Node, c2 *block.Child, x *block.Node) { _ = x.SetContext(e.IO[0]) }, "a Context move"},
		{"sync-read", func(e *blocktest.Env, p2 *block.Node, c2 *block.Child, x *block.Node) {
			_, _ = x.ReadAt(make([]byte, 512), 0)
		}, "a synchronous request"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := blocktest.NewEnv(t, 1)
			d1 := blocktest.NewDriver(64 << 10)
			p1 := e.Open(d1, block.Options{Name: "p1"})
			p2 := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "p2"})
			b := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "b"})
			x := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "x"})
			c2 := e.Attach(p2, b, "file", block.RoleFile)
			e.Attach(p1, b, "file", block.RoleFile)
			armed := true
			d1.OnDrainBegin = func(*block.Node) {
				if armed {
					armed = false
					tc.op(e, p2, c2, x)
				}
			}
			var msg string
			e.OnMain(func() { msg = recovered(b.DrainedBegin) })
			wantPanic(t, tc.name+" in a drain-begin hook", msg, tc.word, "quiesce-phase rule")
			// The rule's bookkeeping survived the recovered panic: graph
			// changes work again outside callbacks.
			if err := onMainErr(e, func() error {
				_, err := e.G.Attach(x, p2, block.ChildSpec{Name: "after", Role: block.RoleFile})
				return err
			}); err != nil {
				t.Fatalf("attach after the refused callback: %v", err)
			}
		})
	}
}

// nopDriver completes every read with a ring no-op on the request's
// Context, so the read waits for its SQE to be submitted.
type nopDriver struct{ block.DriverBase }

func (nopDriver) Length(*block.Node) (int64, error) { return 64 << 10, nil }
func (nopDriver) Read(r *block.Request)             { r.Context().Nop(r, 0) }

// Item 6: a drain while an IOThread holds a plugged section open and its
// loop never sleeps (a bottom half that reschedules itself): the request
// prepared in the section must be submitted while the drain waits, not when
// the owner finally unplugs.
func TestAttackDrainSubmitsOpenPluggedSection(t *testing.T) {
	e := blocktest.NewEnv(t, 1)
	io := e.IO[0]
	n := e.Open(nopDriver{}, block.Options{Name: "n"})
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{Context: io})
	n.Unref()
	q := fe.Queue(io)
	var stop atomic.Bool
	var busy *aio.BH
	res := blocktest.NewResult()
	e.On(io, func() {
		busy = io.NewBH(func() {
			if stop.Load() {
				q.Unplug()
				return
			}
			busy.Schedule()
		})
		q.Plug()
		q.Read(make([]byte, 512), 0, res, 0)
		busy.Schedule()
	})
	drained := make(chan struct{})
	go func() {
		n.DrainedBegin()
		close(drained)
	}()
	select {
	case <-drained:
	case <-time.After(2 * time.Second):
		fin := res.Finished()
		stop.Store(true) // unplug: the drain can finish now
		<-drained
		n.DrainedEnd()
		t.Fatalf("the drain waited 2s for the owner to unplug its open section (read completed meanwhile: %v)", fin)
	}
	if !res.Finished() {
		t.Fatalf("drained begin returned before the read completed")
	}
	n.DrainedEnd()
	stop.Store(true)
	e.WaitFor("the section to end", func() bool { return !busy.Scheduled() })
	fe.Close()
}

// Issue 14 item 7: synchronous calls that used to hang silently. On a
// stopped IOThread they return an error naming it; from one IOThread to
// another they panic naming both Contexts.
func TestSyncCallStoppedContext(t *testing.T) {
	e := blocktest.NewEnv(t, 1)
	io := e.IO[0]
	n := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "n", Context: io})
	fe := e.FrontEnd("fe", nil, block.FrontEndOptions{Context: io})
	if _, err := io.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	buf := make([]byte, 512)
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, aio.ErrStopped) || !strings.Contains(err.Error(), "iothread0") {
			t.Fatalf("%s on a stopped IOThread: %v; want an error wrapping aio.ErrStopped naming iothread0", what, err)
		}
	}
	for _, from := range []string{"goroutine", "main"} {
		done := make(chan struct{})
		var errN, errFE error
		go func() {
			defer close(done)
			call := func() {
				_, errN = n.ReadAt(buf, 0)
				_, errFE = fe.ReadAt(buf, 0)
			}
			if from == "main" {
				e.OnMain(call)
			} else {
				call()
			}
		}()
		hangWatchdog(t, done, 5*time.Second, "a synchronous read on a stopped IOThread from "+from)
		check("node read from "+from, errN)
		check("front-end read from "+from, errFE)
	}
	n.Unref()
}

func TestSyncCallBetweenIOThreadsPanics(t *testing.T) {
	e := blocktest.NewEnv(t, 2)
	n := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "n", Context: e.IO[1]})
	var msg string
	e.On(e.IO[0], func() {
		msg = recovered(func() { _, _ = n.ReadAt(make([]byte, 512), 0) })
	})
	wantPanic(t, "synchronous read from iothread0 on iothread1", msg, "iothread0", "iothread1")
	n.Unref()
}
