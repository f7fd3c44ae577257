package uringtest

import (
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/uring"
)

// Kernel limits the fake enforces like io_uring_setup and
// io_uring_register do.
const (
	maxSQEntries   = 32768   // IORING_MAX_ENTRIES
	maxCQEntries   = 65536   // IORING_MAX_CQ_ENTRIES
	maxFixedFiles  = 1 << 20 // IORING_MAX_FIXED_FILES
	maxRegBuffers  = 1 << 14 // IORING_MAX_REG_BUFFERS
	maxRegBufSize  = 1 << 30 // io_buffer_validate: SZ_1G
	defaultEntries = 128     // QEMU's MAX_ENTRIES

	defaultLogLimit = 1 << 16
)

// MemFdBase is the first fake fd handed out for MemFiles. Real fds never get
// this high (the kernel's nr_open limit is far below it), so the two kinds
// cannot collide.
const MemFdBase int32 = 1 << 30

// ErrDeadlock is returned by SubmitAndWait when it was asked to wait without
// a time limit for completions that can never arrive: nothing in flight can
// complete by ticking, no operation waits on a real fd and no timer is
// armed. The kernel would sleep forever; the fake fails the test instead.
var ErrDeadlock = errors.New("uringtest: wait can never be satisfied")

// Options configure a fake ring. The zero value is a 128-entry ring that
// completes every operation in submission order during the call that
// submits it (like the kernel's inline completion of buffered I/O).
type Options struct {
	// Seed seeds the PCG generator behind every random choice. The same
	// seed, options and call sequence give the same completion order.
	Seed uint64

	// SQEntries is the SQ size (default 128) and CQEntries the CQ size
	// (default 2×SQEntries). Both are rounded up to a power of two like
	// io_uring_setup does; CQEntries below SQEntries panics (the kernel
	// returns EINVAL). A small CQ exercises overflow: completions beyond its
	// capacity wait in a backlog, as with IORING_FEAT_NODROP.
	SQEntries int
	CQEntries int

	// Reorder completes each batch of operations that are able to complete
	// together in a seeded random order instead of submission order.
	Reorder bool
	// MaxDelay gives every operation a seeded random delay of 0..MaxDelay
	// ticks, counted from when it is issued. Operations with different
	// delays complete in different ticks, so with Reorder any interleaving
	// of in-flight operations can occur.
	MaxDelay int

	// MaxSubmit makes SubmitAndWait consume at most this many SQEs per call
	// (0: all pending), exercising partial submission. As in the kernel, a
	// link chain cut by the limit runs as two separate chains.
	MaxSubmit int
	// BusyProb is the probability that a SubmitAndWait with pending SQEs
	// returns ErrBusy without consuming any. See also InjectBusy.
	BusyProb float64
	// BusyOnOverflow makes SubmitAndWait return ErrBusy while completions
	// wait in the overflow backlog, as older kernels did (-EBUSY).
	BusyOnOverflow bool
	// InterruptProb is the probability that a SubmitAndWait that would
	// wait returns early with no error, as after EINTR. See InjectInterrupt.
	InterruptProb float64

	// Faults are injected at creation, as by Inject.
	Faults []Fault

	// NoLog turns off the log of submitted SQEs (see Log), whose growth is
	// the one allocation left on the submission path.
	NoLog bool
	// LogLimit caps the log at the first LogLimit SQEs (default 65536, 4
	// MiB) so long stress runs do not grow without bound; Stats still
	// counts every SQE.
	LogLimit int
}

// Stats counts what a ring has done. Tests assert on it, for example that a
// batch of 32 reads took exactly one enter.
type Stats struct {
	Calls      int     // SubmitAndWait calls, including refused ones
	Enters     int     // SubmitAndWait calls that consumed at least one SQE
	Busy       int     // SubmitAndWait calls that returned ErrBusy
	Submitted  int     // SQEs consumed
	Completed  int     // CQEs posted (into the CQ or the overflow backlog)
	Overflowed int     // CQEs that went through the overflow backlog
	Reaped     int     // CQEs returned by Reap
	Ops        [64]int // SQEs consumed, by opcode
	Faults     int     // operations on which a fault rule fired
}

// Ring is a fake io_uring instance implementing uring.Queue. See the
// package documentation for the model.
//
// A Ring is owned by one goroutine, like the real ring; only the real fds it
// polls may be written by others (that is how a cross-goroutine eventfd kick
// wakes a waiting SubmitAndWait).
type Ring struct {
	opts   Options
	rng    *rand.Rand
	closed bool

	// SQ: slots [sqHead, sqTail) are prepared and not yet consumed.
	sq             []uring.SQE
	sqHead, sqTail uint32

	// CQ: entries [cqHead, cqTail) are ready. backlog[backlogHead:] holds
	// completions that found the CQ full, in completion order.
	// INVARIANT: the backlog is non-empty only while the CQ is (or was at
	// posting time) full, and new completions queue behind it.
	cq             []uring.CQE
	cqHead, cqTail uint32
	backlog        []uring.CQE
	backlogHead    int

	// inflight holds submitted operations without a posted CQE, in
	// submission order. free recycles op records.
	inflight []*op
	free     []*op
	batch    []*op
	pollfds  []unix.PollFd
	waitfds  []unix.PollFd
	segs     [][]byte

	seq            uint64
	tick           uint64
	nonTimeoutCQEs uint64 // CQEs posted by non-TIMEOUT ops: the clock of count timeouts

	files   []int32 // registered file table (-1: empty slot); nil before RegisterFiles
	bufs    []regBuf
	bufRefs [][]byte // keeps registered Go memory reachable
	mems    []memFd  // MemFile attachments; fd = MemFdBase + index

	rules     []*Rule
	hold      func(*uring.SQE) bool
	busyN     int
	interrupt int

	// epoch and epochMono map CLOCK_MONOTONIC timestamps (IORING_TIMEOUT_ABS)
	// onto the time package's clock.
	epoch     time.Time
	epochMono int64

	stats Stats
	log   []uring.SQE
}

type regBuf struct{ addr, len uint64 }

type memFd struct {
	f   *MemFile
	pos int64 // file position for offset -1 (IORING_FEAT_RW_CUR_POS)
}

var _ uring.Queue = (*Ring)(nil)

// New returns a fake ring configured by opts. It panics on options the
// kernel would reject.
func New(opts Options) *Ring {
	sqN := opts.SQEntries
	if sqN == 0 {
		sqN = defaultEntries
	}
	if sqN < 0 || sqN > maxSQEntries {
		panic(fmt.Sprintf("uringtest: SQEntries %d out of range [1, %d]", sqN, maxSQEntries))
	}
	sqN = roundPow2(sqN)
	cqN := opts.CQEntries
	if cqN == 0 {
		cqN = 2 * sqN
	}
	if cqN < 0 || cqN > maxCQEntries {
		panic(fmt.Sprintf("uringtest: CQEntries %d out of range [1, %d]", cqN, maxCQEntries))
	}
	cqN = roundPow2(cqN)
	if cqN < sqN {
		panic(fmt.Sprintf("uringtest: CQEntries %d < SQEntries %d (io_uring_setup returns EINVAL)", cqN, sqN))
	}
	if opts.MaxDelay < 0 || opts.MaxSubmit < 0 || opts.LogLimit < 0 {
		panic("uringtest: MaxDelay, MaxSubmit and LogLimit must not be negative")
	}
	if opts.LogLimit == 0 {
		opts.LogLimit = defaultLogLimit
	}
	for _, p := range []float64{opts.BusyProb, opts.InterruptProb} {
		if !(p >= 0 && p <= 1) {
			panic("uringtest: probabilities must lie in [0, 1]")
		}
	}
	r := &Ring{
		opts: opts,
		rng:  rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x9e3779b97f4a7c15)),
		sq:   make([]uring.SQE, sqN),
		cq:   make([]uring.CQE, cqN),
	}
	var ts unix.Timespec
	r.epoch = time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic("uringtest: clock_gettime: " + err.Error())
	}
	r.epochMono = ts.Nano()
	for _, f := range opts.Faults {
		r.Inject(f)
	}
	return r
}

func roundPow2(n int) int {
	if n <= 1 {
		return 1
	}
	return 1 << bits.Len(uint(n-1))
}

// GetSQE returns the next free SQ slot, zeroed, or nil when the SQ is full
// or the ring is closed.
func (r *Ring) GetSQE() *uring.SQE {
	if r.closed || int(r.sqTail-r.sqHead) == len(r.sq) {
		return nil
	}
	s := &r.sq[r.sqTail&uint32(len(r.sq)-1)]
	*s = uring.SQE{}
	r.sqTail++
	return s
}

// Pending reports how many SQEs are prepared and not yet consumed.
func (r *Ring) Pending() int {
	if r.closed {
		return 0
	}
	return int(r.sqTail - r.sqHead)
}

// SQEntries reports the SQ size.
func (r *Ring) SQEntries() int { return len(r.sq) }

// CQEntries reports the CQ size.
func (r *Ring) CQEntries() int { return len(r.cq) }

// Ready reports how many CQEs wait in the CQ. Like the kernel ring it does
// not count the overflow backlog, which Reap and SubmitAndWait move into the
// CQ as room appears.
func (r *Ring) Ready() int {
	if r.closed {
		return 0
	}
	return int(r.cqTail - r.cqHead)
}

// SubmitAndWait consumes pending SQEs (at most Options.MaxSubmit), runs one
// tick of completions, and then, if minComplete > 0 and timeout != 0, waits
// until at least minComplete CQEs are ready (or the CQ is full), ticking
// delayed operations and blocking in poll(2) or sleeping for real fds and
// timers. A wait that can never end returns ErrDeadlock when timeout < 0;
// with timeout > 0 it sleeps out the timeout and returns nil, as the kernel
// would.
func (r *Ring) SubmitAndWait(minComplete int, timeout time.Duration) (int, error) {
	if r.closed {
		return 0, uring.ErrClosed
	}
	r.stats.Calls++
	r.flushBacklog()
	if r.Pending() > 0 && r.refuse() {
		r.stats.Busy++
		return 0, uring.ErrBusy
	}
	n := r.submit()
	if n > 0 {
		r.stats.Enters++
	}
	r.step(true, false)
	if minComplete <= 0 || timeout == 0 || r.satisfied(minComplete) {
		return n, nil
	}
	if r.interrupted() {
		return n, nil
	}
	return n, r.wait(minComplete, timeout)
}

// refuse decides whether this enter fails with ErrBusy.
func (r *Ring) refuse() bool {
	switch {
	case r.busyN > 0:
		r.busyN--
		return true
	case r.opts.BusyOnOverflow && r.backlogLen() > 0:
		return true
	case r.opts.BusyProb > 0:
		return r.rng.Float64() < r.opts.BusyProb
	}
	return false
}

func (r *Ring) interrupted() bool {
	switch {
	case r.interrupt > 0:
		r.interrupt--
		return true
	case r.opts.InterruptProb > 0:
		return r.rng.Float64() < r.opts.InterruptProb
	}
	return false
}

// satisfied is the wait condition. A full CQ also ends the wait: no
// further CQE can become visible until the caller reaps, so waiting longer
// could only deadlock (the kernel likewise wakes waiters on overflow).
func (r *Ring) satisfied(minComplete int) bool {
	ready := r.Ready()
	return ready >= minComplete || ready == len(r.cq)
}

// wait blocks until satisfied(minComplete) or the timeout; see SubmitAndWait.
func (r *Ring) wait(minComplete int, timeout time.Duration) error {
	var deadline time.Time
	bounded := timeout > 0
	if bounded {
		deadline = time.Now().Add(timeout)
	}
	for {
		if !r.tickable() {
			fds, next := r.waitSet()
			if len(fds) == 0 && next.IsZero() && !bounded {
				return r.deadlock(minComplete)
			}
			until := next
			if bounded && (until.IsZero() || deadline.Before(until)) {
				until = deadline
			}
			r.block(fds, until)
		}
		r.step(true, false)
		if r.satisfied(minComplete) {
			return nil
		}
		if bounded && !time.Now().Before(deadline) {
			return nil
		}
	}
}

func (r *Ring) deadlock(minComplete int) error {
	held := 0
	for _, o := range r.inflight {
		if o.held {
			held++
		}
	}
	return fmt.Errorf("%w: want %d CQEs, %d ready; %d in flight (%d held); no real fd to poll and no timer armed",
		ErrDeadlock, minComplete, r.Ready(), len(r.inflight), held)
}

// tickable reports whether ticking alone will let some operation complete.
func (r *Ring) tickable() bool {
	for _, o := range r.inflight {
		if o.issued && !o.held && !r.delayDone(o) {
			return true
		}
	}
	return false
}

// waitSet collects the real fds that issued operations wait on and the
// earliest timer deadline (zero if none).
func (r *Ring) waitSet() ([]unix.PollFd, time.Time) {
	r.waitfds = r.waitfds[:0]
	var next time.Time
	for _, o := range r.inflight {
		if !o.issued || o.held || o.failRes != 0 {
			continue
		}
		if o.needsPoll() {
			r.waitfds = append(r.waitfds, unix.PollFd{Fd: o.fd, Events: o.pollEvents()})
		}
		if o.sqe.Opcode == uring.IORING_OP_TIMEOUT && (next.IsZero() || o.deadline.Before(next)) {
			next = o.deadline
		}
	}
	return r.waitfds, next
}

// block sleeps until one of fds is ready or until (zero: forever). Without
// fds it uses time.Sleep, so waits inside a testing/synctest bubble advance
// the bubble's fake clock instead of real time.
func (r *Ring) block(fds []unix.PollFd, until time.Time) {
	if len(fds) == 0 {
		time.Sleep(time.Until(until))
		return
	}
	var tsp *unix.Timespec
	if !until.IsZero() {
		ts := unix.NsecToTimespec(max(time.Until(until), 0).Nanoseconds())
		tsp = &ts
	}
	// EINTR (the runtime preempts with signals) just returns to the loop,
	// which re-checks and blocks again.
	if _, err := unix.Ppoll(fds, tsp, nil); err != nil && err != unix.EINTR {
		panic("uringtest: ppoll: " + err.Error())
	}
}

// Reap moves up to len(dst) CQEs into dst in completion order and returns
// the count, refilling the CQ from the overflow backlog as it goes.
func (r *Ring) Reap(dst []uring.CQE) int {
	if r.closed {
		return 0
	}
	n := 0
	mask := uint32(len(r.cq) - 1)
	for n < len(dst) {
		if r.cqHead == r.cqTail {
			if !r.flushBacklog() {
				break
			}
			continue
		}
		dst[n] = r.cq[r.cqHead&mask]
		r.cqHead++
		n++
	}
	r.flushBacklog()
	r.stats.Reaped += n
	return n
}

// post delivers a completion: into the CQ when it has room and nothing
// waits in the backlog, otherwise into the backlog (IORING_FEAT_NODROP).
func (r *Ring) post(userData uint64, res int32) {
	cqe := uring.CQE{UserData: userData, Res: res}
	r.stats.Completed++
	if r.backlogLen() == 0 && int(r.cqTail-r.cqHead) < len(r.cq) {
		r.cq[r.cqTail&uint32(len(r.cq)-1)] = cqe
		r.cqTail++
		return
	}
	r.stats.Overflowed++
	r.backlog = append(r.backlog, cqe)
}

func (r *Ring) backlogLen() int { return len(r.backlog) - r.backlogHead }

// flushBacklog moves backlog entries into free CQ slots and reports whether
// it moved any.
func (r *Ring) flushBacklog() bool {
	moved := false
	for r.backlogLen() > 0 && int(r.cqTail-r.cqHead) < len(r.cq) {
		r.cq[r.cqTail&uint32(len(r.cq)-1)] = r.backlog[r.backlogHead]
		r.cqTail++
		r.backlogHead++
		moved = true
	}
	if r.backlogLen() == 0 {
		r.backlog = r.backlog[:0]
		r.backlogHead = 0
	}
	return moved
}

// RegisterFiles creates a sparse registered-file table of n slots.
func (r *Ring) RegisterFiles(n int) error {
	switch {
	case r.closed:
		return uring.ErrClosed
	case r.files != nil:
		return syscall.EBUSY
	case n <= 0:
		return syscall.EINVAL
	case n > maxFixedFiles:
		return syscall.EMFILE
	}
	r.files = make([]int32, n)
	for i := range r.files {
		r.files[i] = -1
	}
	return nil
}

// UpdateFile points registered slot at fd, a real fd or a MemFile fd; fd -1
// clears the slot. The fake looks the fd up when an SQE naming the slot is
// submitted, so (as the interface requires anyway) keep fd open meanwhile.
func (r *Ring) UpdateFile(slot int, fd int) error {
	switch {
	case r.closed:
		return uring.ErrClosed
	case r.files == nil:
		return syscall.ENXIO
	case slot < 0 || slot >= len(r.files):
		return syscall.EINVAL
	case fd == -1:
		r.files[slot] = -1
		return nil
	case fd < 0 || fd > 1<<31-1:
		return syscall.EBADF
	}
	if k, _ := r.classify(int32(fd)); k == kindBad {
		return syscall.EBADF
	}
	r.files[slot] = int32(fd)
	return nil
}

// RegisterBuffers registers bufs for READ_FIXED and WRITE_FIXED; buffer i
// gets index i. An empty buffer is a sparse slot. The fake cannot tell Go
// heap memory from mmap'd memory, so it accepts both; it keeps the slices
// reachable until the ring is closed.
func (r *Ring) RegisterBuffers(bufs [][]byte) error {
	switch {
	case r.closed:
		return uring.ErrClosed
	case r.bufs != nil:
		return syscall.EBUSY
	case len(bufs) == 0 || len(bufs) > maxRegBuffers:
		return syscall.EINVAL
	}
	regs := make([]regBuf, len(bufs))
	for i, b := range bufs {
		if len(b) > maxRegBufSize {
			return syscall.EFAULT
		}
		regs[i] = regBuf{addr: sliceAddr(b), len: uint64(len(b))}
	}
	r.bufs = regs
	r.bufRefs = append([][]byte(nil), bufs...)
	return nil
}

// Close releases the ring. Operations still in flight are dropped without
// effect and without CQEs (the kernel cancels them; the fake never starts
// them). Every later call returns ErrClosed, 0 or nil.
func (r *Ring) Close() error {
	if r.closed {
		return uring.ErrClosed
	}
	r.shutdown()
	return nil
}

// Crash simulates the process dying: every operation without a posted CQE
// is dropped, so writes that had not completed never reach their file, and
// the ring is closed. MemFiles keep exactly the effects of completed
// operations; attach them to a new ring to "reopen" the image. Crash
// returns how many writes (WRITE, WRITEV, WRITE_FIXED, FALLOCATE) it
// dropped.
func (r *Ring) Crash() int {
	if r.closed {
		return 0
	}
	dropped := 0
	for _, o := range r.inflight {
		switch o.sqe.Opcode {
		case uring.IORING_OP_WRITE, uring.IORING_OP_WRITEV, uring.IORING_OP_WRITE_FIXED, uring.IORING_OP_FALLOCATE:
			dropped++
		}
	}
	r.shutdown()
	return dropped
}

func (r *Ring) shutdown() {
	r.closed = true
	for _, o := range r.inflight {
		o.done = true
	}
	r.inflight = nil
	r.free = nil
	r.batch = nil
	r.backlog = nil
	r.backlogHead = 0
	r.cqHead, r.cqTail = 0, 0
	r.sqHead, r.sqTail = 0, 0
	r.bufRefs = nil
}

// AddMemFile attaches a new MemFile holding a copy of data and returns its
// fake fd.
func (r *Ring) AddMemFile(data []byte) int32 {
	return r.AttachFile(NewMemFile(data))
}

// AttachFile makes f reachable through a new fake fd (MemFdBase and up, in
// attach order) with its own file position. One MemFile may be attached to
// several rings, or several times.
func (r *Ring) AttachFile(f *MemFile) int32 {
	if f == nil {
		panic("uringtest: AttachFile(nil)")
	}
	r.mems = append(r.mems, memFd{f: f})
	return MemFdBase + int32(len(r.mems)-1)
}

// MemFile returns the MemFile behind a fake fd, or nil.
func (r *Ring) MemFile(fd int32) *MemFile {
	if m := r.memFd(fd); m != nil {
		return m.f
	}
	return nil
}

func (r *Ring) memFd(fd int32) *memFd {
	if fd < MemFdBase || int(fd-MemFdBase) >= len(r.mems) {
		return nil
	}
	return &r.mems[fd-MemFdBase]
}

// Inject adds a fault rule (see Fault) and returns it, for its counters.
// It panics on a malformed rule.
func (r *Ring) Inject(f Fault) *Rule {
	f.validate()
	rule := &Rule{fault: f}
	r.rules = append(r.rules, rule)
	return rule
}

// ClearFaults removes every fault rule. Operations already stamped by a
// rule keep its effects.
func (r *Ring) ClearFaults() { r.rules = nil }

// InjectBusy makes the next n SubmitAndWait calls that have SQEs pending
// return ErrBusy without consuming any.
func (r *Ring) InjectBusy(n int) { r.busyN = n }

// InjectInterrupt makes the next n SubmitAndWait calls that would wait
// return right after submitting, with no error, as if a signal had
// interrupted io_uring_enter (EINTR).
func (r *Ring) InjectInterrupt(n int) { r.interrupt = n }

// Stats returns the ring's counters.
func (r *Ring) Stats() Stats { return r.stats }

// Log returns a copy of the SQEs consumed so far, in submission order: all
// of them up to Options.LogLimit, none with Options.NoLog.
func (r *Ring) Log() []uring.SQE { return append([]uring.SQE(nil), r.log...) }

// ResetLog empties the SQE log, keeping its memory for reuse.
func (r *Ring) ResetLog() { r.log = r.log[:0] }

// InFlight reports how many submitted operations have no CQE posted yet.
func (r *Ring) InFlight() int { return len(r.inflight) }
