package block

import (
	"strconv"
	"syscall"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/internal/invariants"
)

// Op is a request's operation.
type Op uint8

const (
	OpRead Op = iota + 1
	OpWrite
	OpFlush
	OpDiscard
	OpWriteZeroes
	OpBlockStatus
	OpTruncate
	// Control operations, named in errors only.
	OpOpen
	OpClose
	OpAttach
	OpLength
	OpMove

	// Requests added later (values kept after the control operations so
	// existing values do not change). See ops.go.
	OpWriteCompressed // compressed write of whole clusters (CompressedWriter)
	OpLoadVMState     // read VM state at r.Off (VMStateDriver)
	OpSaveVMState     // write VM state at r.Off (VMStateDriver)
	OpCheck           // consistency check (Checker); r.CheckResult() holds the result
	OpActivate        // leave the inactive state (Activator)
	OpInactivate      // enter the inactive state (Activator)
	// Control operation, named in errors only.
	OpDropIntermediate
)

var opNames = [...]string{
	OpRead: "read", OpWrite: "write", OpFlush: "flush", OpDiscard: "discard",
	OpWriteZeroes: "write-zeroes", OpBlockStatus: "block-status", OpTruncate: "truncate",
	OpOpen: "open", OpClose: "close", OpAttach: "attach", OpLength: "length", OpMove: "move",
	OpWriteCompressed: "write-compressed", OpLoadVMState: "load-vmstate", OpSaveVMState: "save-vmstate",
	OpCheck: "check", OpActivate: "activate", OpInactivate: "inactivate",
	OpDropIntermediate: "drop-intermediate",
}

func (o Op) String() string {
	if int(o) < len(opNames) && opNames[o] != "" {
		return opNames[o]
	}
	return "op(" + strconv.Itoa(int(o)) + ")"
}

// Flags modify a request.
type Flags uint16

const (
	// FUA: the write is durable when it completes.
	FUA Flags = 1 << iota
	// MayUnmap: write-zeroes may deallocate the range.
	MayUnmap
	// NoFallback: write-zeroes must not fall back to writing buffers of
	// zeroes (QEMU's BDRV_REQ_NO_FALLBACK). A driver that cannot zero the
	// range quickly fails it with ENOTSUP and leaves it unchanged, so the
	// caller can choose another way (NBD's FAST_ZERO, qemu-img convert's
	// pre-zeroing). Only drivers that implement FastZeroer see the flag;
	// block fails it with ENOTSUP for all others.
	NoFallback
)

// Done receives a request's completion, on the request's Context. The
// request belongs to the block layer again once RequestDone returns: read
// what you need from it (Tag, Status, Pnum) inside the call.
type Done interface {
	RequestDone(r *Request, err error)
}

// Request is one operation on a node. Requests come from a Context's Pool,
// are filled in by the caller (or by a Queue helper), submitted with
// Node.Submit, Child.Submit or a Queue, and go back to the pool after their
// Done callback returns. No allocation happens on that path.
//
// Lifecycle (all on the submitting Context's owner):
//
//	free ──Get──▶ filled ──Submit──▶ counted (node.inFlight+1)
//	  ▲                                  │ validate, align/split, driver
//	  │                                  ▼
//	  └──put◀── Done returned ◀── completed (node.inFlight−1, Kick)
//
// A driver completes with Complete, or with CompleteLater when the
// completion must not run inside its caller (the count stays raised until
// the bottom half has really completed it).
type Request struct {
	Op     Op
	Flags  Flags
	Off    int64    // byte offset; for OpTruncate the new length
	Len    int64    // byte count; for reads and writes len(Iov) summed
	Iov    [][]byte // data buffers of reads and writes
	Status Status   // OpBlockStatus result
	Pnum   int64    // OpBlockStatus: bytes from Off that Status describes
	Tag    uint64   // the submitter's
	// Prio is the request's I/O priority for the kernel (ioprio_set's
	// class<<13 | level; 0: the thread's own). Drivers that issue the
	// request's data I/O on a file pass it on (raw); others ignore it.
	Prio uint16
	Aux  any // the driver's scratch (store a pointer: no allocation)

	// Parent is the request a driver issued this one for, if any.
	Parent *Request

	node *Node
	ctx  *aio.Context
	pool *Pool
	done Done
	next *Request // free list, deferred list, queues
	iov1 [1][]byte
	err  error // carried through a deferred completion

	// Front-end layer (see Queue).
	q          *Queue
	userDone   Done
	submitting bool // inside Queue.dispatch: defer an inline completion
	deferFE    bool // the deferred entry finishes the front-end layer

	// Alignment, splitting and serialisation (align.go).
	slow *slowState
	fast bool // passed the node's serialisation gate untracked

	// OpCheck's mode and result (ops.go); nil for every other op.
	check *checkState

	free bool // on the pool's free list (double-release check)
}

// Node returns the node the request runs on.
func (r *Request) Node() *Node { return r.node }

// Context returns the Context the request runs on (its submitter's).
func (r *Request) Context() *aio.Context { return r.ctx }

// Pool returns the pool the request came from.
func (r *Request) Pool() *Pool { return r.pool }

// SetBuf makes buf the request's only data buffer without allocating.
func (r *Request) SetBuf(buf []byte) {
	r.iov1[0] = buf
	r.Iov = r.iov1[:]
	r.Len = int64(len(buf))
}

func (r *Request) unsupported() error {
	return newError(Unsupported, r.Op, r.node, r.Off, syscall.ENOTSUP)
}

// Sub returns a request for a driver to send to a child on behalf of r:
// same Context, Parent set to r.
func (r *Request) Sub() *Request {
	s := r.pool.Get()
	s.Parent = r
	return s
}

// Complete finishes r: the node's in-flight count drops (and the main
// Context is kicked, D10), then the submitter's Done runs. REQUIRES: on
// r.Context()'s owner, exactly once per submission.
func (r *Request) Complete(err error) {
	n := r.node
	if r.fast {
		r.fast = false
		n.fastLeave()
	} else if r.slow != nil && r.slow.tracked {
		n.untrack(r)
	}
	done := r.done
	// A front-end request goes back to the pool in Queue.finish, which may
	// run inside done: decide before calling it.
	recycle := r.q == nil
	// Dirty tracking before anyone learns of the completion (QEMU marks
	// in bdrv_co_write_req_finish): a job that reads the bitmap after
	// this write finished sees it. A truncate resizes the bitmaps here.
	n.markDirty(r, err)
	n.inFlight.dec()
	n.g.main.Kick()
	done.RequestDone(r, err)
	if recycle {
		r.pool.put(r)
	}
}

// CompleteLater finishes r from a bottom half of its Context (seed 003: a
// request whose completion needs a BH is still in flight until the BH ran).
func (r *Request) CompleteLater(err error) {
	r.err = err
	r.pool.pushDeferred(r)
}

// Submit starts r on n and calls done when it completes (possibly before
// Submit returns, if the driver completes inline). REQUIRES: on r.Context()'s
// owner.
func (n *Node) Submit(r *Request, done Done) {
	r.node = n
	r.done = done
	n.inFlight.inc()
	if err := n.validate(r); err != nil {
		if err == errEarlySuccess {
			err = nil
		}
		r.CompleteLater(err)
		return
	}
	if n.opts.Align > 1 || n.opts.MaxTransfer > 0 || n.opts.MaxWriteZeroes > 0 {
		if n.startSlow(r) {
			return
		}
	}
	n.dispatch(r)
}

// Submit sends r to the edge's child on behalf of its parent.
func (c *Child) Submit(r *Request, done Done) {
	n := c.node.Load()
	if n == nil {
		invariants.Failf("block: request through detached edge %s", c)
	}
	n.Submit(r, done)
}

func (n *Node) dispatch(r *Request) {
	switch r.Op {
	case OpRead:
		n.drv.Read(r)
	case OpWrite:
		n.drv.Write(r)
	case OpFlush:
		n.drv.Flush(r)
	case OpDiscard:
		n.drv.Discard(r)
	case OpWriteZeroes:
		n.drv.WriteZeroes(r)
	case OpBlockStatus:
		n.drv.BlockStatus(r)
	case OpTruncate:
		n.drv.Truncate(r)
	case OpWriteCompressed, OpLoadVMState, OpSaveVMState, OpCheck, OpActivate, OpInactivate:
		n.dispatchOptional(r)
	default:
		invariants.Failf("block: unknown op %s", r.Op)
	}
}

// errEarlySuccess marks requests that validation completes successfully
// without the driver (flush of a read-only node, zero-length status).
var errEarlySuccess = &Error{Kind: Io}

func (n *Node) validate(r *Request) error {
	if invariants.Enabled && carriesData(r.Op) && iovLen(r.Iov) != r.Len {
		invariants.Failf("block: %s of %d bytes with %d bytes of buffers", r.Op, r.Len, iovLen(r.Iov))
	}
	switch r.Op {
	case OpTruncate:
		if r.Off < 0 {
			return newError(OutOfBounds, r.Op, n, r.Off, syscall.EINVAL)
		}
		if n.readOnly.Load() {
			return newError(Io, r.Op, n, r.Off, syscall.EACCES)
		}
		if n.inactive.Load() {
			return newError(Io, r.Op, n, r.Off, syscall.EPERM)
		}
		return nil
	case OpFlush:
		if n.readOnly.Load() {
			return errEarlySuccess
		}
		return nil
	case OpCheck, OpActivate, OpInactivate:
		return n.validateControl(r)
	}
	if r.Off < 0 || r.Len < 0 {
		return newError(OutOfBounds, r.Op, n, r.Off, syscall.EIO)
	}
	if r.Off+r.Len < r.Off {
		return newError(Overflow, r.Op, n, r.Off, syscall.EIO)
	}
	switch r.Op {
	case OpWrite, OpWriteZeroes, OpSaveVMState:
		if n.readOnly.Load() {
			return newError(Io, r.Op, n, r.Off, syscall.EACCES)
		}
		if n.inactive.Load() {
			return newError(Io, r.Op, n, r.Off, syscall.EPERM)
		}
		// Refused before any splitting: no piece of the range changes.
		if r.Op == OpWriteZeroes && r.Flags&NoFallback != 0 && !fastZeroes(n.drv) {
			return r.unsupported()
		}
	case OpWriteCompressed:
		return n.validateCompressed(r)
	case OpDiscard:
		if n.readOnly.Load() {
			return newError(Io, r.Op, n, r.Off, syscall.EACCES)
		}
		if n.inactive.Load() {
			return newError(Io, r.Op, n, r.Off, syscall.EPERM)
		}
		if n.opts.IgnoreDiscard {
			return errEarlySuccess
		}
	case OpBlockStatus:
		r.Status, r.Pnum = 0, 0
		if r.Len == 0 {
			return errEarlySuccess
		}
		if size, err := n.drv.Length(n); err == nil {
			if r.Off >= size {
				return errEarlySuccess
			}
			if r.Off+r.Len > size {
				r.Len = size - r.Off
			}
		}
	}
	return nil
}

func iovLen(iov [][]byte) int64 {
	var s int64
	for _, b := range iov {
		s += int64(len(b))
	}
	return s
}

// Pool hands out the requests of one Context and runs their deferred
// completions from one reusable bottom half. Only the Context's owner uses
// it; it needs no lock.
//
// The pool also bounds the Context's work: front-end requests are admitted
// to their root node while fewer than the limit are admitted and the
// Context's op-slot table has room (aio.Context.SlotsFree above a reserve
// of an eighth of its cap, for the ops admitted requests issue beyond their
// first); otherwise they wait, in arrival order across the Context's
// front ends, and are admitted as admitted ones finish. With none admitted
// the next is always let through, so waiting never deadlocks. A request
// never fails for lack of room, and a drained section parks waiting
// requests as it parks new ones.
type Pool struct {
	g    *Graph
	ctx  *aio.Context
	free *Request

	// Admission (see above); the fields every request touches first.
	admitted     int
	maxAdmitted  int
	peakAdmitted int
	capHead      *Request // waiting for room, FIFO
	capTail      *Request
	reserve      int
	capWaiting   int
	capWaits     int64 // requests that ever waited for room
	capBH        *aio.BH

	head      *Request // deferred completions, FIFO
	tail      *Request
	bh        *aio.BH
	allocated int
	// pushed and popped count deferred entries in and out; runDeferred
	// stops at the count it started with.
	pushed, popped uint64

	out outbox // completions from other Contexts (outbox.go)
}

func newPool(g *Graph, ctx *aio.Context) *Pool {
	p := &Pool{g: g, ctx: ctx}
	p.bh = ctx.NewBH(p.runDeferred)
	p.capBH = ctx.NewBH(p.runCapacity)
	p.out.init(p)
	p.SetMaxRequests(0)
	return p
}

// SetMaxRequests sets how many front-end requests the Context runs at once
// (admitted to their root nodes); n <= 0 restores the default, half the
// Context's slot cap (aio.Options.MaxSlots), which is 4×Entries with aio's
// default cap. Call it on the Context's owner or before the Context runs
// requests.
func (p *Pool) SetMaxRequests(n int) {
	if n <= 0 {
		n = p.ctx.SlotCap() / 2
	}
	p.maxAdmitted = max(n, 1)
	p.reserve = p.ctx.SlotCap() / 8
}

// MaxRequests returns the admission limit.
func (p *Pool) MaxRequests() int { return p.maxAdmitted }

// AdmissionStats reports the admission state (owner only): requests
// admitted now, the most ever admitted at once, requests waiting for room
// now, and requests that ever waited.
func (p *Pool) AdmissionStats() (admitted, peak, waiting int, waits int64) {
	return p.admitted, p.peakAdmitted, p.capWaiting, p.capWaits
}

// canAdmit reports whether another front-end request may go to its node.
func (p *Pool) canAdmit() bool {
	return p.admitted == 0 || (p.admitted < p.maxAdmitted && p.ctx.SlotsFree() > p.reserve)
}

// admit counts a front-end request that goes to its node. Every request
// that reaches Queue.finish was admitted (finish follows Queue.send only).
func (p *Pool) admit() {
	p.admitted++
	if p.admitted > p.peakAdmitted {
		p.peakAdmitted = p.admitted
	}
}

// unadmit drops a finished request's admission and lets a waiter in.
func (p *Pool) unadmit() {
	p.admitted--
	if p.capHead != nil {
		p.wakeCapacity()
	}
}

func (p *Pool) wakeCapacity() {
	if !p.capBH.Scheduled() {
		p.capBH.Schedule()
	}
}

// waitCapacity queues r until the pool has room.
func (p *Pool) waitCapacity(r *Request) {
	r.next = nil
	if p.capTail == nil {
		p.capHead = r
	} else {
		p.capTail.next = r
	}
	p.capTail = r
	p.capWaiting++
	p.capWaits++
}

// runCapacity parks the waiting requests whose front end is quiesced by
// now (their count dropped, as for a new request arriving in a drained
// section), then admits the others in order while there is room.
func (p *Pool) runCapacity() {
	var prev *Request
	for r := p.capHead; r != nil; {
		next := r.next
		if fe := r.q.fe; fe.quiesce.Load() != 0 && !fe.noQueue.Load() {
			if prev == nil {
				p.capHead = next
			} else {
				prev.next = next
			}
			if p.capTail == r {
				p.capTail = prev
			}
			p.capWaiting--
			r.next = nil
			if fe.park(r) {
				r = next
				continue
			}
			// The drain ended meanwhile: r keeps its place.
			r.next = next
			if prev == nil {
				p.capHead = r
			} else {
				prev.next = r
			}
			if next == nil {
				p.capTail = r
			}
			p.capWaiting++
		}
		prev, r = r, next
	}
	for p.capHead != nil && p.canAdmit() {
		r := p.capHead
		p.capHead = r.next
		if p.capHead == nil {
			p.capTail = nil
		}
		r.next = nil
		p.capWaiting--
		p.admit()
		r.q.send(r)
	}
}

// Context returns the pool's Context.
func (p *Pool) Context() *aio.Context { return p.ctx }

// Allocated returns how many requests the pool ever created (its high-water
// mark: requests are recycled, never freed).
func (p *Pool) Allocated() int { return p.allocated }

// Get returns a zeroed request bound to the pool's Context.
func (p *Pool) Get() *Request {
	r := p.free
	if r == nil {
		p.allocated++
		r = &Request{pool: p, ctx: p.ctx}
		return r
	}
	p.free = r.next
	r.next = nil
	r.free = false
	return r
}

func (p *Pool) put(r *Request) {
	if r.free {
		invariants.Failf("block: request released twice")
	}
	slow := r.slow
	*r = Request{pool: p, ctx: p.ctx}
	if slow != nil {
		*slow = slowState{}
		r.slow = slow // keep the side structure: unaligned I/O reuses it
	}
	r.next = p.free
	r.free = true
	p.free = r
}

func (p *Pool) pushDeferred(r *Request) {
	r.next = nil
	p.pushed++
	if p.tail == nil {
		p.head = r
		p.tail = r
		p.bh.Schedule()
		return
	}
	p.tail.next = r
	p.tail = r
}

// runDeferred completes the requests deferred before it started; ones
// deferred by these completions wait for the next run, so a completion that
// resubmits cannot starve the loop.
//
// It is re-entrant (drain.md, "completion paths are re-entrant"): the list
// stays in the pool and entries are taken one at a time, and before a
// callback runs with more entries behind it the bottom half is scheduled
// again. A callback that waits (a drain, a graph change that drains, a
// WaitWhile for a sibling request) polls the Context, and that poll runs
// this bottom half again, which completes the entries queued behind the
// waiting one. The outer run then finds them gone and stops.
func (p *Pool) runDeferred() {
	limit := p.pushed // entries deferred from here on wait for the next run
	for p.head != nil && p.popped < limit {
		r := p.head
		p.head = r.next
		if p.head == nil {
			p.tail = nil
		} else if !p.bh.Scheduled() {
			p.bh.Schedule() // for a nested wait in the callback below
		}
		p.popped++
		r.next = nil
		err := r.err
		r.err = nil
		if r.deferFE {
			r.deferFE = false
			r.q.finish(r, err)
		} else {
			r.Complete(err)
		}
	}
	if p.head == nil {
		p.bh.Cancel() // nothing left: skip the run scheduled above
	} else if !p.bh.Scheduled() {
		p.bh.Schedule()
	}
}

// OpDone makes a request an aio.Done: a driver that issues one ring
// operation for a request passes the request itself, and the operation's
// completion completes the request (res is ignored: aio reports short
// transfers it could not finish as errors).
func (r *Request) OpDone(_ uint64, _ int, err error) { r.Complete(err) }
