package aio

import (
	"runtime"
	"sync/atomic"
	"time"
)

// A Co is a coroutine: a goroutine that runs only while it holds its
// Context's run token, so it may touch owner-only state (issue ops, arm
// timers) as if it were the owner. The loop lends the token and waits until
// the coroutine yields or returns; at most one goroutine of a Context runs
// at a time. Coroutines are for slow paths (a qcow2 metadata miss, an
// allocation): each hand-off is two channel operations between threads.
//
// A coroutine must not Poll or WaitWhile (it yields instead), and it never
// enters the ring itself: ops it issues are prepared while it runs and
// submitted by the owner thread when the token comes back (a ring set up
// with SINGLE_ISSUER accepts submissions from its owner thread only).
type Co struct {
	c      *Context
	fn     func(*Co)
	goid   atomic.Int64
	resume chan bool     // token to the coroutine; false: the Context stops, exit
	back   chan struct{} // token back to whoever lent it
	bh     *BH           // Wake schedules it; it lends the token
	state  coState       // written by the token holder only
	caller *Co           // token holder that lent it the token (nil: the owner)

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

// Go starts fn as a coroutine of c. Called by c's owner (or a coroutine of
// c), fn runs at once until its first Yield or return; from any other
// goroutine its first run is scheduled like a Wake. It allocates (the
// goroutine, two channels and a BH).
func (c *Context) Go(fn func(co *Co)) *Co {
	co := &Co{c: c, fn: fn, resume: make(chan bool), back: make(chan struct{})}
	co.bh = c.NewBH(co.wakeBH)
	c.coMu.Lock()
	if c.coSet == nil {
		c.coSet = make(map[*Co]struct{})
	}
	c.coSet[co] = struct{}{}
	c.coMu.Unlock()
	go co.main()
	if c.InContext() {
		c.lend(co)
	} else {
		co.bh.Schedule()
	}
	return co
}

func (co *Co) main() {
	co.goid.Store(curGoid())
	if !<-co.resume {
		co.finish()
		return
	}
	defer co.finish()
	co.fn(co)
}

// finish runs as the coroutine ends (return or Goexit) and hands the token
// back for the last time.
func (co *Co) finish() {
	co.state = coDone
	c := co.c
	c.coMu.Lock()
	delete(c.coSet, co)
	c.coMu.Unlock()
	co.back <- struct{}{}
}

// lend hands c's run token to co and waits until it comes back. The caller
// holds the token (the owner, or a coroutine entering another).
func (c *Context) lend(co *Co) {
	prev := c.holder.Load()
	co.caller = prev
	co.state = coRunning
	c.holder.Store(co)
	co.resume <- true
	<-co.back
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
// the goroutine ends with runtime.Goexit (deferred calls run) and is counted
// in StopReport.Coroutines.
func (co *Co) Yield() {
	assertf(co.c.holder.Load() == co, "aio: Yield from a coroutine that does not hold the run token")
	co.state = coParked
	co.back <- struct{}{}
	if !<-co.resume {
		runtime.Goexit()
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
// leave Yield through runtime.Goexit, never-entered ones exit before fn.
// It returns how many it ended. Owner only, at shutdown.
func (c *Context) stopCoroutines() int {
	c.coMu.Lock()
	var live []*Co
	for co := range c.coSet {
		live = append(live, co)
	}
	c.coMu.Unlock()
	n := 0
	for _, co := range live {
		n++
		for i := 0; i < 100 && co.state != coDone; i++ {
			c.holder.Store(co)
			co.resume <- false
			<-co.back
			c.holder.Store(nil)
		}
	}
	return n
}

// curGoid returns the calling goroutine's id, parsed from the first line of
// its stack trace ("goroutine 123 [running]:"). It costs about a
// microsecond: only coroutine checks use it.
func curGoid() int64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	const prefix = "goroutine "
	if len(b) < len(prefix) {
		return -1
	}
	var id int64
	for _, ch := range b[len(prefix):] {
		if ch < '0' || ch > '9' {
			break
		}
		id = id*10 + int64(ch-'0')
	}
	return id
}
