package host

import (
	"errors"
	"fmt"
	"math/bits"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/plugin/contract"
)

// DefaultDepth is a queue's depth when QueueOptions.Depth is zero.
const DefaultDepth = 128

// busySpin bounds Wait's spin while the queue's Context is busy.
const busySpin = 50 * time.Microsecond

// slot is one request of a Queue, from submission until its completion is
// taken back. The submitting goroutine fills it before publishing its index
// on the submission ring; the Context's owner then owns it until it
// publishes the index on the completion ring (or calls the callback).
type slot struct {
	op     Op
	flags  block.Flags
	off    int64
	n      int64
	iov    [][]byte
	buf1   [1][]byte
	ud     uint64
	seq    uint64 // issue order (owner), to retry held requests in order
	start  int64
	err    error
	waiter *waiter // a synchronous call waiting for this slot
}

type paddedInt64 struct {
	atomic.Int64
	_ [cacheLine - 8]byte
}

// Queue submits requests to a device from any goroutine, runs them on one
// I/O Context's ring and hands their completions back: to a callback, or
// to Next with the queue's eventfd as the signal. A request costs no
// allocation, channel, map or mutex: slots are preallocated, and the
// submission, completion and free lists are lock-free rings of slot
// indices. It implements contract.Queue.
type Queue struct {
	_      [cacheLine]byte
	plug   atomic.Int32
	closed atomic.Bool
	// released is set once Close has detached the queue: its bottom
	// halves, which host goroutines may still schedule (an Unplug or a
	// Resume racing Close), then return at once.
	released  atomic.Bool
	_         [cacheLine - 8]byte
	submitted paddedInt64 // accepted by submit (host goroutines)
	completed paddedInt64 // completed (owner)
	held      paddedInt64 // held by a stop policy (owner)
	// armed is non-zero while the host wants the eventfd written for the
	// next completion: set by Next when it finds no completion and by
	// Wait before it sleeps, cleared by the Context when it writes. So the
	// Context writes the eventfd at most once per time the host ran dry
	// (io_uring's CQ eventfd, coalesced), not once per batch.
	armed paddedInt64
	// dirty is non-zero once something wrote the eventfd and no Wait has
	// reset it since: Wait reads the eventfd only then (a read that
	// would fail with EAGAIN is a system call per batch saved).
	dirty paddedInt64

	dev   *Device
	index int
	ctx   *aio.Context
	bq    *block.Queue
	slots []slot
	free  *idxRing
	sub   *idxRing
	done  *idxRing
	cb    func(Completion)
	loop  *Loop // set for a queue on a Loop (Host.Drive)
	timer *aio.Timer

	submitBH, notifyBH, resumeBH *aio.BH
	efd                          int
	one                          [8]byte
	waiters                      atomic.Int32  // goroutines inside Wait
	closing                      chan struct{} // closed when Close has finished

	// owner only
	notifyPending bool
	heldList      []uint32
	issueSeq      uint64

	stats queueStats
}

var _ contract.Queue = (*Queue)(nil)

// NewQueue creates a queue (contract.Device).
func (d *Device) NewQueue(o QueueOptions) (contract.Queue, error) {
	q, err := d.Queue(o)
	if err != nil {
		return nil, err
	}
	return q, nil
}

// Queue creates a queue on the device: a *Queue rather than the contract's
// interface.
func (d *Device) Queue(o QueueOptions) (*Queue, error) {
	if d.isClosed() {
		return nil, ErrClosed
	}
	h := d.h
	ci := o.Context
	if ci == -1 {
		ci = int(h.rr.Add(1)-1) % len(h.ctxs)
	}
	ci, err := h.ctxIndex(ci)
	if err != nil {
		return nil, err
	}
	return d.newQueue(h.ctxs[ci], ci, o, nil)
}

func (d *Device) newQueue(ctx *aio.Context, ci int, o QueueOptions, l *Loop) (*Queue, error) {
	depth := o.Depth
	if depth <= 0 {
		depth = DefaultDepth
	}
	if depth > 1<<20 {
		return nil, errors.New("ringblk: queue depth above 1M")
	}
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, &opError{op: "eventfd", err: err}
	}
	q := &Queue{
		dev: d, index: ci, ctx: ctx, bq: d.fe.Queue(ctx),
		slots: make([]slot, depth),
		free:  newIdxRing(depth), sub: newIdxRing(depth), done: newIdxRing(depth),
		cb: o.OnComplete, efd: efd, heldList: make([]uint32, 0, depth),
		closing: make(chan struct{}), loop: l,
	}
	q.one[0] = 1
	if l == nil {
		q.armed.Store(1)
	}
	for i := range q.slots {
		q.free.push(uint32(i))
	}
	q.submitBH = ctx.NewBH(q.runSubmit)
	q.notifyBH = ctx.NewBH(q.runNotify)
	q.resumeBH = ctx.NewBH(q.runSubmit)
	if !d.addQueue(q) {
		q.submitBH.Delete()
		q.notifyBH.Delete()
		q.resumeBH.Delete()
		unix.Close(efd)
		return nil, ErrClosed
	}
	return q, nil
}

// Depth returns the queue's depth.
func (q *Queue) Depth() int { return len(q.slots) }

// Context returns the I/O Context index the queue runs on; -1 for a
// queue on a Loop.
func (q *Queue) Context() int { return q.index }

// EventFD returns the queue's completion eventfd (non-blocking).
func (q *Queue) EventFD() int { return q.efd }

// Read reads len(buf) bytes at off.
func (q *Queue) Read(buf []byte, off int64, userData uint64) error {
	return q.submit(contract.OpRead, 0, off, int64(len(buf)), nil, buf, userData)
}

// Readv reads into iov at off.
func (q *Queue) Readv(iov [][]byte, off int64, userData uint64) error {
	return q.submit(contract.OpRead, 0, off, iovLen(iov), iov, nil, userData)
}

// Write writes buf at off.
func (q *Queue) Write(buf []byte, off int64, flags Flags, userData uint64) error {
	return q.submit(contract.OpWrite, flags, off, int64(len(buf)), nil, buf, userData)
}

// Writev writes iov at off.
func (q *Queue) Writev(iov [][]byte, off int64, flags Flags, userData uint64) error {
	return q.submit(contract.OpWrite, flags, off, iovLen(iov), iov, nil, userData)
}

// Flush makes completed writes durable.
func (q *Queue) Flush(userData uint64) error {
	return q.submit(contract.OpFlush, 0, 0, 0, nil, nil, userData)
}

// Discard discards [off, off+length).
func (q *Queue) Discard(off, length int64, userData uint64) error {
	return q.submit(contract.OpDiscard, 0, off, length, nil, nil, userData)
}

// WriteZeroes zeroes [off, off+length); MayUnmap lets it deallocate.
func (q *Queue) WriteZeroes(off, length int64, flags Flags, userData uint64) error {
	return q.submit(contract.OpWriteZeroes, flags, off, length, nil, nil, userData)
}

func iovLen(iov [][]byte) int64 {
	var n int64
	for _, b := range iov {
		n += int64(len(b))
	}
	return n
}

// claim takes a free slot for a submission, or refuses one on a closed or
// full queue. The submission is counted before the closed check: Close,
// after setting closed, waits for every submission it did not refuse
// (sequentially consistent atomics on both sides).
func (q *Queue) claim() (uint32, error) {
	q.submitted.Add(1)
	if q.closed.Load() {
		q.submitted.Add(-1)
		return 0, ErrClosed
	}
	i, ok := q.free.pop()
	if !ok {
		q.submitted.Add(-1)
		return 0, ErrQueueFull
	}
	return i, nil
}

func (q *Queue) submit(op Op, flags Flags, off, n int64, iov [][]byte, buf []byte, ud uint64) error {
	i, err := q.claim()
	if err != nil {
		return err
	}
	s := &q.slots[i]
	s.op, s.flags, s.off, s.n, s.ud = op, block.Flags(flags), off, n, ud
	if buf != nil || (iov == nil && (op == contract.OpRead || op == contract.OpWrite)) {
		s.buf1[0] = buf
		s.iov = s.buf1[:]
	} else {
		s.iov = iov
	}
	q.publish(i)
	return nil
}

// publish hands a filled slot to the Context: now, or at the outermost
// Unplug while the host holds the queue plugged. A Close that began after
// the slot was claimed issues it itself (Close's wait).
func (q *Queue) publish(i uint32) {
	q.sub.push(i)
	if q.plug.Load() == 0 {
		q.kick(q.submitBH)
	}
}

// kick schedules one of the queue's bottom halves from a host goroutine,
// unless Close has released the queue: then its requests are done and
// the bottom half would only return, but left scheduled on a Context that
// stops next (Host.Close) it would be reported as never run. A kick that
// races the release still finds the bottom half valid.
func (q *Queue) kick(bh *aio.BH) {
	if !q.released.Load() {
		bh.Schedule()
	}
}

// Plug starts a burst: submissions wait until the outermost Unplug, which
// hands them to the Context at once (one io_uring_enter for the burst).
func (q *Queue) Plug() { q.plug.Add(1) }

// Unplug ends a burst.
func (q *Queue) Unplug() {
	if q.plug.Add(-1) == 0 {
		q.kick(q.submitBH)
	}
}

// runSubmit runs on the Context: it issues every submitted slot inside
// one plugged section of the block queue. One clock reading stamps the
// batch. While the device is paused by a stop policy, submitted slots
// stay parked in the submission ring (they complete with ErrClosed if
// the queue closes meanwhile); once it runs again, the held requests are
// retried first, in their issue order, then the parked ones follow in
// theirs.
func (q *Queue) runSubmit() {
	if q.released.Load() {
		return
	}
	if q.dev.paused.Load() {
		if q.closed.Load() {
			q.failParked()
		}
	} else {
		q.bq.Plug()
		now := nanotime()
		if len(q.heldList) > 0 {
			q.retryHeld(now)
		}
		for {
			i, ok := q.sub.pop()
			if !ok {
				break
			}
			q.issue(i, now)
		}
		q.bq.Unplug()
	}
	if q.closed.Load() {
		// Requests a drained section holds before the node would wait
		// for its end, and the section may be the closing host's own (or
		// last until the close returns): they complete with ErrClosed,
		// as QEMU fails a detached BlockBackend's queued requests.
		q.bq.CancelParked(q, ErrClosed)
	}
}

// submit converts the contract's flags to the block layer's by a cast:
// these fail to compile if the bits ever differ.
var (
	_ = [1]struct{}{}[int(contract.FUA)-int(block.FUA)]
	_ = [1]struct{}{}[int(contract.MayUnmap)-int(block.MayUnmap)]
)

var blockOps = [...]block.Op{
	contract.OpRead: block.OpRead, contract.OpWrite: block.OpWrite, contract.OpFlush: block.OpFlush,
	contract.OpDiscard: block.OpDiscard, contract.OpWriteZeroes: block.OpWriteZeroes,
}

func (q *Queue) issue(i uint32, now int64) {
	s := &q.slots[i]
	if s.op == contract.OpFlush && q.dev.unsafe {
		s.start = now
		q.stats.account(s.op, 0, 0, nil)
		q.complete(i, nil) // on the Context, outside the host's submit call
		return
	}
	if s.op == contract.OpWrite || s.op == contract.OpWriteZeroes {
		if size, beyond := q.dev.beyondEnd(s.off, s.n); beyond {
			s.start = now
			err := &boundsError{op: s.op, dev: q.dev.name, off: s.off, n: s.n, size: size}
			q.stats.account(s.op, s.n, 0, err)
			q.complete(i, err) // never retried: it cannot succeed
			return
		}
	}
	r := q.bq.Get()
	q.issueSeq++
	s.seq = q.issueSeq
	r.Op, r.Off, r.Tag, r.Flags = blockOps[s.op], s.off, uint64(i), s.flags
	switch s.op {
	case contract.OpRead, contract.OpWrite:
		r.Iov, r.Len = s.iov, s.n
	case contract.OpDiscard, contract.OpWriteZeroes:
		r.Len = s.n
	}
	if (s.op == contract.OpWrite || s.op == contract.OpWriteZeroes) && !q.dev.wce.Load() {
		r.Flags |= block.FUA
	}
	s.start = now
	q.bq.Submit(r, q)
}

// RequestDone is the block layer's completion (block.Done), on the
// queue's Context.
func (q *Queue) RequestDone(r *block.Request, err error) {
	i := uint32(r.Tag)
	s := &q.slots[i]
	q.stats.account(s.op, s.n, nanotime()-s.start, err)
	if err != nil && err != ErrClosed { // ErrClosed: cancelled by Close, never issued
		switch q.dev.action(s.op, err) {
		case contract.ErrorIgnore:
			err = nil
		case contract.ErrorStop:
			if q.closed.Load() {
				// Close has completed the held requests already (or
				// is about to) and waits for this one: nobody can
				// retry it, so it completes with its error and does
				// not pause the device.
				break
			}
			s.err = err
			q.dev.paused.Store(true) // before Stopped is announced
			q.heldList = append(q.heldList, i)
			q.held.Add(1)
			q.dev.stop(s.op, err)
			return
		}
	}
	q.complete(i, err)
}

func (q *Queue) complete(i uint32, err error) {
	s := &q.slots[i]
	s.err = err
	q.completed.Store(q.completed.Load() + 1) // the Context is the only writer
	if w := s.waiter; w != nil {
		s.waiter = nil
		w.err = err
		s.iov, s.buf1[0] = nil, nil
		q.free.push(i)
		w.ch <- struct{}{}
		return
	}
	if q.cb != nil {
		c := q.completion(s)
		s.iov, s.buf1[0], s.err = nil, nil, nil
		q.free.push(i)
		q.cb(c)
		return
	}
	q.done.push(i)
	// After the push (sequentially consistent atomics): either the host
	// armed before it, and is signalled, or it looks at the ring again
	// after arming and finds this completion.
	if !q.notifyPending && q.armed.Load() != 0 {
		q.notifyPending = true
		q.notifyBH.Schedule()
	}
}

func (q *Queue) completion(s *slot) Completion {
	c := Completion{UserData: s.ud, Op: s.op, Err: s.err}
	if s.err == nil && (s.op == contract.OpRead || s.op == contract.OpWrite) {
		c.Bytes = s.n
	}
	return c
}

// runNotify signals the eventfd once per batch of completions, and only
// if the host is still armed.
func (q *Queue) runNotify() {
	if q.released.Load() {
		return // the eventfd is closed, or about to be
	}
	q.notifyPending = false
	if q.armed.Swap(0) == 0 {
		return
	}
	for {
		_, err := unix.Write(q.efd, q.one[:])
		if err != unix.EINTR {
			break // EAGAIN: the counter is saturated, the host is signalled anyway
		}
	}
	// After the write: a Wait that saw 0 and skipped its reset finds the
	// eventfd readable, returns at once and looks at the ring; the next
	// Wait sees 1 and resets it.
	q.dirty.Store(1)
}

// retryHeld reissues the requests a stop policy held, oldest issue
// first (inside runSubmit's plugged section).
func (q *Queue) retryHeld(now int64) {
	held := q.heldList
	for a := 1; a < len(held); a++ { // insertion sort by issue order
		for b := a; b > 0 && q.slots[held[b]].seq < q.slots[held[b-1]].seq; b-- {
			held[b], held[b-1] = held[b-1], held[b]
		}
	}
	q.heldList = q.heldList[:0]
	for _, i := range held {
		q.held.Add(-1)
		q.issue(i, now) // completes later, never inside: held is not appended to meanwhile
	}
}

// failHeld completes the held requests with their errors, and the
// requests parked by a paused device with ErrClosed (Close).
func (q *Queue) failHeld() {
	for _, i := range q.heldList {
		q.held.Add(-1)
		q.complete(i, q.slots[i].err)
	}
	q.heldList = q.heldList[:0]
	if q.dev.paused.Load() {
		q.failParked()
	}
}

// failParked completes the parked requests of a closed queue with
// ErrClosed.
func (q *Queue) failParked() {
	for {
		i, ok := q.sub.pop()
		if !ok {
			return
		}
		q.complete(i, ErrClosed)
	}
}

// parked counts the requests waiting in the submission ring.
func (q *Queue) parked() int64 {
	return int64(q.sub.enq.Load() - q.sub.deq.Load())
}

// Next returns the next completion, without blocking. It is for queues
// without OnComplete. When it finds none it arms the eventfd: the next
// completion writes it (once, however many follow until the host takes
// one). On a Loop's queue Next neither polls the Loop nor arms: Wait runs
// the Loop.
func (q *Queue) Next() (Completion, bool) {
	i, ok := q.done.pop()
	if !ok {
		if q.loop != nil {
			return Completion{}, false
		}
		q.armed.Store(1)
		if i, ok = q.done.pop(); !ok {
			return Completion{}, false
		}
	}
	s := &q.slots[i]
	c := q.completion(s)
	s.iov, s.buf1[0], s.err = nil, nil, nil
	q.free.push(i)
	return c, true
}

// Wait blocks until completions are ready for Next or the timeout passes
// (negative: no limit), and reports whether they are. It resets the
// eventfd on the way, and makes no system call while completions are
// already waiting. While the queue's Context is running (or being woken)
// it spins for up to 50µs, yielding the CPU now and then, before it
// sleeps on the eventfd. On a Loop's queue, called from the Loop's
// goroutine, it runs the Loop instead.
func (q *Queue) Wait(timeout time.Duration) bool {
	if q.loop != nil && q.ctx.InContext() {
		return q.waitLoop(timeout)
	}
	q.waiters.Add(1)
	defer q.waiters.Add(-1)
	if q.closed.Load() {
		return false // the eventfd may be closed already
	}
	ms := -1
	if timeout >= 0 {
		ms = int((timeout + time.Millisecond - 1) / time.Millisecond)
	}
	if spin := q.dev.h.pollTime; spin > 0 && !q.done.ready() {
		end := nanotime() + int64(min(spin, max(timeout, 0)))
		if timeout < 0 {
			end = nanotime() + int64(spin)
		}
		for i := 0; !q.done.ready(); i++ {
			if i&63 == 63 && nanotime() >= end {
				break
			}
		}
	}
	// While the Context works (or is being woken) for us, a completion is
	// close: spin for it rather than sleep and be woken, which on a VM
	// costs tens of microseconds twice per batch. Bounded, and yielding
	// the CPU now and then in case the Context waits for this one.
	if timeout != 0 && !q.done.ready() && q.ctx.Busy() {
		spin := busySpin
		if timeout > 0 {
			spin = min(spin, timeout)
		}
		end := nanotime() + int64(spin)
		for i := 1; !q.done.ready(); i++ {
			if i&255 == 0 {
				if nanotime() >= end || !q.ctx.Busy() {
					break
				}
				unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
			}
		}
	}
	var buf [8]byte
	for {
		if q.done.ready() {
			q.passOn()
			return true
		}
		if q.closed.Load() {
			return false // Close woke us
		}
		// Reset the eventfd while the ring is empty, arm, then look
		// again: the Context pushes a completion before it reads armed,
		// so either the ring shows it here or the Context writes the
		// eventfd after the reset and the poll below sees it.
		if q.dirty.Load() != 0 {
			q.dirty.Store(0)
			unix.Read(q.efd, buf[:])
		}
		q.armed.Store(1)
		if q.done.ready() {
			q.passOn()
			return true
		}
		fds := [1]unix.PollFd{{Fd: int32(q.efd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds[:], ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return q.done.ready()
		}
	}
}

// passOn writes the eventfd again when other goroutines wait with this
// one: one of them may have reset it (above) after the write that
// announced the completion this one found, and sleep on it.
func (q *Queue) passOn() {
	if q.waiters.Load() > 1 {
		unix.Write(q.efd, q.one[:])
		q.dirty.Store(1)
	}
}

// Close refuses new submissions, waits until every accepted request has
// completed (requests held by a stop policy complete with their errors;
// a plugged burst is issued without Unplug; requests a drained section
// holds before the node complete with ErrClosed, so a close inside the
// host's own section returns), wakes goroutines blocked in Wait (which
// return false) and releases the queue, closing its eventfd. Completions
// not yet taken with Next are dropped.
func (q *Queue) Close() error {
	if q.loop != nil && q.ctx.InContext() {
		return q.closeOnLoop()
	}
	if q.dev.inContext() {
		return ErrInContext
	}
	if q.closed.Swap(true) {
		<-q.closing // a concurrent Close: return once it is done
		return nil
	}
	defer close(q.closing)
	q.submitBH.Schedule()
	q.ctx.Run(q.failHeld)
	for k := 1; q.submitted.Load() != q.completed.Load(); k++ {
		// The submission step again, while something waits for it: a
		// submission that claimed its slot before closed was set may
		// publish after the pass above, into a queue the host holds
		// plugged (its Unplug may never come: Close issues the batch, as
		// a drain before QEMU's close runs everything accepted), and a
		// request a drained section parked since fails (runSubmit).
		if q.parked() > 0 || k%20 == 0 {
			q.submitBH.Schedule()
		}
		time.Sleep(50 * time.Microsecond)
	}
	q.release()
	// A notification of the last completions may be running on the
	// Context: let it end before the eventfd is closed below (any later
	// one sees released). Not on a Loop's Context, which may have ended
	// by now: its fn saw the queue closed.
	if q.loop == nil {
		q.ctx.Run(func() {})
	}
	// Wake goroutines blocked in Wait, and close the eventfd only once
	// they have left it.
	for q.waiters.Load() > 0 {
		unix.Write(q.efd, q.one[:])
		time.Sleep(50 * time.Microsecond)
	}
	return unix.Close(q.efd)
}

// release detaches a closed queue, with nothing in flight, from its
// device and Context.
func (q *Queue) release() {
	// Not BH.Delete: Unplug, a submission that lost the race with Close
	// and Resume schedule these from host goroutines without a lock, and
	// scheduling a deleted BH is a programmer error (an assertion under
	// -tags invariants). They stay valid and find released set.
	q.released.Store(true)
	q.dev.removeQueue(q)
	if q.loop != nil {
		q.loop.forget(q)
	}
}

// queueStats are written by the queue's Context and read by any goroutine.
type queueStats struct {
	_   [cacheLine]byte
	ops [contract.OpWriteZeroes + 1]opCounters
}

type opCounters struct {
	ops, bytes, errors, totalNs atomic.Uint64
	lat                         [contract.LatencyBuckets]atomic.Uint64
}

func (st *queueStats) account(op Op, n, ns int64, err error) {
	c := &st.ops[op]
	inc(&c.ops, 1)
	if err != nil {
		inc(&c.errors, 1)
	} else if op == contract.OpRead || op == contract.OpWrite {
		inc(&c.bytes, uint64(n))
	}
	if ns < 0 {
		ns = 0
	}
	inc(&c.totalNs, uint64(ns))
	b := bits.Len64(uint64(ns))
	if b > 0 {
		b--
	}
	if b >= contract.LatencyBuckets {
		b = contract.LatencyBuckets - 1
	}
	inc(&c.lat[b], 1)
}

// inc adds v to a counter only the queue's Context writes: a load and a
// store, no locked read-modify-write; readers see each value whole.
func inc(x *atomic.Uint64, v uint64) { x.Store(x.Load() + v) }

func (st *queueStats) addTo(s *Stats) {
	for op, dst := range map[Op]*OpStats{contract.OpRead: &s.Read, contract.OpWrite: &s.Write, contract.OpFlush: &s.Flush, contract.OpDiscard: &s.Discard, contract.OpWriteZeroes: &s.WriteZeroes} {
		c := &st.ops[op]
		dst.Ops += c.ops.Load()
		dst.Bytes += c.bytes.Load()
		dst.Errors += c.errors.Load()
		dst.TotalNs += c.totalNs.Load()
		for i := range dst.Latency {
			dst.Latency[i] += c.lat[i].Load()
		}
	}
}

var epoch = time.Now()

func nanotime() int64 { return int64(time.Since(epoch)) }

// boundsError is a write or write-zeroes past the end of the device:
// EIO, as QEMU's BlockBackend answers it.
type boundsError struct {
	op     Op
	dev    string
	off, n int64
	size   int64
}

func (e *boundsError) Error() string {
	return fmt.Sprintf("ringblk: %s on %s at %d: %d bytes reach past the end of the device (%d bytes): %v",
		e.op, e.dev, e.off, e.n, e.size, syscall.EIO)
}

func (e *boundsError) Unwrap() error { return syscall.EIO }

type opError struct {
	op  string
	err error
}

func (e *opError) Error() string { return "ringblk: " + e.op + ": " + e.err.Error() }
func (e *opError) Unwrap() error { return e.err }

var _ = syscall.ENOSPC
