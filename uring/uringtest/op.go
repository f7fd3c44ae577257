package uringtest

import (
	"fmt"
	"math"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/uring"
)

// op is one submitted operation. Its life:
//
//	submitted ──(link predecessor done, drain clear)──▶ issued
//	issued ──(delay ticks passed, not held, fd ready / timer due)──▶ completed
//	completed: effects applied, CQE posted, record recycled
//
// An operation that failed validation at submission (initRes != 0)
// completes at the first chance, skipping every other condition, as the
// kernel posts such CQEs during io_uring_enter. A link successor of a failed
// operation completes with -ECANCELED without ever being issued.
type op struct {
	sqe  uring.SQE // copy taken at submission
	seq  uint64
	fd   int32    // resolved fd (after registered-file lookup)
	kind fileKind // what fd refers to
	mem  *memFd   // kind == kindMem

	next     *op  // link successor in the same chain
	hardlink bool // IOSQE_IO_HARDLINK: next runs even if this fails
	waitLink bool // a link predecessor has not completed yet
	drain    bool // IOSQE_IO_DRAIN (set on a chain's head for the chain)

	issued    bool
	issueTick uint64
	delay     int // ticks from issue to earliest completion
	held      bool
	done      bool
	pollIdx   int // index into Ring.pollfds in the current scan, or -1

	initRes  int32  // submission-time failure: complete with this at once
	failRes  int32  // issue-time failure or injected errno: complete with this, do nothing
	short    uint64 // injected transfer cap, valid when shortSet
	shortSet bool

	iov   []uring.Iovec // READV/WRITEV: iovecs copied at submission (IORING_FEAT_SUBMIT_STABLE)
	total uint64        // bytes a transfer asks for

	deadline   time.Time // TIMEOUT: when it expires with -ETIME
	countTimer bool      // TIMEOUT: also completes when nonTimeoutCQEs reaches target
	target     uint64
	tsNs       int64 // TIMEOUT: timespec read at submission
}

type fileKind uint8

const (
	kindNone     fileKind = iota // the op takes no file
	kindBad                      // fd does not resolve: -EBADF at issue
	kindMem                      // a MemFile
	kindRegular                  // a real regular file or block device: synchronous syscalls
	kindPollable                 // a real pipe, socket, eventfd, …: waits for readiness
)

// uioMaxIOV is UIO_MAXIOV, the kernel's limit on iovecs per request.
const uioMaxIOV = 1024

const knownSQEFlags = uring.IOSQE_FIXED_FILE | uring.IOSQE_IO_DRAIN | uring.IOSQE_IO_LINK |
	uring.IOSQE_IO_HARDLINK | uring.IOSQE_ASYNC | uring.IOSQE_CQE_SKIP_SUCCESS

func (o *op) isRW() bool {
	switch o.sqe.Opcode {
	case uring.IORING_OP_READ, uring.IORING_OP_WRITE, uring.IORING_OP_READV, uring.IORING_OP_WRITEV,
		uring.IORING_OP_READ_FIXED, uring.IORING_OP_WRITE_FIXED:
		return true
	}
	return false
}

func (o *op) isWrite() bool {
	switch o.sqe.Opcode {
	case uring.IORING_OP_WRITE, uring.IORING_OP_WRITEV, uring.IORING_OP_WRITE_FIXED:
		return true
	}
	return false
}

func needsFile(opcode uint8) bool {
	switch opcode {
	case uring.IORING_OP_READ, uring.IORING_OP_WRITE, uring.IORING_OP_READV, uring.IORING_OP_WRITEV,
		uring.IORING_OP_READ_FIXED, uring.IORING_OP_WRITE_FIXED,
		uring.IORING_OP_FSYNC, uring.IORING_OP_FALLOCATE, uring.IORING_OP_POLL_ADD:
		return true
	}
	return false
}

// needsPoll reports whether the op can complete only once poll(2) reports
// its real fd ready.
func (o *op) needsPoll() bool {
	if o.sqe.Opcode == uring.IORING_OP_POLL_ADD {
		return o.kind == kindRegular || o.kind == kindPollable
	}
	return o.kind == kindPollable && o.isRW()
}

func (o *op) pollEvents() int16 {
	switch {
	case o.sqe.Opcode == uring.IORING_OP_POLL_ADD:
		return int16(uint16(o.sqe.OpFlags)) // poll32_events; the low 16 bits are poll(2)'s
	case o.isWrite():
		return unix.POLLOUT
	}
	return unix.POLLIN
}

// cancellable reports whether ASYNC_CANCEL can stop an issued op: one that
// is parked waiting (poll, timeout, transfer on a pollable fd), as opposed
// to one "running on the device", for which the kernel says -EALREADY.
func (o *op) cancellable() bool {
	return o.sqe.Opcode == uring.IORING_OP_POLL_ADD || o.sqe.Opcode == uring.IORING_OP_TIMEOUT ||
		(o.kind == kindPollable && o.isRW())
}

// failed reports whether res breaks a link chain: an error, or a transfer
// shorter than asked for (the kernel's REQ_F_FAIL).
func (o *op) failed(res int32) bool {
	return res < 0 || (o.isRW() && uint64(res) != o.total)
}

func (r *Ring) newOp() *op {
	if n := len(r.free); n > 0 {
		o := r.free[n-1]
		r.free = r.free[:n-1]
		return o
	}
	return &op{}
}

func (r *Ring) releaseOp(o *op) {
	*o = op{iov: o.iov[:0]}
	r.free = append(r.free, o)
}

// submit consumes pending SQEs (up to MaxSubmit) and returns the count.
// Like io_submit_sqes without IORING_SETUP_SUBMIT_ALL, it stops after an
// SQE that fails validation outside a link chain; a chain with a failing
// member fails as a whole (the failing SQE gets its error, the rest
// -ECANCELED) and submission goes on.
func (r *Ring) submit() int {
	n := int(r.sqTail - r.sqHead)
	if r.opts.MaxSubmit > 0 && n > r.opts.MaxSubmit {
		n = r.opts.MaxSubmit
	}
	mask := uint32(len(r.sq) - 1)
	var head, prev *op
	chainFailed := false
	consumed := 0
	for consumed < n {
		o := r.prepare(&r.sq[r.sqHead&mask])
		r.sqHead++
		consumed++
		r.inflight = append(r.inflight, o)
		linked := o.sqe.Flags&(uring.IOSQE_IO_LINK|uring.IOSQE_IO_HARDLINK) != 0
		o.hardlink = o.sqe.Flags&uring.IOSQE_IO_HARDLINK != 0
		if prev == nil {
			head = o
		} else {
			prev.next = o
			o.waitLink = true
		}
		if o.sqe.Flags&uring.IOSQE_IO_DRAIN != 0 {
			head.drain = true
		}
		if o.initRes != 0 {
			if prev == nil && !linked {
				head = nil
				break
			}
			chainFailed = true
		}
		if linked {
			prev = o
			continue
		}
		r.endChain(head, chainFailed)
		head, prev, chainFailed = nil, nil, false
	}
	// A chain left open at the end of the batch is submitted as it stands.
	r.endChain(head, chainFailed)
	return consumed
}

// endChain fails every member of a chain with a submission-time failure.
func (r *Ring) endChain(head *op, failed bool) {
	if !failed {
		return
	}
	for o := head; o != nil; o = o.next {
		if o.initRes == 0 {
			o.initRes = -int32(syscall.ECANCELED)
		}
	}
}

// prepare copies one SQE into a new op and validates it.
func (r *Ring) prepare(sqe *uring.SQE) *op {
	if sqe.UserData&uring.ReservedUserData != 0 {
		panic(fmt.Sprintf("uringtest: SQE user_data %#x has uring.ReservedUserData set", sqe.UserData))
	}
	o := r.newOp()
	o.sqe = *sqe
	o.seq = r.seq
	o.fd = -1
	o.pollIdx = -1
	r.seq++
	r.stats.Submitted++
	if sqe.Opcode < 64 {
		r.stats.Ops[sqe.Opcode]++
	}
	if !r.opts.NoLog && len(r.log) < r.opts.LogLimit {
		r.log = append(r.log, *sqe)
	}
	if o.initRes = r.validate(o); o.initRes != 0 {
		return o
	}
	if needsFile(o.sqe.Opcode) {
		r.resolveFile(o)
	}
	if r.opts.MaxDelay > 0 {
		o.delay = r.rng.IntN(r.opts.MaxDelay + 1)
	}
	if r.hold != nil && r.hold(&o.sqe) {
		o.held = true
	}
	if r.applyFaults(o) {
		r.stats.Faults++
	}
	if o.kind == kindBad && o.failRes == 0 {
		o.failRes = -int32(syscall.EBADF)
	}
	return o
}

// validate performs the checks the kernel makes while preparing an SQE
// (io_init_req and the op's prep), returning -errno or 0. It also copies
// what the kernel copies at prep time: iovecs and the timeout timespec.
func (r *Ring) validate(o *op) int32 {
	const einval = -int32(syscall.EINVAL)
	s := &o.sqe
	if s.Flags&^knownSQEFlags != 0 {
		return einval // includes IOSQE_BUFFER_SELECT, which the fake does not model
	}
	switch s.Opcode {
	case uring.IORING_OP_NOP:
		if s.OpFlags != 0 {
			return einval
		}
	case uring.IORING_OP_READ, uring.IORING_OP_WRITE, uring.IORING_OP_READ_FIXED, uring.IORING_OP_WRITE_FIXED:
		o.total = uint64(s.Len)
	case uring.IORING_OP_READV, uring.IORING_OP_WRITEV:
		if s.Len > uioMaxIOV {
			return einval
		}
		if s.Len > 0 && s.Addr == 0 {
			return -int32(syscall.EFAULT)
		}
		// SAFETY: Addr holds the iovec array the caller passed to PrepReadv
		// or PrepWritev; the Queue contract keeps it valid until the CQE.
		for _, v := range iovecsAt(s.Addr, s.Len) {
			o.total += v.Len
			o.iov = append(o.iov, v)
		}
		if o.total > math.MaxInt32 {
			return einval // MAX_RW_COUNT is below this; the fake keeps it simple
		}
	case uring.IORING_OP_FSYNC:
		if s.OpFlags&^uring.IORING_FSYNC_DATASYNC != 0 || s.Addr != 0 || s.BufIndex != 0 {
			return einval
		}
	case uring.IORING_OP_FALLOCATE:
		if s.OpFlags != 0 || s.BufIndex != 0 {
			return einval
		}
	case uring.IORING_OP_POLL_ADD:
		if s.Len != 0 { // IORING_POLL_ADD_MULTI and update flags: not modelled
			return einval
		}
	case uring.IORING_OP_POLL_REMOVE:
		if s.Len != 0 || s.OpFlags != 0 {
			return einval
		}
	case uring.IORING_OP_TIMEOUT:
		if s.Len != 1 || s.OpFlags&^uring.IORING_TIMEOUT_ABS != 0 {
			return einval
		}
		if s.Addr == 0 {
			return -int32(syscall.EFAULT)
		}
		// SAFETY: Addr holds the Timespec passed to PrepTimeout, valid at
		// least until submission (the kernel copies it at prep, as here).
		ts := *timespecAt(s.Addr)
		if ts.Sec < 0 || ts.Nsec < 0 || ts.Nsec >= 1e9 {
			return einval
		}
		o.tsNs = satNs(ts)
	case uring.IORING_OP_TIMEOUT_REMOVE, uring.IORING_OP_ASYNC_CANCEL:
		if s.OpFlags != 0 { // update / cancel-all flags: not modelled
			return einval
		}
	default:
		return einval
	}
	return 0
}

func satNs(ts uring.Timespec) int64 {
	if ts.Sec > (math.MaxInt64-ts.Nsec)/1e9 {
		return math.MaxInt64
	}
	return ts.Sec*1e9 + ts.Nsec
}

// resolveFile turns the SQE's fd (or registered slot) into o.fd and o.kind.
func (r *Ring) resolveFile(o *op) {
	fd := o.sqe.Fd
	if o.sqe.Flags&uring.IOSQE_FIXED_FILE != 0 {
		if fd < 0 || int(fd) >= len(r.files) || r.files[fd] < 0 {
			o.fd, o.kind = -1, kindBad
			return
		}
		fd = r.files[fd]
	}
	o.fd = fd
	o.kind, o.mem = r.classify(fd)
}

// classify reports what fd refers to.
func (r *Ring) classify(fd int32) (fileKind, *memFd) {
	if fd >= MemFdBase {
		if m := r.memFd(fd); m != nil {
			return kindMem, m
		}
		return kindBad, nil
	}
	if fd < 0 {
		return kindBad, nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(fd), &st); err != nil {
		return kindBad, nil
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFBLK:
		return kindRegular, nil
	}
	return kindPollable, nil
}

// step runs completions until nothing more can complete right now. With
// tick it first advances the tick clock; with ignoreDelay it treats every
// delay as elapsed. It returns how many CQEs were posted.
func (r *Ring) step(tick, ignoreDelay bool) int {
	if tick {
		r.tick++
	}
	before := r.stats.Completed
	for {
		r.collect(ignoreDelay)
		if len(r.batch) == 0 {
			break
		}
		if r.opts.Reorder {
			for i := len(r.batch) - 1; i > 0; i-- {
				j := r.rng.IntN(i + 1)
				r.batch[i], r.batch[j] = r.batch[j], r.batch[i]
			}
		}
		progress := false
		for _, o := range r.batch {
			if !o.done && r.run(o) {
				progress = true
			}
		}
		r.compact()
		if !progress {
			break
		}
	}
	clear(r.batch)
	r.batch = r.batch[:0]
	return r.stats.Completed - before
}

// collect issues every op whose link and drain conditions allow it and
// gathers into r.batch, in submission order, the ops that can complete now.
func (r *Ring) collect(ignoreDelay bool) {
	r.batch = r.batch[:0]
	r.pollfds = r.pollfds[:0]
	earlier, drainBlock := false, false
	for _, o := range r.inflight {
		if o.initRes == 0 && !o.issued && !o.waitLink && !drainBlock && !(o.drain && earlier) {
			r.issue(o)
		}
		// IOSQE_IO_DRAIN (as documented in io_uring_enter(2)): a drained op
		// starts once everything before it completed, and nothing after it
		// starts before it completes.
		if o.drain {
			drainBlock = true
		}
		earlier = true
		o.pollIdx = -1
		if o.issued && !o.held && o.failRes == 0 && o.needsPoll() && (ignoreDelay || r.delayDone(o)) {
			o.pollIdx = len(r.pollfds)
			r.pollfds = append(r.pollfds, unix.PollFd{Fd: o.fd, Events: o.pollEvents()})
		}
	}
	if len(r.pollfds) > 0 {
		for {
			if _, err := unix.Poll(r.pollfds, 0); err != unix.EINTR {
				break
			}
		}
	}
	var now time.Time
	for _, o := range r.inflight {
		if r.completable(o, ignoreDelay, &now) {
			r.batch = append(r.batch, o)
		}
	}
}

func (r *Ring) issue(o *op) {
	o.issued = true
	o.issueTick = r.tick
	if o.sqe.Opcode == uring.IORING_OP_TIMEOUT {
		if o.sqe.OpFlags&uring.IORING_TIMEOUT_ABS != 0 {
			o.deadline = r.epoch.Add(time.Duration(o.tsNs - r.epochMono))
		} else {
			o.deadline = time.Now().Add(time.Duration(o.tsNs))
		}
		if o.sqe.Off != 0 {
			o.countTimer = true
			o.target = r.nonTimeoutCQEs + o.sqe.Off
		}
	}
}

func (r *Ring) delayDone(o *op) bool {
	return r.tick-o.issueTick >= uint64(o.delay)
}

func (r *Ring) completable(o *op, ignoreDelay bool, now *time.Time) bool {
	if o.initRes != 0 {
		return true
	}
	if !o.issued || o.held || (!ignoreDelay && !r.delayDone(o)) {
		return false
	}
	if o.failRes != 0 {
		return true
	}
	if o.needsPoll() {
		return o.pollIdx >= 0 && r.pollfds[o.pollIdx].Revents != 0
	}
	switch o.sqe.Opcode {
	case uring.IORING_OP_POLL_ADD: // on a MemFile
		return memPollMask(o) != 0
	case uring.IORING_OP_TIMEOUT:
		if o.countTimer && r.nonTimeoutCQEs >= o.target {
			return true
		}
		if now.IsZero() {
			*now = time.Now()
		}
		return !now.Before(o.deadline)
	}
	return true
}

// memPollMask is what poll reports for a MemFile: like a regular file,
// always readable and writable.
func memPollMask(o *op) int32 {
	const ready = unix.POLLIN | unix.POLLOUT | unix.EPOLLRDNORM | unix.EPOLLWRNORM // DEFAULT_POLLMASK
	return int32(uint16(o.sqe.OpFlags) & ready)
}

// compact drops completed ops from inflight, keeping order, and recycles
// them.
func (r *Ring) compact() {
	kept := r.inflight[:0]
	for _, o := range r.inflight {
		if o.done {
			r.releaseOp(o)
		} else {
			kept = append(kept, o)
		}
	}
	clear(r.inflight[len(kept):])
	r.inflight = kept
}

// run completes o and reports whether it did; a transfer on a pollable fd
// whose data another reader took first stays in flight.
func (r *Ring) run(o *op) bool {
	switch {
	case o.initRes != 0:
		// The whole chain failed at submission; each member has its result.
		r.finish(o, o.initRes, false)
		return true
	case o.failRes != 0:
		r.finish(o, o.failRes, true)
		return true
	}
	res, ok := r.execute(o)
	if !ok {
		return false
	}
	r.finish(o, res, true)
	return true
}

// finish marks o complete, posts its CQE and settles its link successors.
func (r *Ring) finish(o *op, res int32, links bool) {
	o.done = true
	failed := o.failed(res)
	r.postOp(o, res, failed)
	if !links || o.next == nil {
		return
	}
	if !failed || o.hardlink {
		o.next.waitLink = false
		return
	}
	for n := o.next; n != nil; n = n.next {
		n.done = true
		r.postOp(n, -int32(syscall.ECANCELED), true)
	}
}

// postOp posts o's CQE unless IOSQE_CQE_SKIP_SUCCESS suppresses it (only a
// success is suppressed). Posted CQEs of non-TIMEOUT ops advance the clock
// of count timeouts; timeouts' own CQEs do not, as in the kernel.
func (r *Ring) postOp(o *op, res int32, failed bool) {
	if !failed && o.sqe.Flags&uring.IOSQE_CQE_SKIP_SUCCESS != 0 {
		return
	}
	if o.sqe.Opcode != uring.IORING_OP_TIMEOUT {
		r.nonTimeoutCQEs++
	}
	r.post(o.sqe.UserData, res)
}
