package uring

import (
	"errors"
	"syscall"
	"time"
)

// Queue is the batch-granular seam between an event loop and a ring.
// *Ring implements it over the kernel; uringtest.Ring implements it in memory,
// deterministically, with the same semantics. One goroutine — the owner —
// calls every method; nothing here is safe for concurrent use.
//
// The shape is liburing's: get an SQE, prepare it, submit (and optionally wait)
// once per batch, then reap completions into a caller-owned slice. One
// indirect call covers a whole batch, so the interface costs nothing per I/O.
type Queue interface {
	// GetSQE returns the next free submission slot, zeroed, or nil when the
	// SQ is full. A nil return is not an error: the caller keeps the
	// operation in its own overflow queue and retries after the next submit
	// and reap. The slot is the caller's until the next Submit call.
	GetSQE() *SQE

	// Pending reports how many SQEs were prepared and not yet submitted.
	Pending() int

	// SubmitAndWait hands every prepared SQE to the kernel and, in the same
	// io_uring_enter, waits until at least minComplete CQEs are ready or
	// timeout has passed. timeout < 0 waits without limit; minComplete 0 or
	// timeout 0 does not wait. It returns how many SQEs the kernel consumed.
	// minComplete is capped at the CQ size: a wait never asks for more CQEs
	// than the CQ can hold. A link chain is submitted whole only if its SQEs
	// were all obtained before the call: callers check that SQEntries() -
	// Pending() leaves room for the chain before preparing it.
	// A timeout is not an error, and neither is EINTR: both return with
	// err == nil and the caller re-checks its state. ErrBusy means the kernel
	// could not take more work until completions are reaped (EAGAIN, EBUSY):
	// reap, then call again.
	SubmitAndWait(minComplete int, timeout time.Duration) (submitted int, err error)

	// Ready reports how many CQEs are waiting to be reaped.
	Ready() int

	// Reap moves up to len(dst) CQEs into dst in completion order and
	// consumes them, advancing the CQ head once. It returns the count. It
	// enters the kernel only when the CQ overflowed and the kernel holds a
	// backlog (IORING_FEAT_NODROP), so no completion is ever lost.
	Reap(dst []CQE) int

	// SQEntries and CQEntries report the ring sizes chosen at setup.
	SQEntries() int
	CQEntries() int

	// RegisterFiles creates a sparse registered-file table of n slots.
	RegisterFiles(n int) error
	// UpdateFile points registered slot at fd (fd -1 clears the slot). The
	// caller keeps fd open while any operation naming the slot is in flight.
	UpdateFile(slot int, fd int) error
	// RegisterBuffers registers buffers for READ_FIXED/WRITE_FIXED; buffer i
	// gets index i. The memory must not be in the Go heap (mmap it).
	RegisterBuffers(bufs [][]byte) error

	// Close releases the ring; calling any other method after it returns
	// ErrClosed (or nil from GetSQE, 0 from the counters), and a second
	// Close returns nil. Close does not wait for operations in
	// flight: the kernel cancels them in the background and may still write
	// their buffers after Close returns. Owners reap every outstanding
	// operation (or cancel and reap it) before closing, and only then free
	// the memory those operations named.
	Close() error
}

var (
	// ErrBusy reports that the kernel refused new submissions until
	// completions are reaped (io_uring_enter returned EAGAIN or EBUSY).
	ErrBusy = errors.New("uring: submission queue busy; reap completions and retry")
	// ErrClosed reports use of a ring after Close.
	ErrClosed = errors.New("uring: ring is closed")
	// ErrUnavailable wraps the reason io_uring cannot be used on this host.
	ErrUnavailable = errors.New("uring: io_uring is unavailable")
)

// Err converts the CQE's result to an error: nil for res >= 0, otherwise the
// syscall.Errno the kernel reported. This is the one place where a negative
// result becomes an errno.
func (c *CQE) Err() error {
	if c.Res >= 0 {
		return nil
	}
	return syscall.Errno(-c.Res)
}
