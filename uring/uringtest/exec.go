package uringtest

import (
	"errors"
	"math"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/uring"
)

// execute performs o (whose completion conditions hold) and returns its
// CQE result. ok is false only when a transfer on a pollable fd found no
// data after all; it then stays in flight.
func (r *Ring) execute(o *op) (res int32, ok bool) {
	s := &o.sqe
	switch s.Opcode {
	case uring.IORING_OP_NOP:
		return 0, true
	case uring.IORING_OP_READ, uring.IORING_OP_WRITE, uring.IORING_OP_READV, uring.IORING_OP_WRITEV,
		uring.IORING_OP_READ_FIXED, uring.IORING_OP_WRITE_FIXED:
		return r.execRW(o)
	case uring.IORING_OP_FSYNC:
		if o.kind == kindMem {
			o.mem.f.synced()
			return 0, true
		}
		var err error
		if s.OpFlags&uring.IORING_FSYNC_DATASYNC != 0 {
			err = retryEINTR(func() error { return unix.Fdatasync(int(o.fd)) })
		} else {
			err = retryEINTR(func() error { return unix.Fsync(int(o.fd)) })
		}
		return errRes(err), true
	case uring.IORING_OP_FALLOCATE:
		// The ABI carries the length in Addr and the mode in Len.
		if o.kind == kindMem {
			return o.mem.f.fallocate(s.Len, s.Off, s.Addr), true
		}
		if s.Off > math.MaxInt64 || s.Addr > math.MaxInt64 {
			return -int32(syscall.EINVAL), true
		}
		err := retryEINTR(func() error { return unix.Fallocate(int(o.fd), s.Len, int64(s.Off), int64(s.Addr)) })
		return errRes(err), true
	case uring.IORING_OP_POLL_ADD:
		if o.kind == kindMem {
			return memPollMask(o), true
		}
		return int32(uint16(r.pollfds[o.pollIdx].Revents)), true
	case uring.IORING_OP_TIMEOUT:
		if o.countTimer && r.nonTimeoutCQEs >= o.target {
			return 0, true
		}
		return -int32(syscall.ETIME), true
	case uring.IORING_OP_ASYNC_CANCEL, uring.IORING_OP_POLL_REMOVE, uring.IORING_OP_TIMEOUT_REMOVE:
		return r.cancel(o), true
	}
	panic("uringtest: execute: opcode passed validation but has no implementation")
}

// cancel runs ASYNC_CANCEL, POLL_REMOVE and TIMEOUT_REMOVE: the first issued
// op in flight with the target user_data (Addr) completes with -ECANCELED
// and the canceller with 0. Ops not yet issued (waiting on a link or drain)
// are not found (-ENOENT), as in the kernel; ASYNC_CANCEL of an op that is
// "on the device" (not parked on a poll or timer) gets -EALREADY and the op
// completes normally later.
func (r *Ring) cancel(o *op) int32 {
	target := o.sqe.Addr
	for _, t := range r.inflight {
		if t == o || t.done || !t.issued || t.initRes != 0 || t.sqe.UserData != target {
			continue
		}
		switch o.sqe.Opcode {
		case uring.IORING_OP_POLL_REMOVE:
			if t.sqe.Opcode != uring.IORING_OP_POLL_ADD {
				continue
			}
		case uring.IORING_OP_TIMEOUT_REMOVE:
			if t.sqe.Opcode != uring.IORING_OP_TIMEOUT {
				continue
			}
		default:
			if !t.cancellable() {
				return -int32(syscall.EALREADY)
			}
		}
		r.finish(t, -int32(syscall.ECANCELED), true)
		return 0
	}
	return -int32(syscall.ENOENT)
}

// execRW performs a read or write of any flavour.
func (r *Ring) execRW(o *op) (int32, bool) {
	if res := r.segments(o); res != 0 {
		return res, true
	}
	if o.shortSet {
		r.clipSegs(o.short)
	}
	switch o.kind {
	case kindMem:
		return r.memRW(o), true
	case kindRegular:
		off := int64(-1) // -1: the file position, as IORING_FEAT_RW_CUR_POS
		if o.sqe.Off != math.MaxUint64 {
			if o.sqe.Off > math.MaxInt64 {
				return -int32(syscall.EINVAL), true
			}
			off = int64(o.sqe.Off)
		}
		var n int
		err := retryEINTR(func() (err error) {
			if o.isWrite() {
				n, err = unix.Pwritev2(int(o.fd), r.segs, off, 0)
			} else {
				n, err = unix.Preadv2(int(o.fd), r.segs, off, 0)
			}
			return err
		})
		if err != nil {
			return errRes(err), true
		}
		return int32(n), true
	}
	// A pipe, socket, eventfd…: poll said ready; transfer without blocking
	// at the file position (the offset means nothing to a stream).
	var n int
	err := retryEINTR(func() (err error) {
		if o.isWrite() {
			n, err = unix.Pwritev2(int(o.fd), r.segs, -1, unix.RWF_NOWAIT)
		} else {
			n, err = unix.Preadv2(int(o.fd), r.segs, -1, unix.RWF_NOWAIT)
		}
		if errors.Is(err, unix.EOPNOTSUPP) {
			// The file has no non-blocking mode; poll said ready, so a
			// plain transfer returns promptly unless another reader races.
			if o.isWrite() {
				n, err = unix.Writev(int(o.fd), r.segs)
			} else {
				n, err = unix.Readv(int(o.fd), r.segs)
			}
		}
		return err
	})
	if errors.Is(err, unix.EAGAIN) {
		return 0, false
	}
	if err != nil {
		return errRes(err), true
	}
	return int32(n), true
}

// segments fills r.segs with the memory a transfer names, checking fixed
// buffers against their registration like io_import_fixed.
func (r *Ring) segments(o *op) int32 {
	const efault = -int32(syscall.EFAULT)
	clear(r.segs)
	r.segs = r.segs[:0]
	s := &o.sqe
	switch s.Opcode {
	case uring.IORING_OP_READV, uring.IORING_OP_WRITEV:
		for _, v := range o.iov {
			if v.Len > 0 && v.Base == nil {
				return efault
			}
			r.segs = append(r.segs, iovecBytes(v))
		}
		return 0
	case uring.IORING_OP_READ_FIXED, uring.IORING_OP_WRITE_FIXED:
		if int(s.BufIndex) >= len(r.bufs) {
			return efault
		}
		b := r.bufs[s.BufIndex]
		end := s.Addr + uint64(s.Len)
		if end < s.Addr || s.Addr < b.addr || end > b.addr+b.len {
			return efault
		}
	default:
		if s.Len > 0 && s.Addr == 0 {
			return efault
		}
	}
	if s.Len > 0 {
		r.segs = append(r.segs, bytesAt(s.Addr, s.Len))
	}
	return 0
}

// clipSegs shortens r.segs to limit bytes in total.
func (r *Ring) clipSegs(limit uint64) {
	for i, seg := range r.segs {
		if uint64(len(seg)) >= limit {
			r.segs[i] = seg[:limit]
			clear(r.segs[i+1:])
			r.segs = r.segs[:i+1]
			return
		}
		limit -= uint64(len(seg))
	}
}

// memRW transfers r.segs to or from a MemFile. Writes take effect here, at
// completion, which is what makes Crash drop the ones still in flight.
func (r *Ring) memRW(o *op) int32 {
	m := o.mem
	off := m.pos
	if o.sqe.Off != math.MaxUint64 {
		if o.sqe.Off > math.MaxInt64 {
			return -int32(syscall.EINVAL)
		}
		off = int64(o.sqe.Off)
	}
	f := m.f
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	if o.isWrite() {
		total := 0
		for _, seg := range r.segs {
			total += len(seg)
		}
		if off > MaxMemFileSize-int64(total) {
			return -int32(syscall.EFBIG)
		}
		for _, seg := range r.segs {
			f.writeLocked(seg, off+int64(n))
			n += len(seg)
		}
	} else {
		for _, seg := range r.segs {
			k := f.readLocked(seg, off+int64(n))
			n += k
			if k < len(seg) {
				break
			}
		}
	}
	if o.sqe.Off == math.MaxUint64 {
		m.pos = off + int64(n)
	}
	return int32(n)
}

func retryEINTR(f func() error) error {
	for {
		if err := f(); err != unix.EINTR {
			return err
		}
	}
}

// errRes converts a syscall error to a CQE result.
func errRes(err error) int32 {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return -int32(errno)
	}
	return -int32(syscall.EIO)
}
