package block

import (
	"sync"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/internal/invariants"
)

// Alignment, splitting and request serialisation: the slow path of Submit,
// taken only on nodes opened with Align > 1 or MaxTransfer > 0.
//
//   - A read or write whose offset or length is not a multiple of Align is
//     padded: a read reads the aligned range into a bounce buffer and copies
//     out; a write reads the aligned range, merges the data, and writes the
//     aligned range back (read-modify-write).
//   - Anything longer than MaxTransfer goes to the driver in pieces of at
//     most MaxTransfer bytes, issued together; the request completes when the
//     last piece does, with the first error.
//   - RMW writes are serialising: on a node that needs alignment every read
//     and write is serialised against them, an RMW write waits for every
//     earlier overlapping request, and every request waits for earlier
//     overlapping RMW writes. As in QEMU, a request that is itself waiting
//     is not waited for (a new request overtakes it), and when it wakes it
//     checks again against every tracked request that is not waiting,
//     earlier or later. Waits thus always point at a request that is
//     running, so they cannot form a cycle. Nodes without alignment track
//     nothing (seed 003: serialise only where RMW needs it).
//
// Serialisation costs an aligned request no lock (the hot path of an
// O_DIRECT image). The node's gate word (inFlight.gate, on the in-flight
// count's cache line) counts serialising requests in its high half and
// aligned requests that passed the gate in its low half:
//
//   - An aligned request adds one to the low half. If the high half was
//     zero it goes to the driver untracked (the fast path: one atomic add
//     now, one at completion). Otherwise it takes its add back and joins
//     the tracked list like a padded request (slow path): it waits for an
//     overlapping serialising request that is running, and overtakes one
//     that is waiting.
//   - A serialising request, under the tracker's mutex, joins the list and
//     adds one to the high half; from then on no aligned request passes
//     the gate. If aligned requests that passed earlier are still in
//     flight (low half non-zero) it waits on the tracker's fastWaiters
//     list for all of them: they are untracked, so their ranges are
//     unknown. Meanwhile it is a waiting request like any other (later
//     requests overtake it). The last fast-path request to leave (low half
//     back to zero while the high half is not) wakes the waiters, which
//     then check the tracked list as usual.
//
// A serialising request thus waits for every aligned one that passed the
// gate before it, overlapping or not — more than necessary, but unaligned
// writes are the rare case on a node that needs alignment, and it keeps
// the common case lock-free (as QEMU's serialising_in_flight counter lets
// its requests skip the wait).
//
// Each piece is a request of its own on the node and holds the node's
// in-flight count like any other; the padded or split request holds its own
// count until its last piece completed.

// alignDown and alignUp round to a power-of-two alignment.
func alignDown(x, align int64) int64 { return x &^ (align - 1) }
func alignUp(x, align int64) int64   { return (x + align - 1) &^ (align - 1) }

// pieceLen returns the length of the piece starting at off in a range that
// ends at end, with at most max bytes per piece (max 0: no limit).
func pieceLen(off, end, max int64) int64 {
	n := end - off
	if max > 0 && n > max {
		n = max
	}
	return n
}

// iovSlice returns the n bytes of iov starting skip bytes in. It reuses dst
// when the range lies in one buffer (the common case); otherwise it
// allocates a new vector.
func iovSlice(dst *[1][]byte, iov [][]byte, skip, n int64) [][]byte {
	for len(iov) > 0 && skip >= int64(len(iov[0])) {
		skip -= int64(len(iov[0]))
		iov = iov[1:]
	}
	if len(iov) == 0 || n == 0 {
		dst[0] = nil
		return dst[:0]
	}
	if skip+n <= int64(len(iov[0])) {
		dst[0] = iov[0][skip : skip+n]
		return dst[:]
	}
	var out [][]byte
	for n > 0 && len(iov) > 0 {
		b := iov[0][skip:]
		skip = 0
		if int64(len(b)) > n {
			b = b[:n]
		}
		out = append(out, b)
		n -= int64(len(b))
		iov = iov[1:]
	}
	return out
}

// iovGather copies len(dst) bytes of iov into dst.
func iovGather(dst []byte, iov [][]byte) {
	for _, b := range iov {
		k := copy(dst, b)
		dst = dst[k:]
		if len(dst) == 0 {
			return
		}
	}
}

type slowPhase uint8

const (
	phaseSplit       slowPhase = iota + 1 // pieces of the request itself
	phaseAlignedRead                      // padded read into the bounce buffer
	phaseRMWRead                          // RMW: read of the padded range
	phaseRMWWrite                         // RMW: write of the merged range
)

// slowState is the side structure of a request on the slow path. A pool
// request keeps it once allocated, and bounce buffers come from the
// Context's arena, so unaligned I/O stops allocating once the pool is warm
// (a heap bounce buffer only when the arena is absent or full).
type slowState struct {
	phase    slowPhase
	pending  int32
	firstErr error
	bounce   []byte
	// arena is where bounce came from when it is a block of the Context's
	// arena (aligned for O_DIRECT, registered as a fixed buffer, no heap
	// allocation); it goes back before the request completes.
	arena *aio.Arena
	aoff  int64 // aligned range
	aend  int64

	// Serialisation (node.tracked).
	tracked     bool
	serialising bool
	waiting     bool     // queued on another request's waiters or on fastWaiters
	waiters     *Request // requests waiting for this one to finish
	waitNext    *Request
}

// tracker holds a node's tracked requests in registration order, and the
// serialising requests that wait for the fast path to empty.
type tracker struct {
	mu          sync.Mutex
	list        []*Request
	fastWaiters *Request // linked through slow.waitNext

	// locks counts acquisitions of mu, under mu (tests assert that the
	// aligned fast path never takes it).
	locks int64
}

// gateLow masks the gate's count of aligned requests on the fast path;
// gateHigh is one serialising request.
const (
	gateLow  = 1<<32 - 1
	gateHigh = 1 << 32
)

// fastEnter lets an aligned request onto the fast path unless a
// serialising request is in flight.
func (n *Node) fastEnter() bool {
	if n.inFlight.gate.Add(1) < gateHigh {
		return true
	}
	n.fastLeave()
	return false
}

// fastLeave ends what a successful or refused fastEnter began; the last
// aligned request to leave while serialising requests are waiting wakes
// them.
func (n *Node) fastLeave() {
	v := n.inFlight.gate.Add(^uint64(0))
	if invariants.Enabled && v&gateLow == gateLow {
		invariants.Failf("block: node %s: serialisation gate left more often than entered (%#x)", n.name, v)
	}
	if v&gateLow == 0 && v >= gateHigh {
		n.wakeFastWaiters()
	}
}

func (t *tracker) lock() {
	t.mu.Lock()
	t.locks++
}

// startSlow takes r over if it needs padding, splitting or tracking, and
// reports whether it did.
func (n *Node) startSlow(r *Request) bool {
	align := int64(n.opts.Align)
	rw := r.Op == OpRead || r.Op == OpWrite
	unaligned := rw && (r.Off|r.Len)&(align-1) != 0
	splits := splittable(r.Op) && n.maxLen(r.Op) > 0 && r.Len > n.maxLen(r.Op)
	// A compressed write is never padded or split (the driver takes whole
	// clusters), but it is tracked so it waits for overlapping RMW writes.
	track := align > 1 && (rw || r.Op == OpWriteZeroes || r.Op == OpWriteCompressed)
	if !unaligned && !splits && !track {
		return false
	}
	if track && !unaligned && !splits && n.fastEnter() {
		// Aligned and no serialising request in flight: untracked, no
		// lock (Complete leaves the gate).
		r.fast = true
		return false
	}
	if r.slow == nil {
		r.slow = new(slowState)
	}
	s := r.slow
	s.aoff, s.aend = r.Off, r.Off+r.Len
	if unaligned {
		s.aoff, s.aend = alignDown(r.Off, align), alignUp(r.Off+r.Len, align)
	}
	if track {
		s.serialising = unaligned && r.Op == OpWrite
		if n.track(r) {
			return true // runSlow runs when the blocker finishes
		}
	}
	n.runSlow(r)
	return true
}

func (n *Node) runSlow(r *Request) {
	s := r.slow
	align := int64(n.opts.Align)
	unaligned := (r.Op == OpRead || r.Op == OpWrite) && (r.Off|r.Len)&(align-1) != 0
	switch {
	case unaligned:
		s.bounce = bounceBuf(r, s, s.aend-s.aoff)
		s.phase = phaseAlignedRead
		if r.Op == OpWrite {
			s.phase = phaseRMWRead
			n.rmwEvents(r, DbgPwritevRmwHead, DbgPwritevRmwTail)
		}
		n.issue(r, OpRead, s.aoff, s.aend-s.aoff, [][]byte{s.bounce})
	case splittable(r.Op) && n.maxLen(r.Op) > 0 && r.Len > n.maxLen(r.Op):
		s.phase = phaseSplit
		n.issue(r, r.Op, r.Off, r.Len, r.Iov)
	default:
		n.dispatch(r)
	}
}

// issue sends [off, off+length) of op to the driver in pieces of at most
// MaxTransfer bytes, on behalf of r; pieceDone counts them back.
func (n *Node) issue(r *Request, op Op, off, length int64, iov [][]byte) {
	s := r.slow
	s.pending = 1 // guard: inline completions cannot finish r mid-loop
	s.firstErr = nil
	end := off + length
	var first, last *Request
	for pos := off; pos < end || (length == 0 && first == nil); {
		k := pieceLen(pos, end, n.maxLen(op))
		p := r.pool.Get()
		p.Op, p.Flags, p.Off, p.Len = op, r.Flags, pos, k
		if op == OpRead || op == OpWrite {
			p.Iov = iovSlice(&p.iov1, iov, pos-off, k)
		}
		p.Parent = r
		p.node = n
		p.done = pieceDone{}
		s.pending++
		n.inFlight.inc()
		if last == nil {
			first = p
		} else {
			last.next = p
		}
		last = p
		pos += k
	}
	for p := first; p != nil; {
		next := p.next
		p.next = nil
		n.dispatch(p)
		p = next
	}
	s.pending-- // drop the guard
	if s.pending == 0 {
		n.slowPhaseDone(r)
	}
}

// maxLen is the longest request of op the driver takes (0: no limit):
// MaxWriteZeroes for write-zeroes when set, else MaxTransfer.
func (n *Node) maxLen(op Op) int64 {
	if op == OpWriteZeroes && n.opts.MaxWriteZeroes > 0 {
		return n.opts.MaxWriteZeroes
	}
	return n.opts.MaxTransfer
}

// splittable reports whether op goes to the driver in MaxTransfer pieces.
func splittable(op Op) bool {
	return op == OpRead || op == OpWrite || op == OpDiscard || op == OpWriteZeroes
}

// pieceDone counts the pieces of a slow-path request back in.
type pieceDone struct{}

func (pieceDone) RequestDone(p *Request, err error) {
	r := p.Parent
	s := r.slow
	if err != nil && s.firstErr == nil {
		s.firstErr = err
	}
	s.pending--
	if s.pending == 0 {
		r.node.slowPhaseDone(r)
	}
}

func (n *Node) slowPhaseDone(r *Request) {
	s := r.slow
	err := s.firstErr
	switch s.phase {
	case phaseAlignedRead:
		if err == nil {
			CopyToIov(r.Iov, 0, s.bounce[r.Off-s.aoff:r.Off-s.aoff+r.Len])
		}
	case phaseRMWRead:
		if err == nil {
			iovGather(s.bounce[r.Off-s.aoff:r.Off-s.aoff+r.Len], r.Iov)
			n.rmwEvents(r, DbgPwritevRmwAfterHead, DbgPwritevRmwAfterTail)
			s.phase = phaseRMWWrite
			n.issue(r, OpWrite, s.aoff, s.aend-s.aoff, [][]byte{s.bounce})
			return
		}
	}
	releaseBounce(r, s)
	r.Complete(err)
}

// rmwEvents raises, on a node whose driver takes debug events
// (blkdebug), QEMU's read-modify-write events of a padded write: head
// when the write starts inside an aligned block, tail when it ends inside
// one (one read covers both here, so the head and tail events come
// together around it).
func (n *Node) rmwEvents(r *Request, head, tail DebugEvent) {
	d, ok := n.drv.(DebugEventer)
	if !ok {
		return
	}
	s := r.slow
	if r.Off != s.aoff {
		d.DebugEvent(head)
	}
	if r.Off+r.Len != s.aend {
		d.DebugEvent(tail)
	}
}

// bounceBuf returns size bytes for a padded request: a block of the arena
// of the Context r runs on when there is room (4096-aligned, so O_DIRECT
// takes it as it is, and sent as a fixed buffer), else the heap.
func bounceBuf(r *Request, s *slowState, size int64) []byte {
	if c := r.ctx; c != nil && c.InContext() {
		if a := c.Arena(); a != nil && size <= int64(a.Size())/4 {
			if b, err := a.Alloc(int(size)); err == nil {
				s.arena = a
				return b
			}
		}
	}
	if int64(cap(s.bounce)) >= size {
		return s.bounce[:size]
	}
	return make([]byte, size)
}

// releaseBounce gives an arena bounce buffer back; the arena is owner-only,
// so from any other goroutine the release is scheduled on its Context.
func releaseBounce(r *Request, s *slowState) {
	a := s.arena
	if a == nil {
		return
	}
	b := s.bounce
	s.arena, s.bounce = nil, nil
	if c := r.ctx; c != nil && c.InContext() {
		a.Free(b)
		return
	}
	r.ctx.Schedule(func() { a.Free(b) })
}

// track registers r and reports whether it must wait for an earlier
// conflicting request; if so it is queued on that request (or, for a
// serialising request while aligned fast-path requests are in flight, on
// the tracker's fastWaiters).
func (n *Node) track(r *Request) (wait bool) {
	t := &n.tracked
	t.lock()
	defer t.mu.Unlock()
	rs := r.slow
	rs.tracked = true
	t.list = append(t.list, r)
	if rs.serialising && n.inFlight.gate.Add(gateHigh)&gateLow != 0 {
		rs.waitNext = t.fastWaiters
		t.fastWaiters = r
		rs.waiting = true
		return true
	}
	if b := t.conflict(r); b != nil {
		rs.waitNext = b.slow.waiters
		b.slow.waiters = r
		rs.waiting = true
		return true
	}
	return false
}

// conflict returns a tracked request that r must wait for: one that
// overlaps r, is serialising or has r serialising, and is not waiting
// itself (QEMU's bdrv_find_conflicting_request).
func (t *tracker) conflict(r *Request) *Request {
	rs := r.slow
	for _, o := range t.list {
		os := o.slow
		if o == r || os.waiting {
			continue
		}
		if (os.serialising || rs.serialising) && os.aoff < rs.aend && rs.aoff < os.aend {
			return o
		}
	}
	return nil
}

// requeue puts each request of the waitNext list w either on a tracked
// request it still conflicts with or on ready, which it returns. The
// requests of w are running again unless they meet another conflict:
// they are all marked so first, so that they do not skip each other.
// REQUIRES: t.mu held.
func (t *tracker) requeue(w, ready *Request) *Request {
	for w := w; w != nil; w = w.slow.waitNext {
		w.slow.waiting = false
	}
	for w != nil {
		next := w.slow.waitNext
		w.slow.waitNext = nil
		if b := t.conflict(w); b != nil {
			w.slow.waitNext = b.slow.waiters
			b.slow.waiters = w
			w.slow.waiting = true
		} else {
			w.slow.waitNext = ready
			ready = w
		}
		w = next
	}
	return ready
}

// restart runs each request of the waitNext list ready on its own Context.
func (n *Node) restart(ready *Request) {
	for ready != nil {
		w := ready
		ready = w.slow.waitNext
		w.slow.waitNext = nil
		w.ctx.Schedule(func() { n.runSlow(w) })
	}
}

// wakeFastWaiters moves the serialising requests that waited for the fast
// path to empty on to their tracked conflicts, or restarts them.
func (n *Node) wakeFastWaiters() {
	t := &n.tracked
	t.lock()
	var ready *Request
	// An aligned request that raised the low half again is being refused
	// (the high half is set) and wakes the waiters when it leaves.
	if n.inFlight.gate.Load()&gateLow == 0 {
		w := t.fastWaiters
		t.fastWaiters = nil
		ready = t.requeue(w, nil)
	}
	t.mu.Unlock()
	n.restart(ready)
}

// untrack removes r and restarts the requests that waited for it and no
// longer conflict with a running tracked request, each on its own Context.
func (n *Node) untrack(r *Request) {
	t := &n.tracked
	t.lock()
	idx := -1
	for i, o := range t.list {
		if o == r {
			idx = i
			break
		}
	}
	copy(t.list[idx:], t.list[idx+1:])
	t.list[len(t.list)-1] = nil
	t.list = t.list[:len(t.list)-1]
	w := r.slow.waiters
	r.slow.waiters = nil
	r.slow.tracked = false
	if r.slow.serialising {
		n.inFlight.gate.Add(^uint64(gateHigh - 1)) // minus gateHigh
	}
	ready := t.requeue(w, nil)
	t.mu.Unlock()
	n.restart(ready)
}
