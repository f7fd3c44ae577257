package aio

import (
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/internal/invariants"
)

// Poll runs one iteration of the loop and reports progress: whether a
// completion callback, a non-idle BH, an fd handler or a timer ran. Idle
// BHs and pure wake-ups are not progress. Owner only (not from a coroutine:
// a coroutine yields instead). With blocking it first waits — submitting
// everything prepared, in the same io_uring_enter — until there is
// something to do; it never sleeps while a non-idle BH is scheduled or a
// completion is ready.
//
// Iteration order:
//
//  1. move overflowed ops into the SQ; if blocking and idle: compute the
//     timeout (next timer; 10ms when only idle BHs wait), spin for the
//     adaptive poll window, then submit-and-wait; otherwise submit unless
//     plugged
//  2. reap CQEs into the ready queue (internal ones — wake-ups, fd
//     readiness — are handled here)
//  3. run completion callbacks (inside an implicit Plug)
//  4. run BHs scheduled before this step
//  5. dispatch ready fd handlers (external ones only while enabled)
//  6. run expired timers
func (c *Context) Poll(blocking bool) bool {
	return c.poll(blocking, false)
}

// poll is one iteration. again says the caller will poll (blocking) again
// at once — the owner's main loop and WaitWhile do — so SQEs that completion
// callbacks prepared need not be submitted here: the next iteration's wait
// submits them in the same io_uring_enter that waits for their completions
// (QEMU's "submit at the next wait"). That makes a chain of dependent I/O
// (queue depth 1) cost one enter per op instead of two. Whoever stops
// calling poll(…, true) submits what is left (see WaitWhile, ownerMain).
func (c *Context) poll(blocking, again bool) bool {
	c.assertOwner("Poll")
	if invariants.Enabled && c.holder.Load() != nil {
		invariants.Failf("aio: Poll from a coroutine of %q; coroutines Yield", c.name)
	}
	if c.ndeferred > 0 {
		// Only a Poll nested in a plugged section finds deferred work
		// here: run it before waiting, as prepared SQEs are submitted.
		c.runDeferred()
	}
	if c.ops.ovLen > 0 {
		c.flushOverflow()
	}
	if blocking && !c.hasWork() {
		c.wait()
	} else if c.plug == 0 || (c.prepared > 0 && c.noBatch.Load() > 0) {
		c.submitPending()
	}

	c.plug++ // batch ops issued by completion callbacks
	c.reap()
	progress := c.runReady()
	if c.plug == 1 && c.ndeferred > 0 {
		c.runDeferred() // what the callbacks deferred joins their batch
	}
	c.plug--
	if c.plug == 0 && (c.ops.ovLen > 0 || (c.prepared > 0 && !(again && blocking))) {
		c.flushOverflow()
	}

	if c.bhHead.Load() != nil || c.runqHead != nil {
		progress = c.runBHs() || progress
	}
	if len(c.fdReady) > 0 || c.fdRunPos < len(c.fdRun) {
		progress = c.runFDHandlers() || progress
	}
	if len(c.timers) > 0 || c.expiredPos < len(c.expired) {
		progress = c.runTimers() || progress
	}
	return progress
}

// flushDeferred submits SQEs that poll(…, true) left prepared, for a caller
// that stops polling: nothing may stay unsubmitted once the loop returns to
// code that might not poll again soon.
func (c *Context) flushDeferred() {
	if c.plug == 0 && c.prepared > 0 {
		c.submitPending()
	}
}

// hasWork reports whether the next iteration has something to do without
// waiting.
func (c *Context) hasWork() bool {
	if c.ops.rdHead != noSlot || c.q.Ready() > 0 {
		return true
	}
	if c.bhHead.Load() != nil || c.runqHead != nil {
		if urgent, _ := c.bhWork(); urgent {
			return true
		}
	}
	if len(c.fdReady) > 0 && c.fdDispatchable() {
		return true
	}
	if c.fdRunPos < len(c.fdRun) {
		return true // a batch this wait is nested in (runFDHandlers)
	}
	if c.expiredPos < len(c.expired) {
		return true // due timers collected by a runTimers this wait is nested in
	}
	return len(c.timers) > 0 && c.timers[0].when <= nanotime()
}

// wait blocks until a CQE arrives (a completion, fd readiness, or the
// eventfd written by notify), the next timer is due, or — with only idle
// BHs scheduled — 10ms have passed. It submits everything prepared in the
// same io_uring_enter, so the loop never sleeps on unsubmitted SQEs.
func (c *Context) wait() {
	timeout := time.Duration(-1)
	if len(c.timers) > 0 {
		timeout = max(0, time.Duration(c.timers[0].when-nanotime()))
	}
	// head is the snapshot the sleep decision is made on: a BH pushed
	// after it changes bhHead, which the re-check below notices. One pushed
	// before it (after hasWork looked) is found by bhWork, which walks the
	// stack from a head at least as new, so it is never slept on.
	head := c.bhHead.Load()
	if head != nil || c.runqHead != nil {
		urgent, idle := c.bhWork()
		if urgent {
			c.submitPending()
			return
		}
		if idle && (timeout < 0 || timeout > idleTimeout) {
			timeout = idleTimeout
		}
	}
	if timeout == 0 {
		c.submitPending()
		return
	}
	if c.efdSlot == noSlot || c.ops.slot(c.efdSlot).state != slotSubmitted {
		// The eventfd read is not on the ring (still in the overflow queue,
		// or gone while stopping): a producer's write could not end this
		// wait, so bound it.
		if timeout < 0 || timeout > time.Millisecond {
			timeout = time.Millisecond
		}
	}
	if c.pollMax > 0 && c.spin(head) {
		return
	}
	// The notify_me protocol. Announce the sleep, then look once more for
	// work published by other goroutines: a producer pushes first and reads
	// notifyMe second, the owner stores notifyMe first and reads the stack
	// second, so (with sequentially consistent atomics) either the owner
	// sees the new BH here or the producer sees notifyMe and writes the
	// eventfd, whose armed read completes the wait below.
	c.notifyMe.Store(1)
	if c.bhHead.Load() != head {
		c.notifyMe.Store(0)
		c.submitPending()
		return
	}
	start := int64(0)
	if c.pollMax > 0 {
		start = nanotime()
	}
	c.stats.Waits++
	c.enter(1, timeout)
	c.notifyMe.Store(0)
	if c.pollMax > 0 {
		c.adaptPoll(time.Duration(nanotime() - start))
	}
}

// spin busy-polls for the current poll window, submitting first so that
// the kernel can complete what it polls for. It returns true when work
// appeared.
func (c *Context) spin(head *BH) bool {
	if c.pollWindow <= 0 {
		return false
	}
	c.submitPending()
	deadline := nanotime() + int64(c.pollWindow)
	for i := 0; ; i++ {
		if c.q.Ready() > 0 || c.bhHead.Load() != head {
			c.stats.SpinHits++
			return true
		}
		if i&63 == 63 && nanotime() >= deadline {
			return false
		}
	}
}

// adaptPoll adjusts the poll window after a sleep of length slept
// (NextPollWindow).
func (c *Context) adaptPoll(slept time.Duration) {
	c.pollWindow = NextPollWindow(c.pollWindow, c.pollMax, slept)
}

// NextPollWindow is the adaptive busy-poll rule, as QEMU's: after a wait
// of length waited, a poll window of window bounded by bound grows when
// the wait was shorter than the bound (spinning would have caught it:
// doubled, opening at 4 µs) and shrinks when it was longer (spinning would
// have been wasted: halved, closed below 4 µs). bench's bare ring uses the
// same rule for its own spin, measuring each wait spin included.
func NextPollWindow(window, bound, waited time.Duration) time.Duration {
	const minWindow = 4 * time.Microsecond
	switch {
	case waited < bound:
		return min(bound, max(minWindow, 2*window))
	case window > 0:
		if window /= 2; window < minWindow {
			return 0
		}
	}
	return window
}

// notify wakes the owner if it is (about to be) asleep. Cheap when it is
// awake: one atomic load.
func (c *Context) notify() {
	if c.notifyMe.Load() == 0 {
		return
	}
	if c.notified.Load() || !c.notified.CompareAndSwap(false, true) {
		return // a wake-up is already on its way
	}
	if c.efdRef.Add(1)&efdClosed == 0 {
		c.wakeups.Add(1)
		one := [8]byte{1}
		for {
			if _, err := unix.Write(c.efd, one[:]); err != unix.EINTR {
				break
			}
		}
	}
	c.efdRef.Add(-1)
}

// Busy reports whether the owner is running, or a wake-up is on its way
// to it: work handed to the Context now runs soon, without waiting for
// anything else to happen. False means the owner sleeps (or stopped) with
// nothing sent to wake it: only a completion, a timer or another
// Schedule will. A hint for a goroutine deciding whether to spin for
// the Context's result or to sleep; any goroutine.
func (c *Context) Busy() bool {
	if c.state.Load() != stateRunning {
		return false
	}
	return c.notifyMe.Load() == 0 || c.notified.Load()
}

// armEventfd keeps one eventfd read in flight on the ring: a producer's
// write completes it and so ends a blocking wait.
func (c *Context) armEventfd() {
	if c.cancelAll {
		return
	}
	idx, _ := c.newOp(opEventfd, nil, nil, 0)
	c.efdSlot = idx
	c.enqueue(idx)
}

func (c *Context) eventfdDone(idx uint32, res int32) {
	c.ops.release(idx)
	c.efdSlot = noSlot
	c.stats.Wakeups++
	// Accept the notification: from here on a producer that finds
	// notifyMe set writes again. Work it published before this point is
	// taken by this iteration's runBHs, which comes after reap.
	c.notified.Store(false)
	if res >= 0 || res == -int32(unix.EAGAIN) || res == -int32(unix.EINTR) {
		c.armEventfd()
	}
}

// WaitWhile runs the loop until cond returns false; cond is evaluated
// before each iteration and must be cheap. It reports whether it waited at
// all.
//
// Who may call it (drain.md §1.2, K1):
//   - c's owner: it polls c. Nested inside a callback is fine.
//   - the owner of a main Context, for any c: it polls its own main loop,
//     never c's; whoever changes what cond reads must call main.Kick()
//     afterwards.
//
// Anything else — an IOThread waiting on another IOThread's Context, a
// coroutine, a plain goroutine — panics: a foreign poll races with the
// owner, and two IOThreads waiting on each other deadlock.
func (c *Context) WaitWhile(cond func() bool) bool {
	loop := c
	if !c.InContext() || c.holder.Load() != nil {
		loop = callerContext()
		if loop == nil || !loop.main {
			name := "a goroutine that owns no Context"
			if loop != nil {
				name = "IOThread " + loop.name
			} else if c.holder.Load() != nil {
				name = "a coroutine"
			}
			invariants.Failf("aio: WaitWhile on Context %s from %s; only its owner, or the main Context's owner, may wait", c.name, name)
		}
	}
	// Register before the first evaluation of cond (drain.md K3): a writer
	// that changes cond's inputs and then calls Kick sees the waiter.
	loop.waiters.Add(1)
	waited := false
	for cond() {
		waited = true
		loop.poll(true, true)
	}
	loop.waiters.Add(-1)
	loop.flushDeferred()
	return waited
}

// exitedNow reports whether c's owner goroutine has finished.
func (c *Context) exitedNow() bool {
	select {
	case <-c.exited:
		return true
	default:
		return false
	}
}

// Kick wakes a WaitWhile that polls c (normally the main Context): if
// anyone waits, it schedules an empty BH on c, which ends c's blocking wait
// so the waiter re-evaluates its condition. Any goroutine; one atomic load
// when nobody waits. Change the waited-on state before calling it.
func (c *Context) Kick() {
	if c.waiters.Load() > 0 {
		c.kickBH.Schedule()
	}
}

// Waiters reports how many WaitWhile calls poll c right now.
func (c *Context) Waiters() int { return int(c.waiters.Load()) }

// Run runs fn on c and returns after it has run.
//   - From c's owner (or the coroutine holding c's token): fn runs at once.
//   - From a main Context's owner: fn is scheduled on c and the caller
//     waits in WaitWhile on its own loop, so main keeps running its events.
//   - From any other goroutine that owns no Context: it blocks.
//   - From an IOThread's owner for another Context: panics (drain.md K1;
//     go via the main Context, or from a coroutine use Co.RunOn).
//
// It allocates (a closure and, when blocking, a channel): it is for control
// paths, not per-request work. Run on a Context that stops first panics
// from a plain goroutine; from main it would wait forever, so stop
// IOThreads only when main no longer runs work on them.
func (c *Context) Run(fn func()) {
	if c.InContext() {
		fn()
		return
	}
	if st := c.state.Load(); st != stateRunning {
		invariants.Failf("aio: Run on Context %s that is not running", c.name)
	}
	if caller := callerContext(); caller != nil {
		if !caller.main {
			invariants.Failf("aio: Run on Context %s from IOThread %s; an IOThread may not wait for another (go via the main Context)", c.name, caller.name)
		}
		var done bool
		c.Schedule(func() {
			fn()
			caller.Schedule(func() { done = true })
		})
		// An exiting Context kicks every main Context (see ownerMain), so
		// a target that stops before running fn ends this wait too.
		caller.WaitWhile(func() bool { return !done && !c.exitedNow() })
		if !done {
			// fn may have run during the stop, its done BH already pushed
			// to us before the exit: run our BHs once to see it.
			caller.Poll(false)
		}
		if !done {
			invariants.Failf("aio: Context %s stopped before a Run function ran", c.name)
		}
		return
	}
	ch := make(chan struct{})
	c.Schedule(func() {
		defer close(ch)
		fn()
	})
	select {
	case <-ch:
	case <-c.exited:
		select {
		case <-ch: // it ran during the stop
		default:
			invariants.Failf("aio: Context %s stopped before a Run function ran", c.name)
		}
	}
}
