// Package aio runs callbacks on one owner goroutine per Context. It turns
// CQEs, bottom halves, timers and fd readiness into calls, and offers typed
// operations (read, write, fsync and so on) that prepare SQEs on the
// Context's io_uring ring. It is ringblk's AioContext; it knows callbacks,
// not requests.
//
// # Threading rule
//
// A Context is one event loop owned by one goroutine locked to its OS thread
// (an IOThread). Its ring, op slots, timers, fd handlers, arena and BH run
// queue belong to that owner and are never locked: only the owner — or a
// coroutine while it holds the Context's run token (Co) — may call the
// owner-only methods (ops, Plug/Unplug, Poll, WaitWhile, AfterFunc,
// SetFDHandler, Arena). Every callback (Done.OpDone, BHs, timers, fd
// handlers) runs on the owner. Other goroutines enter through a few
// thread-safe calls: BH.Schedule, Context.Schedule, Co.Wake, Kick, Run,
// DisableExternal/EnableExternal and Stop. Under the invariants build tag
// (and -race) owner-only methods check their caller and panic with
// "assertion failed".
//
// One Context per physical core, pinned, plus a main Context for control
// work is the default arrangement (StartDefault); core counts and the
// cache-line size used to pad shared atomics come from cpuid.
//
// # Loop iteration
//
// Poll(blocking) runs one iteration:
//
//  1. Move overflowed ops into the SQ. If blocking and there is nothing to
//     do, compute the timeout (next timer; at most 10ms while only idle BHs
//     wait), spin for the adaptive poll window (Options.PollTime), then
//     submit-and-wait in one io_uring_enter. Otherwise submit what was
//     prepared, unless plugged.
//  2. Reap CQEs into the ready queue, rejecting stale ones by generation.
//     Short transfers and EAGAIN/EINTR are resubmitted here; internal CQEs
//     (wake-ups, fd readiness) are handled here.
//  3. Run completion callbacks, oldest first, inside an implicit Plug: ops
//     they issue are submitted in one batch afterwards.
//  4. Run the BHs scheduled before this step.
//  5. Dispatch fired fd handlers (external ones only while enabled).
//  6. Run expired timers.
//
// A non-blocking Poll enters the ring only to submit; it reaps what the
// ring has already posted (a kernel ring with DEFER_TASKRUN posts pending
// completions from Ready/Reap when the kernel flags task work; the uringtest
// fake completes operations only inside enters). Code that waits for a
// completion uses WaitWhile, never a loop of non-blocking polls.
//
// Progress means a callback, a non-idle BH, an fd handler or a timer ran.
// Callbacks never run from inside the call that issued an op, and reaping
// is re-entrant: a callback may start a nested WaitWhile on the same
// Context, which continues with the ready queue and the ring (drain.md R8,
// U6).
//
// WaitWhile(cond) polls until cond is false. Only the Context's owner may
// wait on its own loop; the main Context's owner may wait for conditions
// driven by other Contexts — it polls its own loop and is woken by Kick,
// which the writer of the condition calls after writing. No goroutine ever
// polls another's loop; an IOThread waiting for another IOThread panics.
//
// # Wake-up protocol
//
// An eventfd read is kept armed on the ring. Cross-goroutine Schedule
// pushes onto a lock-free MPSC stack (reversed to FIFO by the owner) and
// then reads notifyMe; the owner stores notifyMe before its last look at
// the stack and sleeps only if the stack is unchanged. Go's atomics are
// sequentially consistent, so either the owner sees the work or the
// producer sees notifyMe and writes the eventfd, whose CQE ends the wait:
// no lost wake-up. While the owner is awake notifyMe is zero and Schedule
// costs no system call; while a wake-up is already on its way (notified),
// further producers skip the write. Nothing spins while idle unless
// PollTime asks for it.
//
// # Bottom halves
//
// BHs run in scheduling order; a BH scheduled while BHs run goes to a later
// iteration (so a self-rescheduling BH cannot starve I/O); a nested Poll in
// a BH first finishes the BHs already taken. Idle BHs are not progress and
// do not keep a blocking Poll from sleeping. No correctness property may
// depend on BH order: to know that everything scheduled before some point
// has run, poll until no progress; a single marker BH is not a barrier.
//
// # Batching (Plug)
//
// Plug/Unplug nest per Context. While plugged, prepared SQEs stay in the SQ
// and the outermost Unplug submits them with one io_uring_enter. Outside a
// plugged section an op is submitted at once. A full SQ is submitted early
// (it is the batch); if the kernel still has no room, ops wait in an
// in-order overflow queue and are never failed. A blocking wait always
// submits first (submit and wait are one io_uring_enter), so the loop never
// sleeps while it holds unsubmitted SQEs, not even in a nested wait inside a
// plugged section (drain.md D18, U7).
//
// Defer postpones a driver's work to the end of the plugged section (QEMU's
// defer_call): it runs once however often it was deferred, still plugged, so
// what it issues joins the batch; a nested wait runs it first, as it
// submits prepared SQEs first.
//
// # Ops and memory
//
// Each op occupies a slot of a table preallocated to Options.Slots and
// grown by chunks up to Options.MaxSlots; user_data is the slot index and
// a generation, never a Go pointer. Callers that take work from outside
// admit it while SlotsFree reports room (block's front ends park the rest),
// so the table stays within its cap; an op is never refused, one started
// with the table full grows it and is counted in Stats.SlotsOverCap. The slot keeps the File (an
// in-flight count defers its close), the buffers and its own iovec array
// referenced until the CQE. Buffers inside the Context's arena (mmap'd,
// registered as fixed buffer 0, 4096-aligned) go out as READ_FIXED and
// WRITE_FIXED. Completion targets are interfaces implemented by the
// caller's preallocated structs, so the op path allocates nothing.
//
// # Errors
//
// Operating errors are returned: OpDone gets a syscall.Errno, synchronous
// helpers return *OpError naming the op and offset. Programmer errors (an
// owner-only call from elsewhere, Unplug without Plug, an op on a closed
// File) panic with "assertion failed".
//
// # Stop
//
// Stop runs pending BHs and completions, cancels timers, fd handlers and
// in-flight ops (ECANCELED to their Done), ends unfinished coroutines,
// closes the ring, and waits for the owner goroutine to exit. StopReport
// counts what it cancelled; BHs that could never run make Stop return an
// error wrapping ErrLeaked.
package aio
