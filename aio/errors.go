package aio

import (
	"errors"
	"strconv"
	"syscall"
)

// Sentinel errors. They are package variables so that returning them never
// allocates.
var (
	// ErrStopped reports use of a Context that is stopping or has stopped.
	ErrStopped = errors.New("aio: context stopped")
	// ErrNotStarted reports a call that needs a running owner goroutine.
	ErrNotStarted = errors.New("aio: context not started")
	// ErrStarted reports a second Start.
	ErrStarted = errors.New("aio: context already started")
	// ErrArenaFull reports that the Context's buffer arena has no free block
	// of the requested size.
	ErrArenaFull = errors.New("aio: buffer arena exhausted")
	// ErrNoArena reports an arena call on a Context created without one.
	ErrNoArena = errors.New("aio: context has no buffer arena")
	// ErrLeaked is wrapped by the error Stop returns when something that was
	// scheduled could never run (a BH scheduled after the final round, a
	// coroutine that never finished) or an op had to be abandoned in the
	// kernel. The StopReport has the counts.
	ErrLeaked = errors.New("aio: work leaked at stop")
)

// OpError is an operating error of one operation: the op's name, the file
// offset (or -1 when the op has none) and the cause, usually a
// syscall.Errno. errors.Is(err, syscall.EIO) works through it.
//
// Completion callbacks (Done.OpDone) receive the bare syscall.Errno so that
// the completion path never allocates; the synchronous coroutine helpers
// (Co.Read and friends) and setup calls return *OpError.
type OpError struct {
	Op  string // "read", "writev", "fsync", "ring setup", …
	Off int64  // file offset, or -1
	Err error
}

func (e *OpError) Error() string {
	s := "aio: " + e.Op
	if e.Off >= 0 {
		s += " at offset " + strconv.FormatInt(e.Off, 10)
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *OpError) Unwrap() error { return e.Err }

// errnoErr converts a kernel errno to an error without allocating:
// syscall.Errno is a word-sized integer, and the runtime boxes small
// integers without a heap allocation.
func errnoErr(e int32) error {
	if e == 0 {
		return nil
	}
	return syscall.Errno(e)
}
