package block

import (
	"errors"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/internal/invariants"
)

// DevOps are the callbacks a device or export registers on its front end
// (QEMU's BlockDevOps): stop taking new work when the front end is quiesced,
// report device-side work still running, and start again.
type DevOps interface {
	DrainedBegin()     // 0→1: stop reading guest queues / sockets
	DrainedPoll() bool // still busy on the device side
	DrainedEnd()       // 1→0: re-arm and process what arrived meanwhile
}

// FrontEndOptions configure a front end.
type FrontEndOptions struct {
	Name    string
	Context *aio.Context // home Context; nil: the main Context
	// DisableQueuing makes requests run even while the front end is
	// quiesced (internal users: jobs, tests, the drain owner's own I/O).
	DisableQueuing bool
	DevOps         DevOps
	// AllowContextChange lets a Context move that starts elsewhere in the
	// graph carry this front end along. Without it, only a named front end
	// without device ops follows; the others veto (QEMU's policy).
	AllowContextChange bool
}

// FrontEnd is the handle users, plugins and exports do I/O through (QEMU's
// BlockBackend). It owns one edge to its root node, has its own in-flight
// and quiesce counts, and queues requests that arrive while it is quiesced.
// It is multiqueue: every Context that submits gets its own Queue, and a
// request runs on the ring of the Context that submitted it.
type FrontEnd struct {
	inFlight inFlight

	// INVARIANT: quiesce >= 0; > 0 while the root node (or anything below
	// it that was drained) is in a drained section.
	quiesce atomic.Int32
	noQueue atomic.Bool

	g    *Graph
	name string
	root atomic.Pointer[Child]
	ctx  atomic.Pointer[aio.Context]
	dev  DevOps
	// allowMove is read by Context moves on the main Context.
	allowMove bool

	throttle atomic.Pointer[ThrottleGroup]

	mu struct {
		sync.Mutex
		parkedHead *Request // FIFO of requests that arrived while quiesced
		parkedTail *Request
		queues     []*Queue
	}
	closed bool
	// mainCallbacks counts this front end's completion callbacks running
	// on the main Context (main Context only; see Graph.checkSelfWait).
	mainCallbacks int
}

// NewFrontEnd creates a front end without a root node.
func (g *Graph) NewFrontEnd(opts FrontEndOptions) *FrontEnd {
	fe := &FrontEnd{g: g, name: opts.Name, dev: opts.DevOps, allowMove: opts.AllowContextChange}
	ctx := opts.Context
	if ctx == nil {
		ctx = g.main
	}
	fe.ctx.Store(ctx)
	fe.noQueue.Store(opts.DisableQueuing)
	g.Control(func() { g.frontEnds = append(g.frontEnds, fe) })
	return fe
}

// Name returns the front end's name ("" if anonymous).
func (fe *FrontEnd) Name() string { return fe.name }

// Graph returns the graph the front end belongs to.
func (fe *FrontEnd) Graph() *Graph { return fe.g }

// Context returns the front end's home Context.
func (fe *FrontEnd) Context() *aio.Context { return fe.ctx.Load() }

// InFlight returns the front end's in-flight count.
func (fe *FrontEnd) InFlight() int64 { return fe.inFlight.load() }

// Quiesce returns the front end's quiesce count.
func (fe *FrontEnd) Quiesce() int { return int(fe.quiesce.Load()) }

// Root returns the root node, or nil.
func (fe *FrontEnd) Root() *Node {
	if c := fe.root.Load(); c != nil {
		return c.node.Load()
	}
	return nil
}

// RootChild returns the front end's edge, or nil.
func (fe *FrontEnd) RootChild() *Child { return fe.root.Load() }

// SetQueuing enables or disables request queuing while quiesced.
func (fe *FrontEnd) SetQueuing(enabled bool) { fe.noQueue.Store(!enabled) }

// SetDevOps registers the device callbacks (main Context).
func (fe *FrontEnd) SetDevOps(ops DevOps) { fe.g.Control(func() { fe.dev = ops }) }

// AllowContextChange sets whether moves started elsewhere may carry the
// front end along.
func (fe *FrontEnd) AllowContextChange(allow bool) { fe.g.Control(func() { fe.allowMove = allow }) }

// SetThrottle makes the front end a member of tg (nil: unthrottled).
func (fe *FrontEnd) SetThrottle(tg *ThrottleGroup) { fe.throttle.Store(tg) }

// Insert attaches n as the root node. A node in another Context is moved
// to the front end's Context first (with everything connected to it).
func (fe *FrontEnd) Insert(n *Node) (err error) {
	fe.g.Control(func() {
		if fe.root.Load() != nil {
			err = newError(InvalidFormat, OpAttach, n, 0, errors.New("front end already has a root node"))
			return
		}
		if ctx := fe.ctx.Load(); n.Context() != ctx {
			if err = fe.g.move(n, ctx, nil); err != nil {
				return
			}
		}
		var c *Child
		c, err = fe.g.attach(nil, n, ChildSpec{Name: "root", Role: RolePrimary, Class: feClass{}, Owner: fe})
		if err == nil {
			fe.root.Store(c)
		}
	})
	return err
}

// Remove detaches the root node (dropping the front end's reference). It
// returns the errors of the Close calls of the nodes that deletes.
func (fe *FrontEnd) Remove() (err error) {
	fe.g.Control(func() {
		c := fe.root.Load()
		if c == nil {
			return
		}
		n := c.node.Load()
		fe.root.Store(nil)
		err = fe.g.collectClose(func() { fe.g.detach(c) })
		// A node nobody else uses goes back to the main Context, so the
		// front end's Context can stop without stranding it (I19).
		if n != nil && n.refs > 0 && len(n.parents) == 0 && n.Context() != fe.g.main {
			_ = fe.g.move(n, fe.g.main, nil)
		}
	})
	return err
}

// Close waits for the front end's requests still in flight, removes the
// root node and unregisters the front end. It returns the errors of the
// Close calls of the nodes the removal deleted (a failed metadata
// write-back): the front end is closed either way. It must not be called
// from a completion callback of this front end on the main Context (that
// callback's request is still counted).
//
// The wait matters even for a host that saw every callback: a request
// leaves the front end's count only after its callback returned (so that a
// drain cannot end while a callback still runs), so "the last callback
// signalled, now close" races with that count. QEMU's blk_remove_bs drains
// for the same reason.
func (fe *FrontEnd) Close() error {
	if fe.inFlight.load() != 0 {
		fe.Drain()
	}
	err := fe.Remove()
	fe.g.Control(func() {
		if n := fe.inFlight.load(); n != 0 {
			invariants.Failf("block: closing front end %q with %d requests in flight", fe.name, n)
		}
		fe.closed = true
		for i, x := range fe.g.frontEnds {
			if x == fe {
				fe.g.frontEnds = append(fe.g.frontEnds[:i], fe.g.frontEnds[i+1:]...)
				break
			}
		}
	})
	return err
}

// Drain drains the root node and also waits for requests of the front end
// that have no node to run on (QEMU's blk_drain).
func (fe *FrontEnd) Drain() {
	fe.g.Control(func() {
		fe.checkSelfWait("FrontEnd.Drain")
		n := fe.Root()
		if n != nil {
			n.drainedBegin()
		}
		fe.g.waitWhile(func() bool { return fe.inFlight.load() > 0 })
		if n != nil {
			n.drainedEnd()
		}
	})
}

// feClass is the class of a front end's root edge.
type feClass struct{}

func (feClass) Kind() ParentKind { return FrontEndParent }

func (feClass) DrainedBegin(c *Child) {
	fe := c.owner.(*FrontEnd)
	if fe.quiesce.Add(1) != 1 {
		return
	}
	if fe.dev != nil {
		fe.dev.DrainedBegin()
	}
	// Throttling is off while quiesced: requests waiting for a throttle
	// timer run now instead of keeping the drain waiting (seed 003).
	// Requests waiting for room in their Context's pool are parked as
	// well, rather than kept in the drain's count.
	fe.mu.Lock()
	for _, q := range fe.mu.queues {
		q.thrBH.Schedule()
		if !fe.noQueue.Load() {
			q.pool.capBH.Schedule()
		}
	}
	fe.mu.Unlock()
}

func (feClass) DrainedPoll(c *Child) bool {
	fe := c.owner.(*FrontEnd)
	if fe.inFlight.load() > 0 {
		// A graph change during the wait may have put fe above the
		// drained nodes after the upfront check: never wait for oneself.
		fe.checkSelfWait("a drain")
		return true
	}
	return fe.dev != nil && fe.dev.DrainedPoll()
}

func (feClass) DrainedEnd(c *Child) {
	fe := c.owner.(*FrontEnd)
	q := fe.quiesce.Add(-1)
	if q < 0 {
		invariants.Failf("block: front end drained end without begin") // D1
	}
	if q != 0 {
		return
	}
	if fe.dev != nil {
		fe.dev.DrainedEnd()
	}
	fe.resumeParked()
}

func (feClass) MoveContext(c *Child, m *Move) error {
	fe := c.owner.(*FrontEnd)
	if !fe.allowMove && (fe.name == "" || fe.dev != nil) {
		return newError(Unsupported, OpMove, c.node.Load(), 0, errors.New("front end "+quote(fe.name)+" is in use and does not allow a Context change"))
	}
	m.OnCommit(func() { fe.ctx.Store(m.Target()) })
	return nil
}

func quote(s string) string {
	if s == "" {
		return "(anonymous)"
	}
	return `"` + s + `"`
}

// park queues r if the front end is (still) quiesced with queuing on, and
// drops r's in-flight count so the drain does not wait for it. The lock
// closes the race with resumeParked: either the re-check sees quiesce == 0
// and r proceeds, or r is in the list before resumeParked takes it.
func (fe *FrontEnd) park(r *Request) bool {
	fe.mu.Lock()
	if fe.quiesce.Load() == 0 || fe.noQueue.Load() {
		fe.mu.Unlock()
		return false
	}
	r.next = nil
	if fe.mu.parkedTail == nil {
		fe.mu.parkedHead = r
	} else {
		fe.mu.parkedTail.next = r
	}
	fe.mu.parkedTail = r
	fe.inFlight.dec()
	fe.mu.Unlock()
	fe.g.main.Kick()
	return true
}

// resumeParked hands every parked request back to its Queue in FIFO order,
// counting each in the front end's in-flight before it is scheduled (D15),
// so that a drain starting before it runs still waits for it.
func (fe *FrontEnd) resumeParked() {
	fe.mu.Lock()
	r := fe.mu.parkedHead
	fe.mu.parkedHead, fe.mu.parkedTail = nil, nil
	for r != nil {
		next := r.next
		r.next = nil
		fe.inFlight.inc()
		q := r.q
		if q.resumeTail == nil {
			q.resumeHead = r
			q.resumeBH.Schedule()
		} else {
			q.resumeTail.next = r
		}
		q.resumeTail = r
		r = next
	}
	fe.mu.Unlock()
}

// CancelParked completes with err, at once, the requests of q submitted
// with done that a drained section holds (parked, never sent to the root
// node), and returns how many it completed. It is for a user closing its
// request source inside a drained section it cannot end (its own, or one
// that lasts until the close returns): waiting for the section deadlocks.
// QEMU fails a detached BlockBackend's queued requests alike (ENOMEDIUM
// once the drained end resumes them). Requests already in flight are
// untouched. Owner of q only; done runs inside the call, for each request
// in the order it was parked.
func (q *Queue) CancelParked(done Done, err error) int {
	if invariants.Enabled && !q.ctx.InContext() {
		invariants.Failf("block: CancelParked off the queue's Context %s", q.ctx.Name())
	}
	fe := q.fe
	var head, tail *Request
	fe.mu.Lock()
	var prev *Request
	for r := fe.mu.parkedHead; r != nil; {
		next := r.next
		if r.q != q || r.userDone != done {
			prev = r
			r = next
			continue
		}
		if prev == nil {
			fe.mu.parkedHead = next
		} else {
			prev.next = next
		}
		if fe.mu.parkedTail == r {
			fe.mu.parkedTail = prev
		}
		r.next = nil
		if tail == nil {
			head = r
		} else {
			tail.next = r
		}
		tail = r
		r = next
	}
	fe.mu.Unlock()
	k := 0
	for r := head; r != nil; {
		next := r.next
		r.next = nil
		// park dropped the front end's count, and the request was never
		// admitted to its pool: only the callback and the release remain.
		if q.onMain {
			q.callbackOnMain(r, err)
		} else {
			r.userDone.RequestDone(r, err)
		}
		q.pool.put(r)
		k++
		r = next
	}
	return k
}

// ParkedCount returns the number of queued requests (for tests).
func (fe *FrontEnd) ParkedCount() int {
	fe.mu.Lock()
	defer fe.mu.Unlock()
	k := 0
	for r := fe.mu.parkedHead; r != nil; r = r.next {
		k++
	}
	return k
}

// Queue is one Context's submission handle on a front end. Only that
// Context's owner uses it; it holds no lock on the request path.
type Queue struct {
	fe   *FrontEnd
	ctx  *aio.Context
	pool *Pool

	// Resumed requests, guarded by fe.mu (drained end runs on main).
	resumeHead, resumeTail *Request
	resumeBH               *aio.BH

	// Throttled requests, owner only, FIFO.
	thrHead, thrTail *Request
	thrTimer         *aio.Timer
	thrBH            *aio.BH
	thrGroup         *ThrottleGroup // whose ring q is in (nil: none)

	plugDepth int
	plugged   bool
	onMain    bool // ctx is the main Context (finish counts callbacks)
}

// Queue returns ctx's queue on the front end, creating it on first use.
// Call it once per Context at set-up.
func (fe *FrontEnd) Queue(ctx *aio.Context) *Queue {
	fe.mu.Lock()
	defer fe.mu.Unlock()
	for _, q := range fe.mu.queues {
		if q.ctx == ctx {
			return q
		}
	}
	q := &Queue{fe: fe, ctx: ctx, pool: fe.g.Pool(ctx), onMain: ctx == fe.g.main}
	q.resumeBH = ctx.NewBH(q.runResumed)
	q.thrBH = ctx.NewBH(q.runThrottled)
	fe.mu.queues = append(fe.mu.queues, q)
	return q
}

// Context returns the queue's Context.
func (q *Queue) Context() *aio.Context { return q.ctx }

// FrontEnd returns the queue's front end.
func (q *Queue) FrontEnd() *FrontEnd { return q.fe }

// Get returns a request from the queue's pool, for Submit.
func (q *Queue) Get() *Request { return q.pool.Get() }

// Read reads len(buf) bytes at off; done runs on the queue's Context, never
// inside this call.
func (q *Queue) Read(buf []byte, off int64, done Done, tag uint64) {
	r := q.pool.Get()
	r.Op, r.Off, r.Tag = OpRead, off, tag
	r.SetBuf(buf)
	q.Submit(r, done)
}

// Write writes buf at off.
func (q *Queue) Write(buf []byte, off int64, flags Flags, done Done, tag uint64) {
	r := q.pool.Get()
	r.Op, r.Off, r.Flags, r.Tag = OpWrite, off, flags, tag
	r.SetBuf(buf)
	q.Submit(r, done)
}

// Readv reads into the vector iov at off.
func (q *Queue) Readv(iov [][]byte, off int64, done Done, tag uint64) {
	r := q.pool.Get()
	r.Op, r.Off, r.Tag, r.Iov, r.Len = OpRead, off, tag, iov, iovLen(iov)
	q.Submit(r, done)
}

// Writev writes the vector iov at off.
func (q *Queue) Writev(iov [][]byte, off int64, flags Flags, done Done, tag uint64) {
	r := q.pool.Get()
	r.Op, r.Off, r.Flags, r.Tag, r.Iov, r.Len = OpWrite, off, flags, tag, iov, iovLen(iov)
	q.Submit(r, done)
}

// Flush makes completed writes durable.
func (q *Queue) Flush(done Done, tag uint64) {
	r := q.pool.Get()
	r.Op, r.Tag = OpFlush, tag
	q.Submit(r, done)
}

// Discard discards [off, off+n).
func (q *Queue) Discard(off, n int64, done Done, tag uint64) {
	r := q.pool.Get()
	r.Op, r.Off, r.Len, r.Tag = OpDiscard, off, n, tag
	q.Submit(r, done)
}

// WriteZeroes zeroes [off, off+n).
func (q *Queue) WriteZeroes(off, n int64, flags Flags, done Done, tag uint64) {
	r := q.pool.Get()
	r.Op, r.Off, r.Len, r.Flags, r.Tag = OpWriteZeroes, off, n, flags, tag
	q.Submit(r, done)
}

// Submit runs a filled request (from q.Get) through the front end:
// counted in the front end, queued while quiesced, throttled, then sent to
// the root node. done runs on q's Context, never inside Submit.
func (q *Queue) Submit(r *Request, done Done) {
	if invariants.Enabled && r.pool != q.pool {
		invariants.Failf("block: request from another Context's pool")
	}
	fe := q.fe
	r.q = q
	r.userDone = done
	fe.inFlight.inc()
	// The count is raised before the quiesce check: a drain that starts
	// after the check sees it and waits; one that started before is seen by
	// the check (sequentially consistent atomics on both sides).
	if fe.quiesce.Load() != 0 && !fe.noQueue.Load() && fe.park(r) {
		return
	}
	q.dispatch(r)
}

func (q *Queue) dispatch(r *Request) {
	fe := q.fe
	if tg := fe.throttle.Load(); tg != nil && throttledOp(r.Op) && fe.quiesce.Load() == 0 && q.throttle(tg, r) {
		return
	}
	q.toNode(r)
}

// toNode admits r (or queues it until its pool has room, behind earlier
// waiters) and sends it to the root node.
func (q *Queue) toNode(r *Request) {
	p := q.pool
	if p.capHead != nil || !p.canAdmit() {
		p.waitCapacity(r)
		return
	}
	p.admit()
	q.send(r)
}

func (q *Queue) send(r *Request) {
	c := q.fe.root.Load()
	var n *Node
	if c != nil {
		n = c.node.Load()
	}
	if n == nil {
		r.err = newError(Io, r.Op, nil, r.Off, syscall.ENOMEDIUM)
		r.deferFE = true
		r.pool.pushDeferred(r)
		return
	}
	r.submitting = true
	n.Submit(r, q)
	r.submitting = false
}

// RequestDone is the root node's completion of a front-end request.
func (q *Queue) RequestDone(r *Request, err error) {
	if r.submitting {
		// Completed inside Submit: finish from the pool's BH so the user's
		// callback never runs inside its own submission.
		r.err = err
		r.deferFE = true
		r.pool.pushDeferred(r)
		return
	}
	q.finish(r, err)
}

// finish runs the user's callback, then drops the front end's count (the
// callback runs first, so a drain cannot return while it runs). The
// request leaves its pool's admitted set before the callback: a callback
// that waits for another request on this Context (a synchronous read, U6)
// must not wait for the room its own request still held.
func (q *Queue) finish(r *Request, err error) {
	q.pool.unadmit()
	if q.onMain {
		q.callbackOnMain(r, err)
	} else {
		r.userDone.RequestDone(r, err)
	}
	q.fe.inFlight.dec()
	q.fe.g.main.Kick()
	q.pool.put(r)
}

// callbackOnMain runs the user's callback on the main Context, counted as
// running there (Graph.checkSelfWait refuses drains that would wait for
// it); the count is dropped even if the callback panics.
func (q *Queue) callbackOnMain(r *Request, err error) {
	fe := q.fe
	fe.mainCallbacks++
	fe.g.feCallbacks++
	defer func() {
		fe.mainCallbacks--
		fe.g.feCallbacks--
	}()
	r.userDone.RequestDone(r, err)
}

func (q *Queue) runResumed() {
	fe := q.fe
	fe.mu.Lock()
	r := q.resumeHead
	q.resumeHead, q.resumeTail = nil, nil
	fe.mu.Unlock()
	for r != nil {
		next := r.next
		r.next = nil
		// Already re-counted by resumeParked; if a new drain began since,
		// park again (which drops the count again).
		if !(fe.quiesce.Load() != 0 && !fe.noQueue.Load() && fe.park(r)) {
			q.dispatch(r)
		}
		r = next
	}
}

// Plug opens a batch on the queue's Context: submissions are prepared but
// handed to the kernel together at the outermost Unplug. While a drain is
// waiting, Plug does not batch (drain.md §3.4).
func (q *Queue) Plug() {
	q.plugDepth++
	if q.plugDepth == 1 && q.fe.g.drainWaiters.Load() == 0 {
		q.plugged = true
		q.ctx.Plug()
	}
}

// Unplug closes a batch; the outermost one submits.
func (q *Queue) Unplug() {
	q.plugDepth--
	if q.plugDepth < 0 {
		invariants.Failf("block: unplug without plug")
	}
	if q.plugDepth == 0 && q.plugged {
		q.plugged = false
		q.ctx.Unplug()
	}
}
