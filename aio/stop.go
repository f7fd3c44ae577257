package aio

import (
	"strconv"
	"sync"
	"syscall"

	"github.com/ringblk/ringblk/internal/invariants"
)

// StopReport says what Stop found and had to do.
type StopReport struct {
	BHsRun            int // BH callbacks run while stopping
	OpsCompleted      int // ops in flight at Stop that completed with their real result
	OpsCancelled      int // ops whose Done got ECANCELED: cancelled in the kernel, never submitted, or issued while stopping
	OpsAbandoned      int // ops the kernel had not returned after StopTimeout (Done got ECANCELED after the ring closed)
	TimersCancelled   int // armed timers that never ran
	FDHandlersRemoved int // fd handlers still registered
	Coroutines        int // coroutines that had not returned (ended with runtime.Goexit)
	LeakedBHs         int // BHs still scheduled when the Context closed: they never run
}

// Leaked reports whether anything that was expected to run never will.
func (r StopReport) Leaked() bool { return r.LeakedBHs > 0 || r.OpsAbandoned > 0 }

// stopRounds bounds the "run until no progress" rounds of a stop, so a BH
// that reschedules itself forever cannot keep a Context alive; it is
// reported as leaked.
const stopRounds = 1000

// Stop makes the owner finish and waits for it: it runs pending BHs and
// completions, cancels timers, fd handlers and in-flight ops (their Done
// gets ECANCELED unless the op completed first), ends coroutines that have
// not returned, closes the ring and the eventfd, unmaps the arena and lets
// the owner goroutine exit. Any goroutine but the owner (and its
// coroutines). The error wraps ErrLeaked when a BH could never run or an op
// was abandoned; the report has the counts. Stopping a stopped Context
// returns its report again.
func (c *Context) Stop() (StopReport, error) {
	if c.state.CompareAndSwap(stateNew, stateStopped) {
		c.q = c.opts.Queue
		c.closeResources()
		if c.arena != nil {
			c.arena.unmap()
		}
		close(c.exited)
		return c.report, c.stopErr
	}
	if c.InContext() {
		invariants.Failf("aio: Stop of Context %s from its own owner", c.name)
	}
	if c.attached {
		invariants.Failf("aio: Stop of Context %s that Attach started (its owner calls Detach)", c.name)
	}
	if c.state.Load() != stateStopped {
		c.stopBH.Schedule()
	}
	<-c.exited
	return c.report, c.stopErr
}

// Stopped returns a channel closed once the owner goroutine has exited.
func (c *Context) Stopped() <-chan struct{} { return c.exited }

// shutdown runs on the owner after the stop BH ended the top-level loop.
func (c *Context) shutdown() {
	c.state.Store(stateStopping)
	rep := &c.report
	bhBefore := c.stats.BHsRun

	// 1. Finish what is already queued.
	c.pollUntilIdle()

	// 2. Silence event sources.
	rep.TimersCancelled = len(c.timers)
	for len(c.timers) > 0 {
		c.timers.remove(len(c.timers) - 1)
	}
	for len(c.fdh) > 0 {
		rep.FDHandlersRemoved++
		c.fdh[len(c.fdh)-1].Remove()
	}

	// 3. Cancel ops: never-submitted ones complete with ECANCELED at once,
	// submitted ones get an ASYNC_CANCEL; from now on a new op completes
	// with ECANCELED without reaching the ring.
	c.cancelAll = true
	for c.ops.ovLen > 0 {
		idx := c.ops.popOverflow()
		if s := c.ops.slot(idx); s.op.internal() {
			c.ops.release(idx)
		} else {
			s.errno = int32(syscall.ECANCELED)
			c.ops.pushReady(idx)
		}
	}
	for i := uint32(0); i < c.ops.n; i++ {
		if s := c.ops.slot(i); s.state == slotSubmitted && s.op != opCancel && !s.cancelled {
			c.cancelSlot(i)
		}
	}
	c.flushOverflow()

	// 4. Wait for the kernel to hand every op back, bounded by StopTimeout.
	expired := false
	t := c.AfterFunc(c.opts.StopTimeout, func() { expired = true })
	for !expired && (c.ops.inKernel > 0 || c.ops.ovLen > 0 || c.ops.rdHead != noSlot) {
		c.Poll(true)
	}
	t.Stop()

	// 5. Run what the callbacks scheduled, then end coroutines (their
	// deferred calls may schedule more).
	c.pollUntilIdle()
	rep.Coroutines = c.stopCoroutines()
	c.pollUntilIdle()

	// 6. Whatever is left can never run.
	rep.TimersCancelled += len(c.timers)
	for len(c.timers) > 0 {
		c.timers.remove(len(c.timers) - 1)
	}
	c.takeBHs()
	for b := c.runqHead; b != nil; b = b.next {
		if b != c.kickBH && b != c.stopBH && b.Scheduled() {
			rep.LeakedBHs++
		}
	}
	var abandoned []uint32
	for i := uint32(0); i < c.ops.n; i++ {
		if s := c.ops.slot(i); s.state == slotSubmitted && !s.op.internal() {
			abandoned = append(abandoned, i)
		}
	}
	rep.OpsAbandoned = len(abandoned)
	rep.BHsRun = int(c.stats.BHsRun - bhBefore)

	stuck := c.ops.inKernel > 0 // the kernel may still write into what these ops point at
	c.closeResources()
	if stuck {
		graveyard.Lock()
		graveyard.keep = append(graveyard.keep, c.efdBuf)
		graveyard.Unlock()
	}
	if len(abandoned) > 0 {
		// The kernel may still write into their buffers while it tears the
		// ring down: keep them (and the arena) referenced forever.
		graveyard.Lock()
		for _, idx := range abandoned {
			s := c.ops.slot(idx)
			graveyard.keep = append(graveyard.keep, s.buf, s.bufs, s.iov)
			s.errno = int32(syscall.ECANCELED)
			s.cancelled = true
			c.ops.inKernel--
			c.ops.pushReady(idx)
		}
		if c.arena != nil {
			graveyard.keep = append(graveyard.keep, c.arena.mem)
			c.arena = nil
		}
		graveyard.Unlock()
		c.runReady()
		rep.OpsCancelled -= len(abandoned) // counted as abandoned, not cancelled
	}
	if c.arena != nil {
		c.arena.unmap()
	}
	if rep.Leaked() && c.stopErr == nil {
		c.stopErr = &leakError{name: c.name, rep: *rep}
	}
}

// pollUntilIdle polls without blocking until an iteration makes no
// progress and no non-idle BH is left, at most stopRounds times.
func (c *Context) pollUntilIdle() {
	for i := 0; i < stopRounds; i++ {
		progress := c.Poll(false)
		if urgent, _ := c.bhWork(); !progress && !urgent && c.ops.rdHead == noSlot {
			return
		}
	}
}

// graveyard keeps memory the kernel may still touch after an abandoned
// stop.
var graveyard struct {
	sync.Mutex
	keep []any
}

type leakError struct {
	name string
	rep  StopReport
}

func (e *leakError) Error() string {
	return "aio: context " + e.name + " stopped with " + strconv.Itoa(e.rep.LeakedBHs) +
		" BH(s) that never ran and " + strconv.Itoa(e.rep.OpsAbandoned) + " op(s) abandoned in the kernel"
}

func (e *leakError) Unwrap() error { return ErrLeaked }
