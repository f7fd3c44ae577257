package aio

import (
	"iter"
	"sync/atomic"
	"time"

	"github.com/ringblk/ringblk/internal/invariants"
)

// A Co is a coroutine: a goroutine that runs only while it holds its
// Context's run token, so it may touch owner-only state (issue ops, arm
// timers) as if it were the owner. The loop lends the token and waits until
// the coroutine yields or returns; at most one goroutine of a Context runs
// at a time. Coroutines are for slow paths (a qcow2 metadata miss, an
// allocation).
//
// A coroutine is a runtime coroutine (iter.Pull): entering it and yielding
// are direct goroutine switches on the owner's OS thread, which the
// runtime donates to the coroutine along with the owner's LockOSThread, so
// a switch costs no futex, no thread wake-up and no scheduler round trip
// (the first version used two channels and cost four thread switches per
// enter/yield pair; docs/design/event-loop.md). The runtime requires every
// switch of a coroutine to happen on the thread that created it: the
// coroutine is created at its first entry, which always runs on the owner
// thread (the owner, or a coroutine of the same Context).
//
// A coroutine must not Poll or WaitWhile (it yields instead), and it never
// enters the ring itself: ops it issues are prepared while it runs and
// submitted by the owner when the token comes back.
type Co struct {
	c      *Context
	fn     func(*Co)
	next   func() (struct{}, bool) // enter: runs the coroutine until it yields or returns
	stop   func()                  // ends a parked coroutine (Yield panics errCoStopped)
	yield  func(struct{}) bool
	bh     *BH     // Wake schedules it; it lends the token
	state  coState // written by the token holder only
	caller *Co     // token holder that lent it the token (nil: the owner)

	// result of the op a synchronous helper waits for
	opDone bool
	opRes  int
	opErr  error
}

type coState uint8

const (
	coCreated coState = iota
	coRunning
	coParked
	coDone
)

// coStopped unwinds a coroutine that is ended while parked (the Context
// stops): Yield panics with it, deferred calls run, and the coroutine's
// base recovers it.
type coStopped struct{}

// Go starts fn as a coroutine of c. Called by c's owner (or a coroutine of
// c), fn runs at once until its first Yield or return; from any other
// goroutine its first run is scheduled like a Wake. It allocates (the
// coroutine, its closures and a BH).
func (c *Context) Go(fn func(co *Co)) *Co {
	co := &Co{c: c, fn: fn}
	co.bh = c.NewBH(co.wakeBH)
	c.coMu.Lock()
	if c.coSet == nil {
		c.coSet = make(map[*Co]struct{})
	}
	c.coSet[co] = struct{}{}
	c.coMu.Unlock()
	if c.InContext() {
		c.lend(co)
	} else {
		co.bh.Schedule()
	}
	return co
}

// body is the coroutine's goroutine.
func (co *Co) body(yield func(struct{}) bool) {
	co.yield = yield
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(coStopped); !ok {
				panic(r)
			}
		}
	}()
	defer co.finish()
	co.fn(co)
}

// finish runs as the coroutine ends (return, or unwinding after a stop).
func (co *Co) finish() {
	co.state = coDone
	c := co.c
	c.coMu.Lock()
	delete(c.coSet, co)
	c.coMu.Unlock()
}

// lend hands c's run token to co and runs it until it yields or returns.
// The caller holds the token (the owner, or a coroutine entering another)
// and so runs on c's owner thread.
func (c *Context) lend(co *Co) {
	prev := c.holder.Load()
	co.caller = prev
	co.state = coRunning
	c.holder.Store(co)
	if co.next == nil {
		co.next, co.stop = iter.Pull(co.body)
	}
	co.next()
	c.holder.Store(prev)
	if prev == nil && c.plug == 0 {
		c.flushOverflow() // submit what the coroutine prepared
	}
}

// wakeBH is the BH behind Wake: it enters co if co is parked.
func (co *Co) wakeBH() {
	if co.state == coParked || co.state == coCreated {
		co.c.lend(co)
	}
}

// Context returns the coroutine's Context.
func (co *Co) Context() *Context { return co.c }

// Yield parks the coroutine and gives the run token back. It returns when
// the coroutine is entered again — by a Wake, which may be spurious with
// respect to what the caller waits for: loop on your own condition. When
// the Context stops while the coroutine is parked, Yield does not return:
// it panics with a private value that unwinds the coroutine (deferred calls
// run; a recover in the coroutine must re-panic values it does not know)
// and is counted in StopReport.Coroutines.
func (co *Co) Yield() {
	if co.c.holder.Load() != co {
		invariants.Failf("aio: Yield from a coroutine that does not hold the run token")
	}
	co.state = coParked
	if !co.yield(struct{}{}) {
		panic(coStopped{})
	}
}

// Wake makes a parked coroutine run again, from the loop (a BH). Any
// goroutine, no allocation; wake-ups from several goroutines resume
// coroutines in wake-up order, and waking an already woken coroutine does
// nothing.
func (co *Co) Wake() { co.bh.Schedule() }

// Done reports whether the coroutine has returned.
func (co *Co) Done() bool { return co.state == coDone }

// coWaiter is the Done a synchronous helper passes for its op: it records the
// result and wakes the coroutine.
type coWaiter Co

func (d *coWaiter) OpDone(_ uint64, res int, err error) {
	co := (*Co)(d)
	co.opDone, co.opRes, co.opErr = true, res, err
	co.Wake()
}

func (co *Co) waitOp(op string, off int64) (int, error) {
	for !co.opDone {
		co.Yield()
	}
	co.opDone = false
	if co.opErr != nil {
		return co.opRes, &OpError{Op: op, Off: off, Err: co.opErr}
	}
	return co.opRes, nil
}

// Read reads into buf at off and returns when it completed.
func (co *Co) Read(f *File, buf []byte, off int64) (int, error) {
	co.c.Read(f, buf, off, (*coWaiter)(co), 0)
	return co.waitOp("read", off)
}

// Write writes buf at off and returns when it completed.
func (co *Co) Write(f *File, buf []byte, off int64) (int, error) {
	co.c.Write(f, buf, off, (*coWaiter)(co), 0)
	return co.waitOp("write", off)
}

// Readv reads into bufs at off and returns when it completed.
func (co *Co) Readv(f *File, bufs [][]byte, off int64) (int, error) {
	co.c.Readv(f, bufs, off, (*coWaiter)(co), 0)
	return co.waitOp("readv", off)
}

// Writev writes bufs at off and returns when it completed.
func (co *Co) Writev(f *File, bufs [][]byte, off int64) (int, error) {
	co.c.Writev(f, bufs, off, (*coWaiter)(co), 0)
	return co.waitOp("writev", off)
}

// Fsync flushes f and returns when it completed.
func (co *Co) Fsync(f *File, datasync bool) error {
	co.c.Fsync(f, datasync, (*coWaiter)(co), 0)
	_, err := co.waitOp("fsync", -1)
	return err
}

// Fallocate runs fallocate and returns when it completed.
func (co *Co) Fallocate(f *File, mode uint32, off, length int64) error {
	co.c.Fallocate(f, mode, off, length, (*coWaiter)(co), 0)
	_, err := co.waitOp("fallocate", off)
	return err
}

// Sleep parks the coroutine for at least d (a timer on its Context).
func (co *Co) Sleep(d time.Duration) {
	done := false
	co.c.AfterFunc(d, func() { done = true; co.Wake() })
	for !done {
		co.Yield()
	}
}

// RunOn runs fn on target and parks the coroutine until it has run: the
// coroutine's way to get work done on another Context (typically the main
// one) without waiting on a foreign loop (drain.md D11, W4). fn never runs
// on the coroutine's own Context unless target is it.
func (co *Co) RunOn(target *Context, fn func()) {
	var done atomic.Bool
	target.Schedule(func() {
		fn()
		done.Store(true)
		co.Wake()
	})
	for !done.Load() {
		co.Yield()
	}
}

// stopCoroutines ends every coroutine that has not returned: parked ones
// unwind out of Yield, never-entered ones end without running fn. It
// returns how many it ended. Owner only, at shutdown.
func (c *Context) stopCoroutines() int {
	c.coMu.Lock()
	var live []*Co
	for co := range c.coSet {
		live = append(live, co)
	}
	c.coMu.Unlock()
	for _, co := range live {
		if co.next == nil { // never entered
			co.finish()
			continue
		}
		c.holder.Store(co)
		co.stop()
		c.holder.Store(nil)
	}
	return len(live)
}
