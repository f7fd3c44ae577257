package aio

import (
	"testing"

	"github.com/ringblk/ringblk/uring/uringtest"
)

// deferLog is a Deferred that records its runs and, on its first run,
// issues ops (and optionally defers itself again).
type deferLog struct {
	name   string
	log    *[]string
	c      *Context
	ops    int
	done   *counter
	again  bool // defer itself once more from its first run
	runs   int
	plugAt []int // Plugged() seen by each run
}

func (d *deferLog) RunDeferred(c *Context) {
	d.runs++
	*d.log = append(*d.log, d.name)
	d.plugAt = append(d.plugAt, c.Plugged())
	for i := 0; i < d.ops; i++ {
		c.Nop(d.done, uint64(i))
	}
	d.ops = 0
	if d.again {
		d.again = false
		if !c.Defer(d) {
			panic("Defer from a deferred run refused")
		}
	}
}

// TestDeferRunsAtOutermostUnplug: deferred work runs once per deferral
// burst, in order, when the outermost Plug ends, still plugged, so the ops
// it issues go out in the same io_uring_enter as the section's own; a
// deferral from inside a run runs again after the queued work; Defer
// outside a plugged section and past the bound is refused.
func TestDeferRunsAtOutermostUnplug(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		q, _ := e.queue(64, uringtest.Options{})
		c := e.start(Options{}, q)
		var log []string
		cnt := newCounter()
		a := &deferLog{name: "a", log: &log, ops: 4, done: cnt, again: true}
		b := &deferLog{name: "b", log: &log, ops: 4, done: cnt}
		var unplugged, nested []string
		var refusedOutside, refusedFull bool
		var entersBefore, entersAfter int64
		onOwner(t, c, hang, func() {
			refusedOutside = !c.Defer(a)
			entersBefore = c.Stats().Enters
			c.Plug()
			c.Nop(cnt, 100)
			if !c.Defer(a) || !c.Defer(b) || !c.Defer(a) {
				t.Error("Defer refused inside a plugged section")
			}
			c.Plug()
			c.Unplug() // inner: runs nothing
			nested = append(nested, log...)
			c.Unplug()
			unplugged = append(unplugged, log...)
			entersAfter = c.Stats().Enters
			c.WaitWhile(func() bool { return cnt.n < 9 })

			c.Plug()
			fill := make([]*deferLog, maxDeferred)
			for i := range fill {
				fill[i] = &deferLog{name: "f", log: &log}
				c.Defer(fill[i])
			}
			refusedFull = !c.Defer(&deferLog{name: "x", log: &log})
			c.Unplug()
		})
		if !refusedOutside {
			t.Error("Defer outside a plugged section was accepted")
		}
		if len(nested) != 0 {
			t.Errorf("an inner Unplug ran deferred work: %v", nested)
		}
		if got := joinNames(unplugged); got != "a b a" {
			t.Errorf("runs at the outermost Unplug: %q, want \"a b a\" (a deferred twice before: once; a again from its own run: after b)", got)
		}
		for _, d := range []*deferLog{a, b} {
			for _, p := range d.plugAt {
				if p != 1 {
					t.Errorf("%s ran at plug depth %d, want 1 (still plugged)", d.name, p)
				}
			}
		}
		if cnt.n != 9 {
			t.Errorf("%d of 9 ops completed", cnt.n)
		}
		if e.kind != "fake" && entersAfter-entersBefore != 1 {
			t.Errorf("the section and its deferred ops took %d io_uring_enter calls, want 1", entersAfter-entersBefore)
		}
		if !refusedFull {
			t.Errorf("Defer accepted past %d entries", maxDeferred)
		}
	})
}

// TestDeferNestedWaitRunsFirst: a wait nested in a plugged section runs
// the section's deferred work before it blocks (as it submits prepared
// SQEs), so waiting for what the deferred work issues cannot hang; work
// that completion callbacks defer inside the loop's own batch runs before
// that batch ends.
func TestDeferNestedWaitRunsFirst(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		q, _ := e.queue(64, uringtest.Options{})
		c := e.start(Options{}, q)
		var log []string
		cnt := newCounter()
		d := &deferLog{name: "d", log: &log, ops: 3, done: cnt}
		fromCallback := &deferLog{name: "cb", log: &log, ops: 1, done: cnt}
		depth := -1
		onOwner(t, c, hang, func() {
			c.Plug()
			c.Defer(d)
			c.WaitWhile(func() bool { return cnt.n < 3 })
			depth = c.Plugged()
			c.Unplug()
			c.Nop(deferFrom{c: c, d: fromCallback}, 0)
			c.WaitWhile(func() bool { return cnt.n < 4 })
		})
		if cnt.n != 4 || depth != 1 {
			t.Fatalf("%d of 4 ops completed, plug depth %d after the wait (want 4, 1)", cnt.n, depth)
		}
		if got := joinNames(log); got != "d cb" {
			t.Errorf("runs %q, want \"d cb\"", got)
		}
		if len(fromCallback.plugAt) != 1 || fromCallback.plugAt[0] != 1 {
			t.Errorf("callback's deferred work ran at plug depths %v, want [1] (inside the loop's batch)", fromCallback.plugAt)
		}
	})
}

// deferFrom is a Done that defers d from a completion callback.
type deferFrom struct {
	c *Context
	d Deferred
}

func (f deferFrom) OpDone(uint64, int, error) {
	if !f.c.Defer(f.d) {
		panic("Defer refused inside the loop's completion batch")
	}
}

func joinNames(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += " "
		}
		out += x
	}
	return out
}
