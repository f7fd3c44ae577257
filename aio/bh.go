package aio

import (
	"sync"
	"sync/atomic"

	"github.com/ringblk/ringblk/internal/invariants"
)

// BH flag bits (BH.flags).
const (
	bhPending   = 1 << iota // on the Context's stack or run queue
	bhScheduled             // call fn when dequeued
	bhDeleted               // never call fn again
	bhIdle                  // scheduled "when idle": no progress, no wake
)

// idleTimeout bounds a blocking wait while only idle BHs are scheduled.
const idleTimeout = 10_000_000 // 10ms, in nanoseconds

// A BH (bottom half) is a callback the owner runs soon, from the loop. A
// reusable BH is created once with NewBH and scheduled any number of times,
// from any goroutine, without allocating; scheduling an already scheduled
// BH does nothing. One-shot BHs (Context.Schedule) come from a pool.
//
// Ordering: BHs run in the order they were scheduled (FIFO per producer; the
// MPSC stack is reversed when the owner takes it). A BH scheduled while BHs
// run goes to a later iteration, and a nested Poll inside a BH first runs
// the BHs that were already taken. Even so, no correctness property may
// depend on BH order: "everything scheduled before X has run" is answered by
// polling until no progress, never by a marker BH.
type BH struct {
	c  *Context
	fn func()
	// flags: bhPending | bhScheduled | …, changed atomically by any
	// goroutine (Schedule, Cancel) and by the owner (dequeue).
	flags atomic.Uint32
	// next links the MPSC stack, then the owner's run queue. A producer
	// writes it before the CAS that publishes the BH; only the owner reads
	// it, after the Swap that takes the stack.
	next *BH
	seq  uint64 // run-queue stamp (owner only)
	// oneShot marks pooled BHs from Context.Schedule; set before the BH is
	// published and never changed while it is queued.
	oneShot bool
}

// NewBH creates a reusable BH that runs fn on c's owner goroutine.
func (c *Context) NewBH(fn func()) *BH {
	return &BH{c: c, fn: fn}
}

// Schedule makes b run in an upcoming iteration of its Context. Any
// goroutine; no allocation; wakes the owner if it sleeps.
func (b *BH) Schedule() {
	for {
		old := b.flags.Load()
		if invariants.Enabled && old&bhDeleted != 0 {
			invariants.Failf("aio: Schedule of a deleted BH")
		}
		if b.flags.CompareAndSwap(old, (old|bhPending|bhScheduled)&^bhIdle) {
			if old&bhPending == 0 {
				b.c.push(b)
			}
			break
		}
	}
	b.c.notify()
}

// ScheduleIdle makes b run when the Context next goes idle: it does not
// count as progress and a blocking Poll still sleeps (up to 10ms) before
// running it. A sleeping owner is woken only to shorten its timeout.
func (b *BH) ScheduleIdle() {
	for {
		old := b.flags.Load()
		if old&bhScheduled != 0 && old&bhIdle == 0 {
			return // already scheduled for real; keep that
		}
		if b.flags.CompareAndSwap(old, old|bhPending|bhScheduled|bhIdle) {
			if old&bhPending == 0 {
				b.c.push(b)
				b.c.notify()
			}
			return
		}
	}
}

// Cancel unschedules b; it stays queued but is skipped. Any goroutine.
func (b *BH) Cancel() { b.flags.And(^uint32(bhScheduled | bhIdle)) }

// Delete cancels b for good: Schedule after Delete is a programmer error.
func (b *BH) Delete() { b.flags.Or(bhDeleted) }

// Scheduled reports whether b is scheduled and not yet run.
func (b *BH) Scheduled() bool {
	f := b.flags.Load()
	return f&bhScheduled != 0 && f&bhDeleted == 0
}

// bhPool recycles one-shot BHs. A sync.Pool, not a free list, because any
// goroutine takes from it: its per-P caches make Get and Put lock-free and
// allocation-free in steady state. The GC may empty it, which only costs an
// allocation after a collection.
var bhPool = sync.Pool{New: func() any { return new(BH) }}

// Schedule runs fn once on c's owner goroutine, in an upcoming iteration.
// Any goroutine. It allocates nothing in steady state when fn is an
// existing func value (a method value or closure created per call
// allocates at the call site, not here).
func (c *Context) Schedule(fn func()) {
	b := bhPool.Get().(*BH)
	b.c = c
	b.fn = fn
	b.oneShot = true
	b.flags.Store(bhPending | bhScheduled)
	c.push(b)
	c.notify()
}

// push puts b on c's MPSC stack (Treiber push). Taking the whole stack
// with one Swap means a node is never popped singly, so there is no ABA.
func (c *Context) push(b *BH) {
	for {
		head := c.bhHead.Load()
		b.next = head
		if c.bhHead.CompareAndSwap(head, b) {
			return
		}
	}
}

// takeBHs moves the scheduled stack to the tail of the run queue in
// scheduling order, stamping each with the next sequence number.
func (c *Context) takeBHs() {
	if c.bhHead.Load() == nil {
		return
	}
	// Reverse the LIFO stack: the first node taken is the newest, so it
	// becomes the tail of the run queue.
	var fifo, tail *BH
	for b := c.bhHead.Swap(nil); b != nil; {
		next := b.next
		if tail == nil {
			tail = b
		}
		b.next = fifo
		fifo = b
		b = next
	}
	seq := c.bhSeq
	for b := fifo; b != nil; b = b.next {
		seq++
		b.seq = seq
	}
	c.bhSeq = seq
	if c.runqTail == nil {
		c.runqHead = fifo
	} else {
		c.runqTail.next = fifo
	}
	c.runqTail = tail
}

// runBHs runs the BHs scheduled before this call, oldest first. BHs
// scheduled by them wait for the next call (drain.md B2); a nested runBHs
// (from a BH that polls) continues with the same queue (B3). It reports
// progress: a non-idle BH ran.
func (c *Context) runBHs() bool {
	c.takeBHs()
	limit := c.bhSeq
	progress := false
	for c.runqHead != nil && c.runqHead.seq <= limit {
		b := c.runqHead
		c.runqHead = b.next
		if c.runqHead == nil {
			c.runqTail = nil
		}
		b.next = nil
		if b.oneShot {
			// Nobody else holds a one-shot BH, so its flags need no
			// update: recycle it first (fn may schedule again and reuse it)
			// and call.
			fn := b.fn
			b.c, b.fn = nil, nil
			bhPool.Put(b)
			progress = true
			c.stats.BHsRun++
			fn()
			continue
		}
		old := b.flags.And(^uint32(bhPending | bhScheduled | bhIdle))
		if old&bhScheduled != 0 && old&bhDeleted == 0 {
			if old&bhIdle == 0 {
				progress = true
			}
			c.stats.BHsRun++
			b.fn()
		}
	}
	return progress
}

// bhWork reports whether a BH is waiting: urgent when a non-idle one is
// scheduled, idle when only idle ones are. It walks the stack without
// taking it; that is safe because only the owner removes nodes.
func (c *Context) bhWork() (urgent, idle bool) {
	for b := c.runqHead; b != nil; b = b.next {
		f := b.flags.Load()
		if f&bhScheduled != 0 && f&bhDeleted == 0 {
			if f&bhIdle == 0 {
				return true, false
			}
			idle = true
		}
	}
	for b := c.bhHead.Load(); b != nil; b = b.next {
		f := b.flags.Load()
		if f&bhScheduled != 0 && f&bhDeleted == 0 {
			if f&bhIdle == 0 {
				return true, false
			}
			idle = true
		}
	}
	return false, idle
}
