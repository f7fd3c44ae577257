package uring

import (
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/ringblk/ringblk/internal/invariants"
	"golang.org/x/sys/unix"
)

// Ring is one io_uring instance: the kernel's SQ and CQ rings and SQE array,
// mapped into this process, plus the few words of kernel-visible scratch the
// ring itself needs. It implements Queue.
//
// Ownership: one goroutine, the owner, calls every method. With
// IORING_SETUP_SINGLE_ISSUER (chosen on Linux 6.1+) the kernel also ties the
// ring to one OS thread, the one that makes the first io_uring_enter (see
// New): the owner calls runtime.LockOSThread before its first SubmitAndWait
// and stays locked while it uses the ring.
//
// Submission side. The owner writes SQEs and the SQ tail; the kernel writes
// the SQ head. sqeTail counts SQEs handed out by GetSQE; sqPublished is the
// last value stored to the kernel's tail word.
//
//	INVARIANT: head <= sqPublished <= sqeTail <= head + sqEntries
//	           (uint32 arithmetic, so wrap-around is harmless).
//	           SQE slots [head, sqPublished) belong to the kernel,
//	           [sqPublished, sqeTail) to the owner (prepared, unpublished),
//	           the rest are free.
//
// Completion side. The kernel writes CQEs and the CQ tail; the owner writes
// the CQ head after copying CQEs out. cqSeen mirrors the head word so the
// owner never has to load it.
//
//	INVARIANT: cqSeen <= tail <= cqSeen + cqEntries.
//
// State machine: open --Close--> closed. New binds nothing to a thread; the
// first io_uring_enter binds the ring to the calling thread (enables a ring
// created with IORING_SETUP_R_DISABLED, registers the ring fd), see bind.
type Ring struct {
	// Hot fields first: everything GetSQE, SubmitAndWait and Reap touch.

	sqHead      *atomic.Uint32 // kernel-written: SQEs consumed
	sqTail      *atomic.Uint32 // owner-written: SQEs published
	sqFlags     *atomic.Uint32 // kernel-written: IORING_SQ_*
	sqes        []SQE          // the mmap'd SQE array
	sqMask      uint32
	sqEntries   uint32
	sqeTail     uint32 // SQEs handed out by GetSQE
	sqPublished uint32 // last value stored to *sqTail

	cqHead    *atomic.Uint32 // owner-written: CQEs consumed
	cqTail    *atomic.Uint32 // kernel-written: CQEs posted
	cqes      []CQE          // the mmap'd CQE array
	cqMask    uint32
	cqEntries uint32
	cqSeen    uint32 // == *cqHead, kept locally

	enterFd      uintptr // ring fd, or its registered index with IORING_ENTER_REGISTERED_RING
	enterFlags   uint32  // IORING_ENTER_REGISTERED_RING or 0
	closed       bool
	bound        bool   // the first enter has run (see bind)
	sqpoll       bool   // IORING_SETUP_SQPOLL: a kernel thread consumes the SQ
	deferTaskrun bool   // IORING_SETUP_DEFER_TASKRUN: completions post only in our GETEVENTS enters
	extArg       bool   // IORING_FEAT_EXT_ARG: enter takes a timeout
	enters       uint64 // io_uring_enter calls made (Enters)

	// Kernel-visible scratch. The kernel reads (and for some registrations
	// writes) these words during a system call, or — timeoutTS — when it
	// consumes the SQE that points at them. They live here, in the heap
	// object the owner keeps alive, never on a goroutine stack (stacks move).
	waitTS    Timespec     // the EXT_ARG wait timeout
	waitArg   getEventsArg // waitArg.ts == &waitTS
	timeoutTS []Timespec   // per SQ slot: IORING_OP_TIMEOUT fallback without EXT_ARG
	fileFd    int32        // UpdateFile's one-entry fd array
	update    rsrcUpdate   // UpdateFile, ring fd (un)registration
	workers   [2]uint32    // SetIOWQMaxWorkers: bounded, unbounded
	aff       unix.CPUSet  // SetWorkerAffinity's mask, read by the kernel

	// Cold fields.
	fd         int
	setupFlags uint32 // as passed to io_uring_setup, including R_DISABLED
	params     Params
	ops        [4]uint64 // probe result: bit n set when opcode n is supported
	wantRingFd bool      // register the ring fd at bind (WithoutRegisteredRing clears it)
	ringIndex  int       // registered ring fd index in the owner thread's table, or -1
	ownerTid   int       // thread that bound the ring
	files      int       // registered file table size (0: none)
	buffers    int       // registered buffers (0: none)
	sqRing     []byte    // the IORING_OFF_SQ_RING mapping
	cqRing     []byte    // the IORING_OFF_CQ_RING mapping (== sqRing with FEAT_SINGLE_MMAP)
	sqeMem     []byte    // the IORING_OFF_SQES mapping
}

var _ Queue = (*Ring)(nil)

// ErrWrongThread reports an io_uring_enter or io_uring_register from an OS
// thread other than the one the ring is bound to. It happens only on rings
// set up with IORING_SETUP_SINGLE_ISSUER when the owner goroutine was not
// locked to its thread (runtime.LockOSThread) or another goroutine used the
// ring.
var ErrWrongThread = errors.New("uring: ring used from an OS thread other than its owner (IORING_SETUP_SINGLE_ISSUER): lock the owner goroutine with runtime.LockOSThread before its first submit")

// waitTimeoutUserData tags the IORING_OP_TIMEOUT SQE that bounds a wait on
// kernels without IORING_FEAT_EXT_ARG. Reap drops its CQE.
const waitTimeoutUserData = ReservedUserData | 1

// GetSQE returns the next free SQE, zeroed, or nil when the SQ is full or the
// ring is closed. It never blocks and never enters the kernel. On an SQPOLL
// ring the SQ can still look full just after its CQEs were reaped (the SQ
// thread moves the head after a whole batch); SubmitAndWait(0, 0) then waits
// for room.
func (r *Ring) GetSQE() *SQE {
	if r.closed {
		return nil
	}
	// Acquire load of the SQ head: the kernel's reads of a consumed SQE
	// happen before its head store, so once we see the new head the slot is
	// ours to overwrite. (Go's atomics are sequentially consistent, which is
	// stronger than the acquire liburing uses.)
	if r.sqeTail-r.sqHead.Load() >= r.sqEntries {
		return nil
	}
	sqe := &r.sqes[r.sqeTail&r.sqMask]
	r.sqeTail++
	*sqe = SQE{}
	return sqe
}

// Pending reports how many SQEs were prepared and not yet consumed by the
// kernel: those not submitted yet, plus any the kernel left in the SQ (a
// short submit before IORING_SETUP_SUBMIT_ALL, or an SQ thread that has not
// caught up).
func (r *Ring) Pending() int {
	if r.closed {
		return 0
	}
	// Acquire load of the SQ head (see GetSQE).
	return int(r.sqeTail - r.sqHead.Load())
}

// SQEntries reports the SQ size chosen at setup.
func (r *Ring) SQEntries() int {
	if r.closed {
		return 0
	}
	return int(r.sqEntries)
}

// CQEntries reports the CQ size chosen at setup.
func (r *Ring) CQEntries() int {
	if r.closed {
		return 0
	}
	return int(r.cqEntries)
}

// SubmitAndWait publishes every prepared SQE and, in one io_uring_enter,
// submits them and waits until at least minComplete CQEs are ready or timeout
// has passed (timeout < 0: no limit; minComplete <= 0 or timeout == 0: no
// wait). It returns how many SQEs the kernel consumed; in SQPOLL mode, how
// many it published for the SQ thread.
//
// The call enters the kernel only when there is something to do: SQEs to
// submit, a wait, a CQ overflow backlog to flush, or task work to run. With
// IORING_SETUP_DEFER_TASKRUN, completions are posted only while the owner is
// inside io_uring_enter with IORING_ENTER_GETEVENTS, so on such rings every
// call enters the kernel with GETEVENTS, even SubmitAndWait(0, 0): that call
// is how an event loop that has nothing to submit lets finished I/O post its
// CQEs without blocking.
//
// In SQPOLL mode the kernel thread consumes the SQ on its own; when the SQ is
// full, SubmitAndWait first waits until the thread has made room
// (IORING_ENTER_SQ_WAIT), so GetSQE succeeds afterwards.
//
// A timeout or an interrupted wait (EINTR) returns err == nil. ErrBusy means
// the kernel refused new work until completions are reaped.
func (r *Ring) SubmitAndWait(minComplete int, timeout time.Duration) (int, error) {
	if r.closed {
		return 0, ErrClosed
	}
	// Acquire load of the CQ tail: if enough CQEs are already posted there
	// is nothing to wait for.
	wait := minComplete > 0 && timeout != 0 && r.cqTail.Load()-r.cqSeen < clampWait(minComplete, r.cqEntries)
	timer := false
	if wait && timeout > 0 && !r.extArg {
		if timer = r.armWaitTimeout(timeout, minComplete); !timer {
			// No SQE left for the timer: submit without waiting; the caller
			// re-checks its state and calls again with room in the SQ.
			wait = false
		}
	}
	published := r.publish()
	// Acquire load of the SQ head (see GetSQE).
	toSubmit := r.sqeTail - r.sqHead.Load()
	if invariants.Enabled && toSubmit > r.sqEntries {
		invariants.Failf("uring: %d SQEs outstanding in an SQ of %d", toSubmit, r.sqEntries)
	}

	var flags uint32
	if r.sqpoll {
		// publish's tail store and this load are both sequentially
		// consistent, so they are not reordered (the full barrier liburing
		// puts here): either the SQ thread sees our tail before it sleeps, or
		// we see IORING_SQ_NEED_WAKEUP and wake it. The wake-up is an *enter*
		// flag; the ring flag only tells us it is needed.
		if r.sqFlags.Load()&IORING_SQ_NEED_WAKEUP != 0 {
			flags |= IORING_ENTER_SQ_WAKEUP
		}
		// The SQ thread commits the SQ head only after it has issued a
		// whole batch, so the CQEs of a batch can be reaped while GetSQE
		// still sees a full SQ. Rather than return to a caller that may
		// then have nothing in flight to wait for, wait for room.
		if toSubmit == r.sqEntries {
			flags |= IORING_ENTER_SQ_WAIT
		}
	}
	if wait || r.deferTaskrun || r.cqNeedsFlush() {
		flags |= IORING_ENTER_GETEVENTS
	}
	if flags == 0 && (toSubmit == 0 || r.sqpoll) {
		return int(published), nil // nothing for the kernel to do
	}

	var n int
	var err error
	switch {
	case !wait:
		n, err = r.enter(toSubmit, 0, flags, nil, 0)
	case timeout > 0 && r.extArg:
		r.waitTS = durationTimespec(timeout)
		// SAFETY: waitArg and waitTS are fields of r, which the caller keeps
		// alive; the kernel copies both during this call.
		n, err = r.enter(toSubmit, clampWait(minComplete, r.cqEntries), flags|IORING_ENTER_EXT_ARG,
			unsafe.Pointer(&r.waitArg), unsafe.Sizeof(r.waitArg))
	default:
		n, err = r.enter(toSubmit, clampWait(minComplete, r.cqEntries), flags, nil, 0)
	}
	if r.sqpoll && err == nil {
		n = int(published)
	}
	if timer && (r.sqpoll || n == int(toSubmit)) && n > 0 {
		n-- // the timer SQE, queued last, is the ring's own, not the caller's
	}
	return n, err
}

// publish stores the SQ tail so the kernel sees every prepared SQE, and
// returns how many SQEs it newly published.
func (r *Ring) publish() uint32 {
	n := r.sqeTail - r.sqPublished
	if n != 0 {
		// Release store of the SQ tail: the SQE contents written by the prep
		// helpers happen-before the kernel's read of this tail, hence before
		// its reads of the SQEs. (The SQ index array was identity-mapped once
		// at setup, so there is nothing else to publish.)
		r.sqTail.Store(r.sqeTail)
		r.sqPublished = r.sqeTail
	}
	return n
}

// armWaitTimeout prepares the IORING_OP_TIMEOUT that bounds a wait on kernels
// without IORING_FEAT_EXT_ARG. It fires with -ETIME after timeout, or with 0
// once minComplete other CQEs have been posted; either way its CQE wakes the
// waiter, and Reap drops it (ReservedUserData). It reports false when the SQ
// has no free entry.
func (r *Ring) armWaitTimeout(timeout time.Duration, minComplete int) bool {
	sqe := r.GetSQE()
	if sqe == nil {
		return false
	}
	// The timespec belongs to this SQE's slot: the kernel copies it when it
	// consumes the SQE, and the slot (and so this timespec) is not reused
	// before the kernel's head passes it.
	ts := &r.timeoutTS[(r.sqeTail-1)&r.sqMask]
	*ts = durationTimespec(timeout)
	sqe.PrepTimeout(ts, uint64(minComplete), 0, waitTimeoutUserData)
	return true
}

// Ready reports how many CQEs are waiting in the CQ. When the CQ is empty but
// the kernel holds completions it has not posted yet (an overflow backlog, or
// task work flagged by IORING_SQ_TASKRUN), Ready first enters the kernel to
// post them. On kernels without IORING_FEAT_EXT_ARG the count may include a
// ring-internal timeout CQE that Reap consumes but does not return.
func (r *Ring) Ready() int {
	if r.closed {
		return 0
	}
	// Acquire load of the CQ tail: CQEs below it are fully written.
	n := r.cqTail.Load() - r.cqSeen
	if n == 0 && r.cqNeedsFlush() {
		r.getEvents()
		n = r.cqTail.Load() - r.cqSeen
	}
	return int(n)
}

// Reap copies up to len(dst) CQEs into dst in completion order, consumes
// them with one store of the CQ head, and returns how many it copied. CQEs
// whose user_data carries ReservedUserData belong to the ring and are
// consumed without being returned. If dst still has room and the kernel
// flags an overflow backlog or pending task work, Reap enters the kernel once
// (to_submit 0, GETEVENTS) to have them posted, then reaps again, so no
// completion is lost. No locks, no allocation.
func (r *Ring) Reap(dst []CQE) int {
	if r.closed || len(dst) == 0 {
		return 0
	}
	n := r.reap(dst)
	if n < len(dst) && r.cqNeedsFlush() {
		r.getEvents()
		n += r.reap(dst[n:])
	}
	return n
}

func (r *Ring) reap(dst []CQE) int {
	head := r.cqSeen
	// Acquire load of the CQ tail: pairs with the kernel's release store
	// after it wrote the CQEs, so the copies below see complete entries.
	tail := r.cqTail.Load()
	if invariants.Enabled && tail-head > r.cqEntries {
		invariants.Failf("uring: CQ tail %d is %d entries past head %d (CQ has %d)",
			tail, tail-head, head, r.cqEntries)
	}
	n := 0
	for head != tail && n < len(dst) {
		cqe := &r.cqes[head&r.cqMask]
		head++
		if cqe.UserData&ReservedUserData != 0 {
			continue // the ring's own wait timeout
		}
		dst[n] = *cqe
		n++
	}
	if head != r.cqSeen {
		r.cqSeen = head
		// Release store of the CQ head: our copies of the CQEs above
		// happen-before the kernel sees these slots as free and reuses them.
		r.cqHead.Store(head)
	}
	return n
}

// cqNeedsFlush reports whether the kernel holds completions that only an
// io_uring_enter with GETEVENTS will post: an overflow backlog
// (IORING_SQ_CQ_OVERFLOW, kept without loss under IORING_FEAT_NODROP) or
// pending task work (IORING_SQ_TASKRUN, raised with
// IORING_SETUP_TASKRUN_FLAG under COOP_TASKRUN and DEFER_TASKRUN).
func (r *Ring) cqNeedsFlush() bool {
	// Acquire load of the kernel-written SQ flags word.
	return r.sqFlags.Load()&(IORING_SQ_CQ_OVERFLOW|IORING_SQ_TASKRUN) != 0
}

// getEvents enters the kernel with nothing to submit and no wait, which posts
// the overflow backlog and runs pending task work. Ready and Reap have no
// error result: a failure here leaves the CQEs in the kernel and the next
// SubmitAndWait reports it.
func (r *Ring) getEvents() {
	_, _ = r.enter(0, 0, IORING_ENTER_GETEVENTS, nil, 0)
}

// Enters reports how many io_uring_enter calls the ring has made (for
// benchmarks and tests that count system calls per I/O). Owner only.
func (r *Ring) Enters() uint64 { return r.enters }

// enter is the one call site of io_uring_enter on the ring's hot path.
func (r *Ring) enter(toSubmit, minComplete, flags uint32, arg unsafe.Pointer, argSize uintptr) (int, error) {
	if !r.bound {
		if err := r.bind(); err != nil {
			return 0, err
		}
	}
	r.enters++
	n, errno := sysEnter(r.enterFd, toSubmit, minComplete, flags|r.enterFlags, arg, argSize)
	if errno == 0 {
		return int(n), nil
	}
	if r.enterFlags != 0 && (errno == unix.EBADF || errno == unix.EINVAL) && unix.Gettid() != r.ownerTid {
		// The registered ring fd lives in the table of the thread that
		// registered it. The owner goroutine moved to another thread (it did
		// not lock it), so fall back to the plain fd for good; on a
		// SINGLE_ISSUER ring the retry reports ErrWrongThread.
		r.enterFd, r.enterFlags = uintptr(r.fd), 0
		r.params.RegisteredRing = false
		n, errno = sysEnter(r.enterFd, toSubmit, minComplete, flags, arg, argSize)
		if errno == 0 {
			return int(n), nil
		}
	}
	return 0, r.enterError(errno)
}

// enterError maps an io_uring_enter errno. Every case says what the kernel
// means and what the caller does.
func (r *Ring) enterError(errno syscall.Errno) error {
	switch errno {
	case unix.EINTR:
		// A signal interrupted the wait. Anything submitted was reported as
		// a positive count instead, so nothing was lost: return, the caller
		// re-checks its state.
		return nil
	case unix.ETIME:
		// The EXT_ARG timeout expired before minComplete CQEs arrived.
		return nil
	case unix.EAGAIN, unix.EBUSY:
		// The kernel could not allocate requests, or the CQ backlog is full:
		// reap completions, then submit again.
		return ErrBusy
	case unix.EEXIST:
		// SINGLE_ISSUER/DEFER_TASKRUN: called from a thread that is not the
		// ring's submitter task.
		return fmt.Errorf("%w (enter from thread %d, ring bound to thread %d)", ErrWrongThread, unix.Gettid(), r.ownerTid)
	case unix.EBADR:
		// Completions were dropped: the kernel could not keep an overflow
		// backlog (out of memory). The ring keeps working but requests lost
		// their CQEs, which the caller's bookkeeping must treat as fatal.
		return fmt.Errorf("uring: io_uring_enter: the kernel dropped completions after a CQ overflow: %w", errno)
	case unix.EOWNERDEAD:
		return fmt.Errorf("uring: io_uring_enter: the SQPOLL thread has exited: %w", errno)
	default:
		// EBADFD (ring disabled), EFAULT, EINVAL, …: a programming or
		// environment error that retrying will not fix.
		return fmt.Errorf("uring: io_uring_enter: %w", errno)
	}
}

// bind runs before the first io_uring_enter, on the owner's thread. A
// SINGLE_ISSUER ring is created disabled (IORING_SETUP_R_DISABLED) so that
// New may run on any goroutine; enabling it here makes the calling thread the
// kernel's submitter task. The ring fd is registered in this thread's
// io_uring table too (IORING_REGISTER_RING_FDS), so enter can skip the fd
// lookup; that table is per thread, which is why it waits until here. Failing
// to register the ring fd is not an error: enter just uses the plain fd.
func (r *Ring) bind() error {
	r.ownerTid = unix.Gettid()
	if r.setupFlags&IORING_SETUP_R_DISABLED != 0 {
		if _, errno := sysRegister(r.fd, IORING_REGISTER_ENABLE_RINGS, nil, 0); errno != 0 {
			return fmt.Errorf("uring: enabling the ring on its owner thread: %w", errno)
		}
		r.setupFlags &^= IORING_SETUP_R_DISABLED
	}
	r.bound = true
	if r.wantRingFd {
		r.registerRingFd()
	}
	return nil
}

// durationTimespec converts d (> 0) to a relative kernel timespec.
func durationTimespec(d time.Duration) Timespec {
	return Timespec{Sec: int64(d / time.Second), Nsec: int64(d % time.Second)}
}

// clampWait bounds min_complete to the CQ size, as the kernel does.
func clampWait(minComplete int, cqEntries uint32) uint32 {
	if minComplete > int(cqEntries) {
		return cqEntries
	}
	return uint32(minComplete)
}
