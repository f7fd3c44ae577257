package aio

import (
	"syscall"
	"time"

	"github.com/ringblk/ringblk/internal/invariants"
	"github.com/ringblk/ringblk/uring"
)

// Done receives the completion of an op. Implement it on the caller's
// preallocated request struct (pointer receiver): passing a pointer as an
// interface does not allocate.
//
// OpDone runs on the Context's owner goroutine, from the loop (never from
// inside the call that issued the op). res is the byte count for reads and
// writes — the full length after short transfers were resubmitted, with the
// tail of a read past EOF zero-filled — the revents mask for PollAdd, and
// the kernel's result for the others. err is nil or a syscall.Errno; on
// error res holds the bytes transferred before it. A write that makes no
// progress fails with ENOSPC. ECANCELED means the Context stopped first.
type Done interface {
	OpDone(tag uint64, res int, err error)
}

// DoneFunc adapts a function to Done. A func value converts to an interface
// without allocating, but a closure that captures variables is allocated
// where it is created: keep DoneFuncs out of per-request paths.
type DoneFunc func(tag uint64, res int, err error)

// OpDone calls fn.
func (fn DoneFunc) OpDone(tag uint64, res int, err error) { fn(tag, res, err) }

// opKind says what a slot's SQE is.
type opKind uint8

const (
	opNop opKind = iota
	opRead
	opWrite
	opReadFixed
	opWriteFixed
	opReadv
	opWritev
	opFsync
	opFallocate
	opPollAdd
	opReadSome
	// internal ops: their CQEs are handled during reap and never reach a
	// Done.
	opEventfd
	opFDPoll
	opCancel
)

var opNames = [...]string{
	opNop: "nop", opRead: "read", opWrite: "write", opReadFixed: "read_fixed",
	opWriteFixed: "write_fixed", opReadv: "readv", opWritev: "writev",
	opFsync: "fsync", opFallocate: "fallocate", opPollAdd: "poll_add", opReadSome: "read_some",
	opEventfd: "eventfd_read", opFDPoll: "fd_poll", opCancel: "async_cancel",
}

func (k opKind) String() string { return opNames[k] }

func (k opKind) isRead() bool  { return k == opRead || k == opReadFixed || k == opReadv }
func (k opKind) isWrite() bool { return k == opWrite || k == opWriteFixed || k == opWritev }
func (k opKind) internal() bool {
	return k >= opEventfd
}

// maxRetries bounds transparent resubmission of EAGAIN/EINTR results for one
// op, so a device that refuses forever surfaces an error instead of a
// silent loop.
const maxRetries = 1000

// maxChunk bounds the bytes one SQE asks for: SQE lengths are 32-bit and the
// kernel caps one transfer near 2 GiB anyway; the rest goes out as a short
// transfer's remainder.
const maxChunk = 1 << 30

// Stats are counters of one Context, for tests and monitoring.
type Stats struct {
	Enters      int64 // io_uring_enter calls (SubmitAndWait) made by the loop
	Submitted   int64 // SQEs the kernel accepted
	Waits       int64 // blocking waits
	Completed   int64 // user ops whose Done ran
	Resubmitted int64 // remainders of short transfers and EAGAIN/EINTR retries
	StaleCQEs   int64 // CQEs rejected by the generation check
	Overflowed  int64 // ops that waited in the overflow queue for an SQE
	Busy        int64 // submissions the kernel refused until completions were reaped
	BHsRun      int64 // BH callbacks run (one-shot and reusable)
	Wakeups     int64 // eventfd wake-ups reaped
	SpinHits    int64 // adaptive polls that found work before sleeping
	// EarlySubmits counts batches of completions whose first refill was
	// submitted before the batch's other callbacks ran (runReady).
	EarlySubmits int64
	SlotsGrown   int64 // slot chunks added beyond Options.Slots
	// SlotTable is the length of the op-slot table (its memory), at most
	// SlotCap unless SlotsOverCap > 0.
	SlotTable    int
	SlotsOverCap int64 // ops that found the table full at its cap (grew it anyway)
	// WorkersPlaced reports that the ring's io-wq workers run on
	// Options.WorkerCPUs.
	WorkersPlaced bool
}

// Stats returns the Context's counters. Owner only.
func (c *Context) Stats() Stats {
	c.assertOwner("Stats")
	st := c.stats
	st.SlotsGrown = c.ops.grown
	st.SlotTable = int(c.ops.n)
	st.SlotsOverCap = c.ops.overCap
	return st
}

// SlotCap returns the cap of the op-slot table (Options.MaxSlots, rounded).
func (c *Context) SlotCap() int { return int(c.ops.max) }

// SlotsFree returns how many more ops the slot table holds before its cap.
// Owner only (or the run-token holder).
func (c *Context) SlotsFree() int { return int(c.ops.max) - c.ops.inUse() }

// Nop issues a no-op; its completion still runs on the loop.
func (c *Context) Nop(d Done, tag uint64) {
	c.assertOwner("Nop")
	idx, _ := c.newOp(opNop, nil, d, tag)
	c.start(idx)
}

// Read reads len(buf) bytes at off into buf. A buf inside c's arena goes
// out as READ_FIXED.
func (c *Context) Read(f *File, buf []byte, off int64, d Done, tag uint64) {
	c.assertOwner("Read")
	c.rw(opRead, f, buf, off, d, tag)
}

// Write writes buf at off. A buf inside c's arena goes out as WRITE_FIXED.
func (c *Context) Write(f *File, buf []byte, off int64, d Done, tag uint64) {
	c.assertOwner("Write")
	c.rw(opWrite, f, buf, off, d, tag)
}

// ReadPrio and WritePrio are Read and Write with an I/O priority for the
// kernel (the SQE's ioprio field: class<<13 | level, as ioprio_set takes
// it); 0 is the submitting thread's own priority, as for Read and Write.
func (c *Context) ReadPrio(f *File, buf []byte, off int64, prio uint16, d Done, tag uint64) {
	c.assertOwner("Read")
	c.rwp(opRead, f, buf, off, prio, d, tag)
}

// WritePrio is Write with an I/O priority (see ReadPrio).
func (c *Context) WritePrio(f *File, buf []byte, off int64, prio uint16, d Done, tag uint64) {
	c.assertOwner("Write")
	c.rwp(opWrite, f, buf, off, prio, d, tag)
}

func (c *Context) rw(op opKind, f *File, buf []byte, off int64, d Done, tag uint64) {
	c.rwp(op, f, buf, off, 0, d, tag)
}

func (c *Context) rwp(op opKind, f *File, buf []byte, off int64, prio uint16, d Done, tag uint64) {
	if c.arena != nil && c.arena.fixed && c.arena.contains(buf) {
		op += opReadFixed - opRead
	}
	idx, s := c.newOp(op, f, d, tag)
	s.prio = prio
	s.buf = buf
	s.off = off
	s.length = int64(len(buf))
	c.start(idx)
}

// Readv reads into bufs, in order, starting at off. The slot keeps bufs
// referenced until the op completes.
func (c *Context) Readv(f *File, bufs [][]byte, off int64, d Done, tag uint64) {
	c.assertOwner("Readv")
	c.rwv(opReadv, f, bufs, off, d, tag)
}

// Writev writes bufs, in order, starting at off.
func (c *Context) Writev(f *File, bufs [][]byte, off int64, d Done, tag uint64) {
	c.assertOwner("Writev")
	c.rwv(opWritev, f, bufs, off, d, tag)
}

func (c *Context) rwv(op opKind, f *File, bufs [][]byte, off int64, d Done, tag uint64) {
	idx, s := c.newOp(op, f, d, tag)
	s.bufs = bufs
	s.off = off
	var n int64
	for _, b := range bufs {
		n += int64(len(b))
	}
	s.length = n
	c.start(idx)
}

// Fsync flushes f (fdatasync when datasync).
func (c *Context) Fsync(f *File, datasync bool, d Done, tag uint64) {
	c.assertOwner("Fsync")
	idx, s := c.newOp(opFsync, f, d, tag)
	if datasync {
		s.flags = 1
	}
	c.start(idx)
}

// Fallocate runs fallocate(f, mode, off, length); mode is a FALLOC_FL_*
// combination such as uring.FALLOC_FL_PUNCH_HOLE|uring.FALLOC_FL_KEEP_SIZE
// or uring.FALLOC_FL_ZERO_RANGE.
func (c *Context) Fallocate(f *File, mode uint32, off, length int64, d Done, tag uint64) {
	c.assertOwner("Fallocate")
	idx, s := c.newOp(opFallocate, f, d, tag)
	s.flags = mode
	s.off = off
	s.length = length
	c.start(idx)
}

// ReadSome reads once from a socket or pipe: it completes when f has data
// (the kernel waits for readiness itself) with res the bytes read into
// buf, up to len(buf), or 0 at EOF. A short read is not resubmitted, so
// it is the ring's form of one read(2) after POLLIN: one op and no system
// call where PollAdd and then read take a system call more. f's offset is
// not used (files with one, use Read).
func (c *Context) ReadSome(f *File, buf []byte, d Done, tag uint64) {
	c.assertOwner("ReadSome")
	idx, s := c.newOp(opReadSome, f, d, tag)
	s.buf = buf
	s.length = int64(len(buf))
	c.start(idx)
}

// PollAdd waits once for events (unix.POLLIN, …) on f; res is the revents
// mask. For long-lived readiness callbacks use SetFDHandler.
func (c *Context) PollAdd(f *File, events uint32, d Done, tag uint64) {
	c.assertOwner("PollAdd")
	idx, s := c.newOp(opPollAdd, f, d, tag)
	s.flags = events
	c.start(idx)
}

// newOp takes a free slot and fills the fields every op has.
func (c *Context) newOp(op opKind, f *File, d Done, tag uint64) (uint32, *slot) {
	if invariants.Enabled && d == nil && !op.internal() {
		invariants.Failf("aio: %s with a nil Done", op)
	}
	if f != nil {
		f.acquire() // first: a panic here must not strand a slot
	}
	idx := c.ops.alloc()
	s := c.ops.slot(idx)
	s.op = op
	s.done = d
	s.tag = tag
	s.fd = -1
	s.prio = 0
	s.fixed = false
	if f != nil {
		s.file = f
		s.fd = f.fd
		if slot := f.slotOn(c); slot >= 0 {
			s.fd, s.fixed = slot, true
		}
	}
	if !op.internal() {
		c.ops.user++
	}
	return idx, s
}

// start hands a new op to the ring, or — during shutdown — completes it
// with ECANCELED without submitting.
func (c *Context) start(idx uint32) {
	if c.cancelAll {
		s := c.ops.slot(idx)
		s.errno = int32(syscall.ECANCELED)
		c.ops.pushReady(idx)
		return
	}
	c.enqueue(idx)
}

// enqueue puts slot idx into the SQ, or at the tail of the overflow queue
// when the SQ is full or older ops are already waiting there (order is
// kept). Unless plugged it submits at once.
func (c *Context) enqueue(idx uint32) {
	if c.ops.ovLen == 0 {
		if sqe := c.getSQE(); sqe != nil {
			c.prep(sqe, idx)
			if c.plug == 0 {
				c.submitPending()
			}
			return
		}
	}
	c.ops.slot(idx).state = slotOverflow
	c.ops.pushOverflow(idx)
	c.stats.Overflowed++
}

// getSQE returns a free SQE. When the SQ is full it first hands the
// prepared SQEs to the kernel — even inside a plugged section, since a full
// SQ is the batch (drain.md R7) — and tries once more.
func (c *Context) getSQE() *uring.SQE {
	if sqe := c.q.GetSQE(); sqe != nil {
		return sqe
	}
	if c.submitPending() {
		return c.q.GetSQE()
	}
	return nil
}

// flushOverflow moves waiting ops into the SQ, oldest first, and submits
// unless plugged.
func (c *Context) flushOverflow() {
	for c.ops.ovLen > 0 {
		sqe := c.getSQE()
		if sqe == nil {
			break
		}
		c.prep(sqe, c.ops.popOverflow())
	}
	if c.plug == 0 {
		c.submitPending()
	}
}

// prep fills sqe from slot idx; it is used for first submissions and for
// resubmitting remainders and retries (offset and buffers advance by the
// bytes already transferred).
func (c *Context) prep(sqe *uring.SQE, idx uint32) {
	s := c.ops.slot(idx)
	ud := userData(idx, s.gen)
	off := uint64(s.off + s.nbytes)
	switch s.op {
	case opNop:
		sqe.PrepNop(ud)
	case opRead:
		sqe.PrepRead(s.fd, chunk(s.buf[s.nbytes:]), off, ud)
	case opWrite:
		sqe.PrepWrite(s.fd, chunk(s.buf[s.nbytes:]), off, ud)
	case opReadFixed:
		sqe.PrepReadFixed(s.fd, chunk(s.buf[s.nbytes:]), off, 0, ud)
	case opWriteFixed:
		sqe.PrepWriteFixed(s.fd, chunk(s.buf[s.nbytes:]), off, 0, ud)
	case opReadv:
		sqe.PrepReadv(s.fd, s.remainderIov(), off, ud)
	case opWritev:
		sqe.PrepWritev(s.fd, s.remainderIov(), off, ud)
	case opFsync:
		sqe.PrepFsync(s.fd, s.flags != 0, ud)
	case opFallocate:
		sqe.PrepFallocate(s.fd, s.flags, uint64(s.off), uint64(s.length), ud)
	case opPollAdd, opFDPoll:
		sqe.PrepPollAdd(s.fd, s.flags, ud)
	case opReadSome:
		sqe.PrepRead(s.fd, chunk(s.buf), ^uint64(0), ud) // offset -1: the stream's own
	case opEventfd:
		sqe.PrepEventfdRead(int32(c.efd), c.efdBuf, ud)
	case opCancel:
		sqe.PrepCancel(s.target, ud)
	}
	if s.prio != 0 && (s.op.isRead() || s.op.isWrite()) {
		sqe.IoPrio = s.prio
	}
	if s.fixed {
		sqe.SetFixedFile()
	}
	s.state = slotSubmitted
	c.ops.inKernel++
	c.prepared++
}

func chunk(b []byte) []byte {
	if len(b) > maxChunk {
		return b[:maxChunk]
	}
	return b
}

// submitPending hands every prepared SQE to the kernel with one
// io_uring_enter. While a coroutine holds the run token it does nothing:
// the ring may only be entered from the owner thread (SINGLE_ISSUER), which
// submits when the token comes back. It reports whether it submitted.
func (c *Context) submitPending() bool {
	if c.prepared == 0 || c.holder.Load() != nil {
		return false
	}
	return c.enter(0, 0)
}

// enter is the one place the loop calls SubmitAndWait.
func (c *Context) enter(minComplete int, timeout time.Duration) bool {
	n, err := c.q.SubmitAndWait(minComplete, timeout)
	c.stats.Enters++
	c.stats.Submitted += int64(n)
	if c.prepared > 0 {
		c.prepared = c.q.Pending() // what the kernel left in the SQ
	}
	switch {
	case err == nil:
	case err == uring.ErrBusy:
		// The kernel wants completions reaped before it takes more; the
		// SQEs stay in the SQ and the next iteration retries after reaping.
		c.stats.Busy++
	default:
		invariants.Failf("aio: io_uring_enter on Context %s: %v", c.name, err)
	}
	return n > 0
}

// reap moves every available CQE into the ready queue (or handles it, for
// internal ops). It never runs a Done: callbacks run from runReady, so a
// callback that polls again re-enters reap safely (drain.md R8).
func (c *Context) reap() {
	for {
		n := c.q.Reap(c.cqes)
		for i := 0; i < n; i++ {
			c.complete(&c.cqes[i])
		}
		if n < len(c.cqes) {
			return
		}
	}
}

// complete handles one CQE.
func (c *Context) complete(cqe *uring.CQE) {
	idx, gen := uint32(cqe.UserData), uint32(cqe.UserData>>32)
	if idx >= c.ops.n {
		c.stats.StaleCQEs++
		return
	}
	s := c.ops.slot(idx)
	if s.gen != gen || s.state != slotSubmitted {
		// A duplicate, or a CQE for a slot that was released and reused:
		// the generation check is what makes user_data safe to trust.
		c.stats.StaleCQEs++
		return
	}
	c.ops.inKernel--
	res := cqe.Res
	switch s.op {
	case opEventfd:
		c.eventfdDone(idx, res)
		return
	case opFDPoll:
		c.fdPollDone(idx, res)
		return
	case opCancel:
		c.ops.release(idx)
		return
	}
	if (res == -int32(syscall.EAGAIN) || res == -int32(syscall.EINTR)) && !s.cancelled && s.retries < maxRetries {
		s.retries++
		c.stats.Resubmitted++
		c.enqueue(idx)
		return
	}
	if res < 0 {
		s.errno = -res
		s.res = int(s.nbytes)
		c.ops.pushReady(idx)
		return
	}
	switch {
	case s.op.isRead():
		if invariants.Enabled && int64(res) > s.length-s.nbytes {
			invariants.Failf("aio: %s returned %d bytes, %d asked", s.op, res, s.length-s.nbytes)
		}
		if res == 0 && s.nbytes < s.length {
			s.zeroTail() // EOF: the rest of the buffer reads as zeros
		} else {
			s.nbytes += int64(res)
		}
		if s.nbytes < s.length && !s.cancelled {
			c.stats.Resubmitted++
			c.enqueue(idx)
			return
		}
		s.res = int(s.nbytes)
	case s.op.isWrite():
		if res == 0 && s.nbytes < s.length {
			s.errno = int32(syscall.ENOSPC) // no progress: the device is full
			s.res = int(s.nbytes)
			break
		}
		s.nbytes += int64(res)
		if s.nbytes < s.length && !s.cancelled {
			c.stats.Resubmitted++
			c.enqueue(idx)
			return
		}
		s.res = int(s.nbytes)
	default:
		s.res = int(res)
	}
	c.ops.pushReady(idx)
}

// runReady runs the callbacks of completed ops, oldest first. A callback
// may issue ops (they are batched: the loop holds a plug around reap and
// runReady) and may run a nested Poll, which continues with the next entry.
func (c *Context) runReady() bool {
	if c.ops.rdHead == noSlot {
		return false
	}
	early := true // the first refill of this batch has not been submitted yet
	for c.ops.rdHead != noSlot {
		idx := c.ops.popReady()
		s := c.ops.slot(idx)
		d, tag, res, errno, f := s.done, s.tag, s.res, s.errno, s.file
		c.ops.user--
		c.ops.release(idx)
		if f != nil {
			f.release()
		}
		c.stats.Completed++
		if c.cancelAll {
			if errno == int32(syscall.ECANCELED) {
				c.report.OpsCancelled++
			} else {
				c.report.OpsCompleted++
			}
		}
		d.OpDone(tag, res, errnoErr(errno))
		// Submit the first new request a callback prepared at once when
		// more completions wait to be run: a device with a kernel thread
		// of its own (the loop device's worker) may have drained its
		// queue while the loop slept, and the other callbacks would delay
		// its next request. The rest go with the wait's enter, and a lone
		// completion's refill too (one enter per I/O at depth 1). Only
		// under the loop's own implicit Plug (poll's): a caller's plugged
		// section keeps its batch. See docs/design/fast-devices.md §"The
		// first refill goes at once".
		if early && c.prepared > 0 && c.ops.rdHead != noSlot && c.plug <= 1 && c.holder.Load() == nil {
			c.enter(0, 0)
			c.stats.EarlySubmits++
			early = false
		}
	}
	return true
}

// DisableBatching makes c's loop submit prepared SQEs at every iteration,
// even inside a plugged section that is still open, until the matching
// EnableBatching; the calls nest. A drain holds it while it waits (seed 003:
// batching is off while a drain waits), so that requests prepared in a
// section whose owner does not unplug yet (its loop never sleeps, so no
// wait submits them) still reach the kernel. Any goroutine; c's loop sees
// it at its next iteration.
func (c *Context) DisableBatching() { c.noBatch.Add(1) }

// EnableBatching ends one DisableBatching.
func (c *Context) EnableBatching() {
	if c.noBatch.Add(-1) < 0 {
		invariants.Failf("aio: EnableBatching without DisableBatching on Context %s", c.name)
	}
}

// Plug starts (or nests) a batch: ops prepared until the matching outermost
// Unplug stay in the SQ, and that Unplug submits them with one
// io_uring_enter. A full SQ is submitted early (it is the batch), and a
// blocking wait always submits first, so a nested wait inside a plugged
// section cannot hang on its own unsubmitted SQEs (drain.md D18, U7).
func (c *Context) Plug() {
	c.assertOwner("Plug")
	c.plug++
}

// Unplug ends a Plug; the outermost one runs the deferred work (Defer),
// still plugged so that what it issues joins the batch, then submits.
// REQUIRES: a matching Plug.
func (c *Context) Unplug() {
	c.assertOwner("Unplug")
	if c.plug <= 0 {
		invariants.Failf("aio: Unplug without Plug")
	}
	if c.plug == 1 && c.ndeferred > 0 {
		c.runDeferred()
	}
	c.plug--
	if c.plug == 0 {
		c.flushOverflow()
	}
}

// maxDeferred bounds a Context's deferred work: a deferral past it is
// refused and the caller does its work at once.
const maxDeferred = 16

// Deferred is work that a driver postpones to the end of the current
// plugged section (QEMU's defer_call): a driver that receives a burst of
// requests under one Plug can treat them as one batch (the qcow2 driver
// prefetches every request's mapping before it maps any).
type Deferred interface {
	// RunDeferred runs on the Context's owner, inside the plugged
	// section's end (still plugged: ops it issues are submitted with the
	// rest), or before a blocking wait of the Context's loop. It must not
	// block or yield; it may call Defer again, which queues it to run
	// once more after the work already queued.
	RunDeferred(c *Context)
}

// Defer queues d to run when the outermost Plug of c ends, once however
// many times it is deferred before that. It reports false, and queues
// nothing, when c is not plugged or already holds maxDeferred entries: the
// caller then does the work now. A blocking wait of c's loop (a nested
// Poll or WaitWhile inside the plugged section) runs deferred work first,
// as it submits prepared SQEs first, so a wait never hangs on work its own
// section deferred. d is compared with ==, so pass a pointer (a value of
// an incomparable type would panic). Owner only; no allocation.
func (c *Context) Defer(d Deferred) bool {
	if c.plug == 0 {
		return false
	}
	for i := 0; i < c.ndeferred; i++ {
		if c.deferred[i] == d {
			return true
		}
	}
	if c.ndeferred == maxDeferred {
		return false
	}
	c.deferred[c.ndeferred] = d
	c.ndeferred++
	return true
}

// runDeferred runs the deferred work in order, including work deferred
// while it runs. REQUIRES: owner.
func (c *Context) runDeferred() {
	for i := 0; i < c.ndeferred; i++ {
		d := c.deferred[i]
		c.deferred[i] = nil // a Defer of d from its own run queues it again
		d.RunDeferred(c)
	}
	c.ndeferred = 0
}

// Plugged reports the Plug nesting depth. Owner only.
func (c *Context) Plugged() int { return c.plug }

// Outstanding reports the user ops issued on c whose Done has not yet run.
// Owner only.
func (c *Context) Outstanding() int { return c.ops.user }
