package uring

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file holds the three io_uring system calls and the argument structs
// only they use. It is the errno boundary for setup and registration; the
// enter path maps its errno in ring.go (enterResult).

// ioUringParams is struct io_uring_params (120 bytes). The kernel reads
// sqEntries..wqFd and fills in the rest.
type ioUringParams struct {
	sqEntries    uint32
	cqEntries    uint32
	flags        uint32
	sqThreadCPU  uint32
	sqThreadIdle uint32 // milliseconds
	features     uint32
	wqFd         uint32
	resv         [3]uint32
	sqOff        sqringOffsets
	cqOff        cqringOffsets
}

// sqringOffsets is struct io_sqring_offsets: byte offsets of the SQ ring's
// fields inside the IORING_OFF_SQ_RING mapping.
type sqringOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

// cqringOffsets is struct io_cqring_offsets, for the IORING_OFF_CQ_RING
// mapping (the same mapping as the SQ ring with IORING_FEAT_SINGLE_MMAP).
type cqringOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

// getEventsArg is struct io_uring_getevents_arg, passed to io_uring_enter
// with IORING_ENTER_EXT_ARG. minWaitUsec was padding before Linux 6.12 and
// stays zero here.
type getEventsArg struct {
	sigmask     uint64
	sigmaskSize uint32
	minWaitUsec uint32
	ts          uint64 // address of a Timespec
}

// probeHeader is struct io_uring_probe without its flexible ops array; each
// op that follows is a probeOp.
type probeHeader struct {
	lastOp uint8
	opsLen uint8
	resv   uint16
	resv2  [3]uint32
}

// probeOp is struct io_uring_probe_op.
type probeOp struct {
	op    uint8
	resv  uint8
	flags uint16 // ioUringOpSupported
	resv2 uint32
}

const ioUringOpSupported = 1 << 0 // IO_URING_OP_SUPPORTED

// rsrcRegister is struct io_uring_rsrc_register (IORING_REGISTER_FILES2).
type rsrcRegister struct {
	nr    uint32
	flags uint32 // IORING_RSRC_REGISTER_SPARSE
	resv2 uint64
	data  uint64
	tags  uint64
}

// rsrcUpdate is struct io_uring_rsrc_update, which shares its layout with
// the older struct io_uring_files_update (IORING_REGISTER_FILES_UPDATE,
// IORING_REGISTER_RING_FDS).
type rsrcUpdate struct {
	offset uint32
	resv   uint32
	data   uint64
}

// compile-time ABI size checks.
var (
	_ [120 - unsafe.Sizeof(ioUringParams{})]struct{}
	_ [unsafe.Sizeof(ioUringParams{}) - 120]struct{}
	_ [24 - unsafe.Sizeof(getEventsArg{})]struct{}
	_ [unsafe.Sizeof(getEventsArg{}) - 24]struct{}
	_ [16 - unsafe.Sizeof(probeHeader{})]struct{}
	_ [unsafe.Sizeof(probeHeader{}) - 16]struct{}
	_ [8 - unsafe.Sizeof(probeOp{})]struct{}
	_ [32 - unsafe.Sizeof(rsrcRegister{})]struct{}
	_ [unsafe.Sizeof(rsrcRegister{}) - 32]struct{}
	_ [16 - unsafe.Sizeof(rsrcUpdate{})]struct{}
)

// Kernel limits (io_uring/io_uring.h, io_uring/rsrc.h).
const (
	maxEntries    = 32768     // IORING_MAX_ENTRIES
	maxCQEntries  = 2 * 32768 // IORING_MAX_CQ_ENTRIES
	maxRegBuffers = 1 << 14   // IORING_MAX_REG_BUFFERS
	maxBufferSize = 1 << 30   // one registered buffer: at most 1 GiB
	maxFixedFiles = 1 << 20   // IORING_MAX_FIXED_FILES (6.x; RLIMIT_NOFILE also caps it)
	nsigBytes     = 64 / 8    // _NSIG/8: sigset size io_uring_enter expects without EXT_ARG
	sqeSize       = 64        // unsafe.Sizeof(SQE{})
	cqeSize       = 16        // unsafe.Sizeof(CQE{})
	sqIndexSize   = 4         // one __u32 in the SQ index array
)

// sysSetup is io_uring_setup(2); tests replace it to play an older kernel.
var sysSetup = ioUringSetup

func ioUringSetup(entries uint32, p *ioUringParams) (int, syscall.Errno) {
	// SAFETY: p points to a live ioUringParams for the duration of the call;
	// the kernel reads and writes exactly sizeof(struct io_uring_params).
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(p)), 0)
	return int(fd), errno
}

// sysEnter is io_uring_enter(2). arg is nil or a pointer the kernel reads
// during the call only (a getEventsArg with IORING_ENTER_EXT_ARG).
func sysEnter(fd uintptr, toSubmit, minComplete, flags uint32, arg unsafe.Pointer, argSize uintptr) (uint32, syscall.Errno) {
	// SAFETY: arg is nil or points into the Ring (heap, alive for the call).
	// Syscall6, not RawSyscall6: the call may block in the kernel's wait, so
	// the runtime must be told to hand this P to another thread.
	n, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, fd, uintptr(toSubmit), uintptr(minComplete),
		uintptr(flags), uintptr(arg), argSize)
	return uint32(n), errno
}

// sysRegister is io_uring_register(2). arg points to memory the kernel reads
// (and for some opcodes writes) during the call only.
func sysRegister(fd int, opcode uint32, arg unsafe.Pointer, nrArgs uint32) (int, syscall.Errno) {
	// SAFETY: arg is nil or points to live memory sized for opcode and
	// nrArgs, kept reachable by the caller until the call returns.
	n, _, errno := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(fd), uintptr(opcode),
		uintptr(arg), uintptr(nrArgs), 0, 0)
	return int(n), errno
}
