package uring

import "unsafe"

// Prep helpers fill a zeroed SQE returned by GetSQE. They never allocate and
// never keep the pointers they are given: the caller guarantees that every
// buffer, iovec array and timespec stays valid, and off the Go stack, until the
// operation's CQE has been reaped.

// PrepNop prepares a no-op.
func (s *SQE) PrepNop(userData uint64) {
	s.Opcode = IORING_OP_NOP
	s.Fd = -1
	s.UserData = userData
}

// PrepRead prepares a read of len(buf) bytes at off into buf.
func (s *SQE) PrepRead(fd int32, buf []byte, off uint64, userData uint64) {
	s.prepRW(IORING_OP_READ, fd, bufAddr(buf), uint32(len(buf)), off, userData)
}

// PrepWrite prepares a write of buf at off.
func (s *SQE) PrepWrite(fd int32, buf []byte, off uint64, userData uint64) {
	s.prepRW(IORING_OP_WRITE, fd, bufAddr(buf), uint32(len(buf)), off, userData)
}

// PrepReadv prepares a vectored read into iovs at off.
func (s *SQE) PrepReadv(fd int32, iovs []Iovec, off uint64, userData uint64) {
	s.prepRW(IORING_OP_READV, fd, iovAddr(iovs), uint32(len(iovs)), off, userData)
}

// PrepWritev prepares a vectored write of iovs at off.
func (s *SQE) PrepWritev(fd int32, iovs []Iovec, off uint64, userData uint64) {
	s.prepRW(IORING_OP_WRITEV, fd, iovAddr(iovs), uint32(len(iovs)), off, userData)
}

// PrepReadFixed prepares a read into buf, which must lie inside registered
// buffer bufIndex.
func (s *SQE) PrepReadFixed(fd int32, buf []byte, off uint64, bufIndex uint16, userData uint64) {
	s.prepRW(IORING_OP_READ_FIXED, fd, bufAddr(buf), uint32(len(buf)), off, userData)
	s.BufIndex = bufIndex
}

// PrepWriteFixed prepares a write of buf, which must lie inside registered
// buffer bufIndex.
func (s *SQE) PrepWriteFixed(fd int32, buf []byte, off uint64, bufIndex uint16, userData uint64) {
	s.prepRW(IORING_OP_WRITE_FIXED, fd, bufAddr(buf), uint32(len(buf)), off, userData)
	s.BufIndex = bufIndex
}

// PrepFsync prepares an fsync; with datasync it is fdatasync.
func (s *SQE) PrepFsync(fd int32, datasync bool, userData uint64) {
	s.prepRW(IORING_OP_FSYNC, fd, 0, 0, 0, userData)
	if datasync {
		s.OpFlags = IORING_FSYNC_DATASYNC
	}
}

// PrepFallocate prepares fallocate(fd, mode, off, length). The kernel ABI
// carries the length in Addr and the mode in Len.
func (s *SQE) PrepFallocate(fd int32, mode uint32, off, length uint64, userData uint64) {
	s.prepRW(IORING_OP_FALLOCATE, fd, length, mode, off, userData)
}

// PrepPollAdd prepares a one-shot poll for events (POLLIN, POLLOUT…) on fd.
func (s *SQE) PrepPollAdd(fd int32, events uint32, userData uint64) {
	s.prepRW(IORING_OP_POLL_ADD, fd, 0, 0, 0, userData)
	// poll32_events. On big-endian machines the kernel expects the two
	// 16-bit halves swapped; ringblk builds for little-endian Linux only.
	s.OpFlags = events
}

// PrepPollRemove prepares removal of the poll whose user_data is target.
func (s *SQE) PrepPollRemove(target uint64, userData uint64) {
	s.prepRW(IORING_OP_POLL_REMOVE, -1, target, 0, 0, userData)
}

// PrepEventfdRead prepares an 8-byte read of an eventfd counter into buf.
func (s *SQE) PrepEventfdRead(fd int32, buf *[8]byte, userData uint64) {
	// SAFETY: the caller keeps *buf alive and off the Go stack until the CQE.
	s.prepRW(IORING_OP_READ, fd, uint64(uintptr(unsafe.Pointer(buf))), 8, 0, userData)
}

// PrepTimeout prepares a timeout that completes with -ETIME after ts, or with
// 0 once count other completions have arrived (count 0: time only).
func (s *SQE) PrepTimeout(ts *Timespec, count uint64, flags uint32, userData uint64) {
	// SAFETY: the kernel reads *ts when it takes the SQE; the caller keeps it
	// alive and off the Go stack until the CQE.
	s.prepRW(IORING_OP_TIMEOUT, -1, uint64(uintptr(unsafe.Pointer(ts))), 1, count, userData)
	s.OpFlags = flags
}

// PrepTimeoutRemove prepares removal of the timeout whose user_data is target.
func (s *SQE) PrepTimeoutRemove(target uint64, userData uint64) {
	s.prepRW(IORING_OP_TIMEOUT_REMOVE, -1, target, 0, 0, userData)
}

// PrepCancel prepares cancellation of the request whose user_data is target.
func (s *SQE) PrepCancel(target uint64, userData uint64) {
	s.prepRW(IORING_OP_ASYNC_CANCEL, -1, target, 0, 0, userData)
}

// SetLink chains the next SQE after this one (IOSQE_IO_LINK).
func (s *SQE) SetLink() { s.Flags |= IOSQE_IO_LINK }

// SetDrain makes this SQE wait for all earlier ones (IOSQE_IO_DRAIN).
func (s *SQE) SetDrain() { s.Flags |= IOSQE_IO_DRAIN }

// SetFixedFile says Fd is an index into the registered file table.
func (s *SQE) SetFixedFile() { s.Flags |= IOSQE_FIXED_FILE }

func (s *SQE) prepRW(op uint8, fd int32, addr uint64, length uint32, off uint64, userData uint64) {
	s.Opcode = op
	s.Fd = fd
	s.Addr = addr
	s.Len = length
	s.Off = off
	s.UserData = userData
}

func bufAddr(b []byte) uint64 {
	if len(b) == 0 {
		return 0
	}
	// SAFETY: the caller keeps b alive and off the Go stack until the CQE.
	return uint64(uintptr(unsafe.Pointer(&b[0])))
}

func iovAddr(iovs []Iovec) uint64 {
	if len(iovs) == 0 {
		return 0
	}
	// SAFETY: as for bufAddr.
	return uint64(uintptr(unsafe.Pointer(&iovs[0])))
}
