// Package uringtest is a fake io_uring ring with the same interface as
// uring.Ring, fully deterministic given a seed.
//
// A *Ring implements uring.Queue in memory. It copies the kernel's
// semantics that the layers above must handle — a bounded SQ, CQ overflow
// into a backlog, partial submission, -EAGAIN, short transfers, link
// chains, drain, cancellation — and lets a test decide when and in which
// order operations complete. It executes operations for real, so data read
// back is the data written. Only test code imports it.
//
// # Files
//
// Operations name one of two kinds of fd, directly or through the
// registered-file table (IOSQE_FIXED_FILE, RegisterFiles, UpdateFile):
//
//   - A MemFile: a sparse in-memory file attached with AddMemFile or
//     AttachFile, which return fake fds from MemFdBase (1<<30) up, never a
//     real fd. Writes grow it; FALLOCATE punches, zeroes and extends it.
//     Transfers take effect when the operation completes, never earlier.
//   - Any other fd is real. Regular files and block devices are read and
//     written with preadv2/pwritev2, fsync and fallocate, synchronously, at
//     completion. Other files (eventfd, pipe, socket) complete a READ or
//     WRITE only once poll(2) reports them ready, like POLL_ADD on them.
//
// Buffers, iovec arrays and timespecs are reached through the SQE's
// Addr/Len fields, exactly as the kernel reaches them, so the uring.Queue
// rules apply: keep them alive and off the Go stack until the CQE (a
// constant-size make([]byte, n) that does not escape may be on the stack;
// Mmap returns safe memory). Iovec arrays and timespecs are copied at
// submission (IORING_FEAT_SUBMIT_STABLE); data buffers are used at
// completion.
//
// # Model
//
// Completions happen only inside SubmitAndWait, Tick, CompleteAll, Release
// and ReleaseAll; Reap and Ready only observe. Each SubmitAndWait consumes
// pending SQEs and then runs one step: the tick clock advances, and every
// operation that is able to complete does, in submission order or, with
// Options.Reorder, in a seeded random permutation, repeating until nothing
// else can complete (so a link successor with no delay completes in the
// same call, as the kernel runs it inline). An operation is able to
// complete once
//
//   - it is issued: its link predecessor completed successfully, and no
//     IOSQE_IO_DRAIN barrier holds it (a drained operation waits for
//     everything submitted before it, and everything after it waits for
//     it, as io_uring_enter(2) documents);
//   - its delay (Options.MaxDelay, Fault.Delay) has passed, counted in
//     ticks from issue;
//   - it is not held (Hold, Fault.Hold);
//   - for POLL_ADD, or a transfer on a pollable real fd, poll(2) reports
//     the fd ready; for TIMEOUT, its time passed or its count of other
//     completions arrived.
//
// When SubmitAndWait must wait for minComplete CQEs, it ticks while ticking
// can help; then it blocks in ppoll(2) on the real fds operations wait on
// (another goroutine writing an eventfd wakes it), or sleeps until the next
// TIMEOUT or its own deadline. It never waits while the CQ is full. If
// nothing can ever complete — everything left is held, or waits on a
// MemFile event that never comes, and no real fd or timer is involved — a
// wait with timeout < 0 returns ErrDeadlock at once instead of hanging; a
// wait with timeout > 0 sleeps it out and returns nil like the kernel. The
// fake never arms a TIMEOUT of its own, so it posts no CQE with
// uring.ReservedUserData; an SQE carrying that bit panics.
//
// Without real fds, waits use time.Sleep, so inside a testing/synctest
// bubble time-based waits and TIMEOUTs run on the bubble's clock. A real fd
// in a bubble blocks in a system call, which the bubble does not treat as
// durably blocked; keep bubbles to MemFiles.
//
// Completions go into a CQ of Options.CQEntries (default twice the SQ);
// beyond that they queue in a backlog, as with IORING_FEAT_NODROP, and move
// into the CQ as Reap makes room: nothing is lost and the order is kept.
//
// # Kernel behaviour copied
//
//   - GetSQE returns nil when the SQ is full; Pending counts prepared SQEs
//     until SubmitAndWait consumes them.
//   - An SQE the kernel would reject while preparing it (unknown opcode or
//     flag, bad TIMEOUT, …) completes at once with -EINVAL (or -EFAULT) and,
//     outside a link chain, ends that submission there, so SubmitAndWait
//     may consume fewer SQEs than were pending. A chain with such a member
//     fails whole: that member gets its error, the others -ECANCELED.
//   - A link chain (IOSQE_IO_LINK) runs in order; an error or a short
//     transfer cancels the rest with -ECANCELED. IOSQE_IO_HARDLINK goes on
//     regardless. A chain still open at the end of a submission runs as it
//     stands.
//   - Bad fds and empty registered slots give -EBADF; a READ_FIXED or
//     WRITE_FIXED outside its registered buffer gives -EFAULT.
//   - ASYNC_CANCEL, POLL_REMOVE and TIMEOUT_REMOVE find the first issued
//     operation with the target user_data: the target completes with
//     -ECANCELED (and its link successors too), the canceller with 0; none
//     found gives -ENOENT. ASYNC_CANCEL of an operation "on the device"
//     (anything but a poll, a timeout or a transfer waiting on a pollable
//     fd) gives -EALREADY and the target completes normally.
//   - A count TIMEOUT completes with 0 after that many CQEs of non-TIMEOUT
//     operations, a time TIMEOUT with -ETIME; IORING_TIMEOUT_ABS is
//     CLOCK_MONOTONIC.
//   - IOSQE_CQE_SKIP_SUCCESS suppresses the CQE of a success.
//
// Not modelled (rejected with -EINVAL): multishot poll, poll and timeout
// updates, cancel flags, buffer selection, NOP result injection, opcodes
// ringblk does not prepare.
//
// # Fault injection
//
// Everything random draws from one PCG generator seeded with Options.Seed,
// in a fixed order, so a seed replays a run exactly (timers and real fds
// aside, which follow real time). Seed(t) picks and reports seeds.
//
// Options set ring-wide behaviour: Reorder and MaxDelay (completion order
// and timing), MaxSubmit (partial submission), BusyProb and BusyOnOverflow
// (ErrBusy), InterruptProb (early return from a wait), small CQEntries (CQ
// overflow). InjectBusy and InjectInterrupt script the next calls.
//
// Fault rules (Inject, Options.Faults) act on single operations. A rule
// selects by opcode set, fd and byte range, then by occurrence (Nth, Count)
// and probability (Prob); its effects are an errno (the operation completes
// with -Errno and does nothing), a short transfer (Short bytes, ShortZero,
// ShortRandom), extra Delay ticks, or Hold. Rules are matched when an SQE is
// submitted, so "Nth" counts submissions:
//
//	// The second READ touching [4096, ∞) transfers 1024 bytes.
//	r.Inject(uringtest.Fault{Ops: uringtest.Ops(uring.IORING_OP_READ), Off: 4096, Nth: 2, Short: 1024})
//	// Every write fails with EIO one time in ten.
//	r.Inject(uringtest.Fault{Ops: uringtest.WriteOps, Prob: 0.1, Errno: syscall.EIO})
//
// Hold and Release script completion order exactly. Crash drops everything
// in flight — writes not yet completed never reach their MemFile — and
// closes the ring; attach the MemFiles to a new ring to reopen.
//
// # Observing
//
// Stats counts calls, enters (calls that consumed SQEs), SQEs per opcode,
// CQEs posted, overflowed and reaped. Log returns a copy of the consumed
// SQEs (the first Options.LogLimit), so a test can check, say, the offset
// of the third resubmission.
//
// # Concurrency and allocation
//
// A Ring has one owner goroutine, like uring.Ring. MemFiles are safe for
// concurrent use, so a test may inspect one while the owner runs.
// Once a ring has warmed up (its op records and scratch slices grown),
// GetSQE, SubmitAndWait and Reap of NOPs and MemFile transfers do not
// allocate, except for the growth of the SQE log (turn it off with
// Options.NoLog, or reuse its memory with ResetLog). Real-fd transfers,
// writes into new MemFile chunks, the CQ backlog and error paths may
// allocate.
package uringtest
