package uring

import (
	"errors"
	"fmt"
	"math/bits"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Option adjusts how New sets up a ring.
type Option func(*config)

type config struct {
	cqEntries    int
	sqPoll       bool
	sqPollIdle   time.Duration
	sqPollCPU    int
	withoutFlags uint32
	noRingFd     bool
}

// WithCQEntries sets the CQ size (rounded up to a power of two, at least the
// SQ size, at most 65536). The default is twice the SQ size.
func WithCQEntries(n int) Option { return func(c *config) { c.cqEntries = n } }

// WithSQPoll asks for a kernel thread that polls the SQ (IORING_SETUP_SQPOLL)
// and sleeps after idle without work (rounded up to whole milliseconds;
// 0 lets the kernel choose, one second). SQPOLL excludes
// IORING_SETUP_DEFER_TASKRUN and COOP_TASKRUN, and before Linux 5.11 it
// needs CAP_SYS_ADMIN and registered files.
func WithSQPoll(idle time.Duration) Option {
	return func(c *config) { c.sqPoll, c.sqPollIdle = true, idle }
}

// WithSQPollCPU pins the SQPOLL thread to cpu (IORING_SETUP_SQ_AFF).
func WithSQPollCPU(cpu int) Option { return func(c *config) { c.sqPollCPU = cpu } }

// WithoutSetupFlags keeps New from asking for the given optional
// IORING_SETUP_* flags (SINGLE_ISSUER, DEFER_TASKRUN, COOP_TASKRUN,
// TASKRUN_FLAG, SUBMIT_ALL). Benchmarks use it to compare setups, tests to
// exercise the fallbacks an older kernel would take. Dropping SINGLE_ISSUER
// drops DEFER_TASKRUN too, which requires it.
func WithoutSetupFlags(mask uint32) Option { return func(c *config) { c.withoutFlags |= mask } }

// WithoutRegisteredRing keeps the ring from registering its own fd
// (IORING_REGISTER_RING_FDS); enter then passes the plain fd.
func WithoutRegisteredRing() Option { return func(c *config) { c.noRingFd = true } }

// setupFallbacks lists the optional setup flags newest first. When
// io_uring_setup answers EINVAL (an older kernel does not know a flag), New
// drops the first group still requested and tries again, down to the plain
// ring every supported kernel (5.10+) accepts.
var setupFallbacks = [...]uint32{
	IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, // 6.0 / 6.1
	IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,   // 5.19
	IORING_SETUP_SUBMIT_ALL,                                 // 5.18
}

// requiredFeatures are the features every kernel since 5.5 has and the ring
// relies on: no completion is ever dropped on CQ overflow (NODROP), and the
// kernel copies what an SQE points at during submission (SUBMIT_STABLE).
const requiredFeatures = IORING_FEAT_NODROP | IORING_FEAT_SUBMIT_STABLE

// New sets up an io_uring instance with an SQ of entries entries, rounded up
// to a power of two (the kernel would round too; New does it first so that
// SQEntries reports the real size). entries outside 1…32768
// (IORING_MAX_ENTRIES) is an error.
//
// New asks for the best setup the kernel offers and falls back on EINVAL:
//
//	SINGLE_ISSUER|DEFER_TASKRUN  (6.1+) completions run only in the owner's enters
//	COOP_TASKRUN|TASKRUN_FLAG    (5.19+) no IPIs for task work; a flag says when it is pending
//	SUBMIT_ALL                   (5.18+) one bad SQE does not stop the rest of a batch
//	CQSIZE                       (always) CQ = 2 × SQ unless WithCQEntries
//
// A SINGLE_ISSUER ring is created disabled and bound to a thread by its
// first io_uring_enter, so New itself may run on any goroutine; from that
// enter on, every enter and register must come from the same OS thread
// (runtime.LockOSThread). New also probes the supported opcodes
// (IORING_REGISTER_PROBE); Params and Supports report what it found.
//
// When the kernel refuses io_uring altogether the error wraps ErrUnavailable
// and names the cause (kernel.io_uring_disabled, seccomp, no kernel support).
func New(entries int, opts ...Option) (*Ring, error) {
	cfg := config{sqPollCPU: -1}
	for _, o := range opts {
		o(&cfg)
	}
	sq, err := roundEntries("SQ", entries, 1, maxEntries)
	if err != nil {
		return nil, err
	}
	cq := 2 * sq
	if cfg.cqEntries != 0 {
		if cq, err = roundEntries("CQ", cfg.cqEntries, int(sq), maxCQEntries); err != nil {
			return nil, err
		}
	}
	if cfg.sqPoll && (cfg.sqPollIdle < 0 || cfg.sqPollIdle > time.Duration(1<<32-1)*time.Millisecond) {
		return nil, fmt.Errorf("uring: SQPOLL idle time %v out of range", cfg.sqPollIdle)
	}

	p, fd, err := setup(sq, cq, &cfg)
	if err != nil {
		return nil, err
	}
	r := &Ring{fd: fd, setupFlags: p.flags, ringIndex: -1, wantRingFd: !cfg.noRingFd}
	if err := r.mapRings(&p); err != nil {
		r.unmap()
		unix.Close(fd)
		return nil, err
	}
	r.enterFd = uintptr(fd)
	r.sqpoll = p.flags&IORING_SETUP_SQPOLL != 0
	r.deferTaskrun = p.flags&IORING_SETUP_DEFER_TASKRUN != 0
	r.extArg = p.features&IORING_FEAT_EXT_ARG != 0
	r.timeoutTS = make([]Timespec, r.sqEntries)
	// SAFETY: waitTS is a field of the heap-allocated Ring, which the owner
	// keeps alive for as long as it calls SubmitAndWait; heap objects do not
	// move, so the address stays valid for the ring's lifetime.
	r.waitArg.ts = uint64(uintptr(unsafe.Pointer(&r.waitTS)))
	r.params = Params{
		SQEntries: int(r.sqEntries),
		CQEntries: int(r.cqEntries),
		Flags:     p.flags &^ IORING_SETUP_R_DISABLED,
		Features:  p.features,
	}
	if r.sqpoll {
		r.params.SQThreadIdle = time.Duration(p.sqThreadIdle) * time.Millisecond
	}
	r.probe()
	return r, nil
}

// roundEntries validates n against [lo, hi] and rounds it up to a power of two.
func roundEntries(what string, n, lo, hi int) (uint32, error) {
	if n < lo || n > hi {
		return 0, fmt.Errorf("uring: %s size %d out of range: must be between %d and %d", what, n, lo, hi)
	}
	return uint32(1) << bits.Len32(uint32(n-1)), nil
}

// setup calls io_uring_setup, dropping optional flags on EINVAL.
func setup(sq, cq uint32, cfg *config) (ioUringParams, int, error) {
	base := uint32(IORING_SETUP_CQSIZE)
	optional := uint32(0)
	for _, f := range setupFallbacks {
		optional |= f
	}
	if cfg.withoutFlags&IORING_SETUP_SINGLE_ISSUER != 0 {
		cfg.withoutFlags |= IORING_SETUP_DEFER_TASKRUN
	}
	var idleMs uint32
	if cfg.sqPoll {
		base |= IORING_SETUP_SQPOLL
		optional &^= IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
			IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG
		idleMs = uint32((cfg.sqPollIdle + time.Millisecond - 1) / time.Millisecond)
		if cfg.sqPollCPU >= 0 {
			base |= IORING_SETUP_SQ_AFF
		}
	}
	optional &^= cfg.withoutFlags

	next := 0
	for {
		flags := base | optional
		if flags&IORING_SETUP_SINGLE_ISSUER != 0 {
			flags |= IORING_SETUP_R_DISABLED // bound to a thread at the first enter
		}
		p := ioUringParams{cqEntries: cq, flags: flags, sqThreadIdle: idleMs}
		if cfg.sqPoll && cfg.sqPollCPU >= 0 {
			p.sqThreadCPU = uint32(cfg.sqPollCPU)
		}
		fd, errno := sysSetup(sq, &p)
		if errno == 0 {
			if p.features&requiredFeatures != requiredFeatures {
				unix.Close(fd)
				return p, -1, fmt.Errorf("%w: the kernel lacks IORING_FEAT_NODROP or IORING_FEAT_SUBMIT_STABLE (features %#x); ringblk needs Linux 5.10 or later",
					ErrUnavailable, p.features)
			}
			p.flags = flags
			return p, fd, nil
		}
		if errno == unix.EINVAL {
			for next < len(setupFallbacks) && optional&setupFallbacks[next] == 0 {
				next++
			}
			if next < len(setupFallbacks) {
				optional &^= setupFallbacks[next]
				continue
			}
		}
		return p, -1, setupError(errno, sq, cq, flags)
	}
}

// ioUringDisabledPath is the sysctl that can switch io_uring off (Linux 6.6+).
var ioUringDisabledPath = "/proc/sys/kernel/io_uring_disabled"

// setupError explains why io_uring_setup failed. Refusals of io_uring as such
// wrap ErrUnavailable, so callers (and tests) can fall back or skip.
func setupError(errno syscall.Errno, sq, cq, flags uint32) error {
	switch errno {
	case unix.EPERM, unix.EACCES:
		switch v := readSysctl(ioUringDisabledPath); v {
		case "2":
			return fmt.Errorf("%w: io_uring is disabled on this host (sysctl kernel.io_uring_disabled=2): %w", ErrUnavailable, errno)
		case "1":
			return fmt.Errorf("%w: io_uring is restricted to the group in sysctl kernel.io_uring_group (kernel.io_uring_disabled=1) and this process is not privileged or in that group: %w",
				ErrUnavailable, errno)
		default:
			return fmt.Errorf("%w: io_uring_setup was refused although kernel.io_uring_disabled is %q: a seccomp filter (such as a container runtime's default profile) or a security module blocks io_uring: %w",
				ErrUnavailable, v, errno)
		}
	case unix.ENOSYS:
		return fmt.Errorf("%w: the kernel has no io_uring (ENOSYS: built without CONFIG_IO_URING, or older than 5.1, or the system call is filtered); ringblk needs Linux 5.10 or later: %w",
			ErrUnavailable, errno)
	case unix.ENOMEM:
		return fmt.Errorf("uring: io_uring_setup(sq %d, cq %d): out of memory for the rings (before Linux 5.12 ring memory counts against RLIMIT_MEMLOCK: raise ulimit -l): %w",
			sq, cq, errno)
	case unix.EMFILE, unix.ENFILE:
		return fmt.Errorf("uring: io_uring_setup: out of file descriptors: %w", errno)
	default:
		return fmt.Errorf("uring: io_uring_setup(sq %d, cq %d, flags %s): %w", sq, cq, setupFlagString(flags), errno)
	}
}

// readSysctl returns the trimmed contents of a /proc/sys file, or a note
// saying why it could not be read.
func readSysctl(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "absent (kernel before 6.6)"
		}
		return "unreadable"
	}
	return strings.TrimSpace(string(b))
}

// mapRings maps the SQ and CQ rings and the SQE array and points the ring's
// fields into them. It identity-maps the SQ index array once: SQE slot i is
// always submitted through index entry i, so submission never writes it again.
func (r *Ring) mapRings(p *ioUringParams) error {
	const prot, flags = unix.PROT_READ | unix.PROT_WRITE, unix.MAP_SHARED | unix.MAP_POPULATE
	sqSize := int(p.sqOff.array) + int(p.sqEntries)*sqIndexSize
	cqSize := int(p.cqOff.cqes) + int(p.cqEntries)*cqeSize
	single := p.features&IORING_FEAT_SINGLE_MMAP != 0
	if single {
		sqSize = max(sqSize, cqSize)
	}
	var err error
	if r.sqRing, err = unix.Mmap(r.fd, IORING_OFF_SQ_RING, sqSize, prot, flags); err != nil {
		return fmt.Errorf("uring: mmap of the SQ ring (%d bytes): %w", sqSize, err)
	}
	if single {
		r.cqRing = r.sqRing
	} else if r.cqRing, err = unix.Mmap(r.fd, IORING_OFF_CQ_RING, cqSize, prot, flags); err != nil {
		return fmt.Errorf("uring: mmap of the CQ ring (%d bytes): %w", cqSize, err)
	}
	sqeBytes := int(p.sqEntries) * sqeSize
	if r.sqeMem, err = unix.Mmap(r.fd, IORING_OFF_SQES, sqeBytes, prot, flags); err != nil {
		return fmt.Errorf("uring: mmap of the SQE array (%d bytes): %w", sqeBytes, err)
	}

	r.sqHead = ringWord(r.sqRing, p.sqOff.head)
	r.sqTail = ringWord(r.sqRing, p.sqOff.tail)
	r.sqFlags = ringWord(r.sqRing, p.sqOff.flags)
	r.sqMask = ringWord(r.sqRing, p.sqOff.ringMask).Load()
	r.sqEntries = ringWord(r.sqRing, p.sqOff.ringEntries).Load()
	r.cqHead = ringWord(r.cqRing, p.cqOff.head)
	r.cqTail = ringWord(r.cqRing, p.cqOff.tail)
	r.cqMask = ringWord(r.cqRing, p.cqOff.ringMask).Load()
	r.cqEntries = ringWord(r.cqRing, p.cqOff.ringEntries).Load()

	// SAFETY: sqeMem is exactly sqEntries SQEs long and page-aligned; SQE is
	// the kernel's 64-byte struct io_uring_sqe (checked in abi.go). The
	// mapping stays valid until Close, which drops the slice first.
	r.sqes = unsafe.Slice((*SQE)(unsafe.Pointer(&r.sqeMem[0])), r.sqEntries)
	// SAFETY: the kernel places the CQE array at cq_off.cqes, 16-byte aligned,
	// with cqEntries entries inside the CQ mapping (cqSize above).
	r.cqes = unsafe.Slice((*CQE)(unsafe.Pointer(&r.cqRing[p.cqOff.cqes])), r.cqEntries)
	// SAFETY: the SQ index array is sqEntries __u32 words at sq_off.array
	// inside the SQ mapping. Plain stores suffice: the kernel reads it only in
	// io_uring_enter (or the SQ thread after our first tail store), both of
	// which are ordered after these writes.
	array := unsafe.Slice((*uint32)(unsafe.Pointer(&r.sqRing[p.sqOff.array])), r.sqEntries)
	for i := range array {
		array[i] = uint32(i)
	}
	r.sqeTail = r.sqTail.Load()
	r.sqPublished = r.sqeTail
	r.cqSeen = r.cqHead.Load()
	return nil
}

// ringWord returns the 32-bit ring word at byte offset off of an io_uring
// mapping.
func ringWord(mem []byte, off uint32) *atomic.Uint32 {
	// SAFETY: mem is an io_uring mapping that stays mapped until Close; the
	// kernel puts every ring word at a 4-byte-aligned offset inside it, and
	// atomic.Uint32 has the size and alignment of uint32.
	return (*atomic.Uint32)(unsafe.Pointer(&mem[off]))
}

// unmap releases whatever mapRings mapped.
func (r *Ring) unmap() {
	r.sqes, r.cqes = nil, nil
	r.sqHead, r.sqTail, r.sqFlags, r.cqHead, r.cqTail = nil, nil, nil, nil, nil
	if r.sqeMem != nil {
		unix.Munmap(r.sqeMem)
	}
	// SAFETY: SliceData only compares the two mappings' addresses (one
	// mapping serves both rings with IORING_FEAT_SINGLE_MMAP).
	if r.cqRing != nil && unsafe.SliceData(r.cqRing) != unsafe.SliceData(r.sqRing) {
		unix.Munmap(r.cqRing)
	}
	if r.sqRing != nil {
		unix.Munmap(r.sqRing)
	}
	r.sqeMem, r.cqRing, r.sqRing = nil, nil, nil
}

// probe asks the kernel which opcodes it supports. A kernel without
// IORING_REGISTER_PROBE (before 5.6) leaves Params.Probed false and Supports
// reporting false for everything.
func (r *Ring) probe() {
	type probeBuf struct {
		hdr probeHeader
		ops [256]probeOp
	}
	pb := new(probeBuf)
	// SAFETY: pb is live until the call returns and sized for len(pb.ops)
	// entries, the count passed; the kernel fills it during the call.
	if _, errno := sysRegister(r.fd, IORING_REGISTER_PROBE, unsafe.Pointer(pb), uint32(len(pb.ops))); errno != 0 {
		return
	}
	for _, op := range pb.ops[:pb.hdr.opsLen] {
		if op.flags&ioUringOpSupported != 0 {
			r.ops[op.op/64] |= 1 << (op.op % 64)
		}
	}
	r.params.Probed = true
	r.params.LastOp = pb.hdr.lastOp
}

// Supports reports whether the kernel supports opcode op (IORING_OP_*),
// according to the probe New ran. It reports false after Close.
func (r *Ring) Supports(op uint8) bool {
	return !r.closed && r.ops[op/64]&(1<<(op%64)) != 0
}

// Params describes what New negotiated with the kernel.
type Params struct {
	SQEntries    int
	CQEntries    int
	Flags        uint32        // IORING_SETUP_* in effect
	Features     uint32        // IORING_FEAT_* the kernel reported
	SQThreadIdle time.Duration // SQPOLL idle time (0 without SQPOLL)
	Probed       bool          // the opcode probe ran (see Supports)
	LastOp       uint8         // highest opcode the kernel knows (probe: IORING_OP_LAST-1)
	// RegisteredRing reports that io_uring_enter passes a registered ring
	// index (IORING_ENTER_REGISTERED_RING). It is decided by the first
	// enter, on the owner thread, so it reads false before that.
	RegisteredRing bool
}

// Params reports the setup New chose. It stays valid after Close.
func (r *Ring) Params() Params { return r.params }

// String renders p for logs and benchmark reports.
func (p Params) String() string {
	return fmt.Sprintf("sq=%d cq=%d flags=%s features=%s ops=%d registered_ring=%t",
		p.SQEntries, p.CQEntries, setupFlagString(p.Flags), featureString(p.Features), p.LastOp, p.RegisteredRing)
}

var setupFlagNames = [...]string{
	"IOPOLL", "SQPOLL", "SQ_AFF", "CQSIZE", "CLAMP", "ATTACH_WQ", "R_DISABLED", "SUBMIT_ALL",
	"COOP_TASKRUN", "TASKRUN_FLAG", "SQE128", "CQE32", "SINGLE_ISSUER", "DEFER_TASKRUN",
	"NO_MMAP", "REGISTERED_FD_ONLY", "NO_SQARRAY",
}

var featureNames = [...]string{
	"SINGLE_MMAP", "NODROP", "SUBMIT_STABLE", "RW_CUR_POS", "CUR_PERSONALITY", "FAST_POLL",
	"POLL_32BITS", "SQPOLL_NONFIXED", "EXT_ARG", "NATIVE_WORKERS", "RSRC_TAGS", "CQE_SKIP",
	"LINKED_FILE", "REG_REG_RING", "RECVSEND_BUNDLE", "MIN_TIMEOUT", "RW_ATTR", "NO_IOWAIT",
}

func setupFlagString(f uint32) string { return bitString(f, setupFlagNames[:]) }
func featureString(f uint32) string   { return bitString(f, featureNames[:]) }

// bitString names the set bits of v, "A|B|0x1000" style.
func bitString(v uint32, names []string) string {
	if v == 0 {
		return "0"
	}
	var b strings.Builder
	for i := 0; i < 32; i++ {
		if v&(1<<i) == 0 {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('|')
		}
		if i < len(names) {
			b.WriteString(names[i])
		} else {
			fmt.Fprintf(&b, "%#x", uint32(1)<<i)
		}
	}
	return b.String()
}

// Close releases the ring: it unregisters the ring fd (on the owner thread),
// unmaps the rings and closes the ring fd. The kernel cancels whatever is
// still in flight. Close is idempotent: later calls return nil, and every
// other method then returns ErrClosed (GetSQE nil, counts 0).
//
// Call Close from the owner thread. From another thread the ring fd
// registration, which lives in the owner thread's table and holds a
// reference on the ring, cannot be removed, so the kernel keeps the ring (and
// its registered files) until the owner thread exits.
func (r *Ring) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	if r.ringIndex >= 0 && unix.Gettid() == r.ownerTid {
		r.unregisterRingFd()
	}
	r.enterFd, r.enterFlags = 0, 0
	r.unmap()
	if err := unix.Close(r.fd); err != nil {
		return fmt.Errorf("uring: closing the ring fd: %w", err)
	}
	r.fd = -1
	return nil
}
