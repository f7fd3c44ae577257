package aio

import (
	"os"
	"sync/atomic"

	"github.com/ringblk/ringblk/internal/invariants"
)

// A File keeps a file descriptor open while any op on it is in flight, on
// any Context: Close marks it closing and the real close happens when the
// last op completes. A File may be used by several Contexts at once (nodes
// are multiqueue), so its count is an atomic on its own cache line.
type File struct {
	f       *os.File     // nil for NewFileFd
	closeFn func() error // NewFileFd's closer, or nil
	fd      int32
	// ref packs the in-flight count (low bits) and the closing flag.
	// INVARIANT: count >= 0; once closing is set it never clears, and the fd
	// is closed exactly once, by whoever moves the word to exactly
	// fileClosing (count zero).
	ref *atomic.Int64
	// closeErr is written once by the goroutine that closes the fd, before
	// the closed channel is closed.
	closeErr error
	closed   chan struct{}
	// The Contexts whose registered-file tables hold f (fixedfile.go).
	fileRegsOf
}

const fileClosing = int64(1) << 62

// NewFile wraps f, taking ownership: close it with File.Close, not f.Close.
func NewFile(f *os.File) *File {
	return &File{f: f, fd: int32(f.Fd()), ref: padded[atomic.Int64](), closed: make(chan struct{})}
}

// NewFileFd wraps a bare descriptor — a block device opened elsewhere, or
// a uringtest MemFile's fake fd. closeFn (may be nil) runs once, when the
// File is closed and no op is in flight.
func NewFileFd(fd int, closeFn func() error) *File {
	return &File{closeFn: closeFn, fd: int32(fd), ref: padded[atomic.Int64](), closed: make(chan struct{})}
}

// Fd returns the file descriptor.
func (f *File) Fd() int { return int(f.fd) }

// OS returns the underlying *os.File (for synchronous system calls such as
// Stat), nil for NewFileFd; it must not be closed directly.
func (f *File) OS() *os.File { return f.f }

// InFlight reports the number of ops on f not yet completed.
func (f *File) InFlight() int { return int(f.ref.Load() &^ fileClosing) }

// Close closes the file once no op is in flight. It returns at once; the
// result of the deferred close is available from Wait. Closing twice
// returns os.ErrClosed.
func (f *File) Close() error {
	f.checkUnregistered()
	old := f.ref.Load()
	for {
		if old&fileClosing != 0 {
			return os.ErrClosed
		}
		if f.ref.CompareAndSwap(old, old|fileClosing) {
			break
		}
		old = f.ref.Load()
	}
	if old == 0 {
		return f.closeNow()
	}
	return nil
}

// Wait blocks until the deferred close has happened and returns its error.
func (f *File) Wait() error {
	<-f.closed
	return f.closeErr
}

func (f *File) closeNow() error {
	switch {
	case f.f != nil:
		f.closeErr = f.f.Close()
	case f.closeFn != nil:
		f.closeErr = f.closeFn()
	}
	close(f.closed)
	return f.closeErr
}

// acquire counts one more op in flight. An op on a closing File is a
// programmer error.
// A CAS loop, not an Add: no count may be taken once closing is set, or the
// fd could be closed twice.
func (f *File) acquire() {
	for {
		old := f.ref.Load()
		if old&fileClosing != 0 {
			invariants.Failf("aio: op on a closed File")
		}
		if f.ref.CompareAndSwap(old, old+1) {
			return
		}
	}
}

// release ends one op; the last one after Close closes the fd.
func (f *File) release() {
	if f.ref.Add(-1) == fileClosing {
		f.closeNow()
	}
}
