// Package uring is a faithful, allocation-free Go view of one io_uring instance.
//
// It knows the kernel ABI (abi.go), how to prepare SQEs (prep.go), and how to
// set up, submit to, reap from and register resources with a ring (*Ring). It
// knows nothing about requests: user_data is an opaque 64-bit value that the
// caller (the aio event loop) fills with a slot index and generation, and
// that comes back untouched in the CQE. The only values the package reserves
// are those with ReservedUserData set, which Reap never returns.
//
// # Model
//
// A ring is two queues in memory shared with the kernel:
//
//	owner                                  kernel
//	GetSQE → prep → SubmitAndWait ──SQ──▶  runs the operations
//	Reap(dst) ◀─────────────────────CQ──  posts one CQE per operation
//
// GetSQE hands out a zeroed slot of the mmap'd SQE array (nil when the SQ is
// full: the caller queues the operation itself and retries after the next
// submit). The prep helpers fill it in place. SubmitAndWait publishes the SQ
// tail and makes one io_uring_enter that both submits the batch and, if
// asked, waits for completions. Reap copies CQEs into a caller-owned slice and
// releases them with one store of the CQ head. None of this allocates, locks
// or spins; the Queue interface keeps that shape so one call covers a batch,
// and uring/uringtest implements the same interface deterministically.
//
// New chooses the best setup the kernel offers (SINGLE_ISSUER|DEFER_TASKRUN,
// else COOP_TASKRUN, SUBMIT_ALL, a CQ twice the SQ) and falls back down to
// Linux 5.10; Params and Supports report what it chose and which opcodes the
// kernel supports. The design note docs/design/own-ring.md explains why.
//
// # Ownership
//
// One goroutine owns a ring and makes every call; nothing is safe for
// concurrent use and nothing needs a lock. On Linux 6.1+ the ring is also
// bound to one OS thread (IORING_SETUP_SINGLE_ISSUER, required by
// DEFER_TASKRUN, and the registered ring fd, which lives in a per-thread
// table): the thread that makes the first io_uring_enter. The owner therefore
// calls runtime.LockOSThread before its first SubmitAndWait and stays locked.
// New itself may run on any goroutine. Using a bound ring from another thread
// fails with ErrWrongThread rather than misbehaving. Close belongs on the
// owner thread too (see Close).
//
// # Memory rules
//
// The kernel reads and writes memory behind the garbage collector's back, so:
//
//   - Buffers, iovec arrays, timespecs and eventfd words that an SQE points
//     at must not live on a goroutine stack (stacks move) and must stay
//     valid until the operation's CQE is reaped. Use mmap'd memory (an
//     arena), not the Go heap, for I/O buffers; registered buffers must be
//     mmap'd.
//   - An fd named in an SQE must stay open until its CQE arrives; a closed
//     or invalid fd yields a -EBADF CQE, never a hang.
//   - The ring's own kernel-visible scratch (the wait timespec, the
//     io_uring_getevents_arg, the registration arguments) lives in the Ring,
//     which is heap-allocated and does not move.
//   - Ring head and tail words are accessed with sync/atomic on the mmap'd
//     memory. Go's atomics are sequentially consistent, at least as strong
//     as the acquire loads and release stores the kernel's protocol needs;
//     every site names the ordering it relies on.
//
// # Errors
//
// A negative CQE.Res becomes a syscall.Errno in one place, CQE.Err.
// SubmitAndWait returns nil for a timeout or EINTR (re-check and call again),
// ErrBusy for EAGAIN/EBUSY (reap, then retry), ErrClosed after Close, and a
// wrapped errno otherwise. New wraps ErrUnavailable when the host refuses
// io_uring, with the reason in the message.
package uring
