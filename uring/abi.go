package uring

import "unsafe"

// This file mirrors the kernel's io_uring ABI (include/uapi/linux/io_uring.h).
// Names follow the kernel's IORING_* constants so the man pages apply directly.

// SQE is one submission queue entry, laid out exactly as struct io_uring_sqe
// (64 bytes). Union fields carry the name of their most common member.
type SQE struct {
	Opcode      uint8
	Flags       uint8  // IOSQE_* flags
	IoPrio      uint16 // for POLL_ADD and friends: op-specific flags
	Fd          int32  // file descriptor, or registered-file index with IOSQE_FIXED_FILE
	Off         uint64 // file offset; addr2 for some ops
	Addr        uint64 // buffer or iovec array address; splice_off_in
	Len         uint32 // buffer length or iovec count
	OpFlags     uint32 // rw_flags, fsync_flags, poll32_events, timeout_flags, …
	UserData    uint64 // returned untouched in the CQE
	BufIndex    uint16 // registered buffer index for READ_FIXED/WRITE_FIXED
	Personality uint16
	SpliceFdIn  int32 // also file_index
	Addr3       uint64
	_           uint64
}

// CQE is one completion queue entry, laid out as struct io_uring_cqe (16 bytes).
type CQE struct {
	UserData uint64
	Res      int32 // result, or -errno
	Flags    uint32
}

// Iovec is struct iovec. Base points at memory the kernel may read or write
// while the operation is in flight, so it must never point into a Go stack.
type Iovec struct {
	Base *byte
	Len  uint64
}

// Timespec is struct __kernel_timespec.
type Timespec struct {
	Sec  int64
	Nsec int64
}

// compile-time ABI size checks.
var (
	_ [64 - unsafe.Sizeof(SQE{})]struct{}
	_ [unsafe.Sizeof(SQE{}) - 64]struct{}
	_ [16 - unsafe.Sizeof(CQE{})]struct{}
	_ [unsafe.Sizeof(CQE{}) - 16]struct{}
	_ [16 - unsafe.Sizeof(Iovec{})]struct{}
)

// Opcodes (enum io_uring_op). Only the ones ringblk prepares are listed.
const (
	IORING_OP_NOP            = 0
	IORING_OP_READV          = 1
	IORING_OP_WRITEV         = 2
	IORING_OP_FSYNC          = 3
	IORING_OP_READ_FIXED     = 4
	IORING_OP_WRITE_FIXED    = 5
	IORING_OP_POLL_ADD       = 6
	IORING_OP_POLL_REMOVE    = 7
	IORING_OP_TIMEOUT        = 11
	IORING_OP_TIMEOUT_REMOVE = 12
	IORING_OP_ASYNC_CANCEL   = 14
	IORING_OP_FALLOCATE      = 17
	IORING_OP_READ           = 22
	IORING_OP_WRITE          = 23
	IORING_OP_URING_CMD      = 46
	IORING_OP_LAST           = 58 // a floor for tables only; the probe reads the kernel's own last opcode (62 on 6.18)
)

// SQE flags (IOSQE_*).
const (
	IOSQE_FIXED_FILE       = 1 << 0
	IOSQE_IO_DRAIN         = 1 << 1
	IOSQE_IO_LINK          = 1 << 2
	IOSQE_IO_HARDLINK      = 1 << 3
	IOSQE_ASYNC            = 1 << 4
	IOSQE_BUFFER_SELECT    = 1 << 5
	IOSQE_CQE_SKIP_SUCCESS = 1 << 6
)

// io_uring_setup flags (IORING_SETUP_*).
const (
	IORING_SETUP_IOPOLL             = 1 << 0
	IORING_SETUP_SQPOLL             = 1 << 1
	IORING_SETUP_SQ_AFF             = 1 << 2
	IORING_SETUP_CQSIZE             = 1 << 3
	IORING_SETUP_CLAMP              = 1 << 4
	IORING_SETUP_ATTACH_WQ          = 1 << 5
	IORING_SETUP_R_DISABLED         = 1 << 6
	IORING_SETUP_SUBMIT_ALL         = 1 << 7
	IORING_SETUP_COOP_TASKRUN       = 1 << 8
	IORING_SETUP_TASKRUN_FLAG       = 1 << 9
	IORING_SETUP_SQE128             = 1 << 10
	IORING_SETUP_CQE32              = 1 << 11
	IORING_SETUP_SINGLE_ISSUER      = 1 << 12
	IORING_SETUP_DEFER_TASKRUN      = 1 << 13
	IORING_SETUP_NO_MMAP            = 1 << 14
	IORING_SETUP_REGISTERED_FD_ONLY = 1 << 15
	IORING_SETUP_NO_SQARRAY         = 1 << 16
)

// io_uring_params.features (IORING_FEAT_*).
const (
	IORING_FEAT_SINGLE_MMAP     = 1 << 0
	IORING_FEAT_NODROP          = 1 << 1
	IORING_FEAT_SUBMIT_STABLE   = 1 << 2
	IORING_FEAT_RW_CUR_POS      = 1 << 3
	IORING_FEAT_CUR_PERSONALITY = 1 << 4
	IORING_FEAT_FAST_POLL       = 1 << 5
	IORING_FEAT_POLL_32BITS     = 1 << 6
	IORING_FEAT_SQPOLL_NONFIXED = 1 << 7
	IORING_FEAT_EXT_ARG         = 1 << 8
	IORING_FEAT_NATIVE_WORKERS  = 1 << 9
	IORING_FEAT_RSRC_TAGS       = 1 << 10
	IORING_FEAT_CQE_SKIP        = 1 << 11
	IORING_FEAT_LINKED_FILE     = 1 << 12
	IORING_FEAT_REG_REG_RING    = 1 << 13
)

// io_uring_enter flags (IORING_ENTER_*).
const (
	IORING_ENTER_GETEVENTS       = 1 << 0
	IORING_ENTER_SQ_WAKEUP       = 1 << 1
	IORING_ENTER_SQ_WAIT         = 1 << 2
	IORING_ENTER_EXT_ARG         = 1 << 3
	IORING_ENTER_REGISTERED_RING = 1 << 4
)

// SQ ring flags (sq_ring->flags, IORING_SQ_*), written by the kernel.
const (
	IORING_SQ_NEED_WAKEUP = 1 << 0
	IORING_SQ_CQ_OVERFLOW = 1 << 1
	IORING_SQ_TASKRUN     = 1 << 2
)

// Op-specific flags.
const (
	IORING_FSYNC_DATASYNC = 1 << 0
	IORING_TIMEOUT_ABS    = 1 << 0
	IORING_POLL_ADD_MULTI = 1 << 0
)

// io_uring_register opcodes (IORING_REGISTER_*).
const (
	IORING_REGISTER_BUFFERS          = 0
	IORING_UNREGISTER_BUFFERS        = 1
	IORING_REGISTER_FILES            = 2
	IORING_UNREGISTER_FILES          = 3
	IORING_REGISTER_EVENTFD          = 4
	IORING_UNREGISTER_EVENTFD        = 5
	IORING_REGISTER_FILES_UPDATE     = 6
	IORING_REGISTER_PROBE            = 8
	IORING_REGISTER_ENABLE_RINGS     = 12
	IORING_REGISTER_FILES2           = 13
	IORING_REGISTER_FILES_UPDATE2    = 14
	IORING_REGISTER_IOWQ_AFF         = 17
	IORING_UNREGISTER_IOWQ_AFF       = 18
	IORING_REGISTER_IOWQ_MAX_WORKERS = 19
	IORING_REGISTER_RING_FDS         = 20
	IORING_UNREGISTER_RING_FDS       = 21
	IORING_RSRC_REGISTER_SPARSE      = 1 << 0
)

// Magic mmap offsets.
const (
	IORING_OFF_SQ_RING = 0
	IORING_OFF_CQ_RING = 0x8000000
	IORING_OFF_SQES    = 0x10000000
)

// Fallocate modes used with IORING_OP_FALLOCATE (from linux/falloc.h).
const (
	FALLOC_FL_KEEP_SIZE  = 0x01
	FALLOC_FL_PUNCH_HOLE = 0x02
	FALLOC_FL_ZERO_RANGE = 0x10
)

// ReservedUserData marks user_data values that belong to the ring itself
// (for example the TIMEOUT it arms to bound a wait). Callers must never set
// this bit; Reap never returns CQEs that carry it.
const ReservedUserData = uint64(1) << 63
