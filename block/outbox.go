package block

import (
	"sync/atomic"

	"github.com/ringblk/ringblk/aio"
)

// Cross-Context hand-offs for drivers whose state belongs to one Context
// (the node's): a request submitted on another Context goes to the node's
// Context through the driver's Inbox, and its completion comes back to the
// request's own Context through that Context's outbox (CompleteRemote).
//
// Both are lock-free multi-producer single-consumer stacks of requests
// linked through Request.next (free while a driver holds the request): a
// producer pushes with one CAS and schedules the consumer's bottom half
// only when the stack was empty; the consumer takes the whole stack with
// one Swap (no node is ever popped singly, so there is no ABA) and
// reverses it into arrival order. No map, no mutex and no allocation per
// request: the outbox is a field of the Context's Pool (one per Graph and
// Context), reached through r.pool.

// outbox is one Context's list of requests completed elsewhere; its
// head sits alone on its cache line (cacheLine, counter.go).
type outbox struct {
	_    [cacheLine]byte
	head atomic.Pointer[Request]
	_    [cacheLine - 8]byte
	bh   *aio.BH
}

func (o *outbox) init(p *Pool) { o.bh = p.ctx.NewBH(p.runOutbox) }

// CompleteRemote completes r with err on r's own Context, from any
// goroutine or thread: r joins its Context's outbox and the Context's
// owner completes it (as CompleteLater does) from a bottom half. The
// node's in-flight count stays raised until then, so a drain waits for
// it. No lock, map or allocation. REQUIRES: exactly once per submission,
// in place of Complete; r is not used by the caller afterwards.
func (r *Request) CompleteRemote(err error) {
	r.err = err
	if o := &r.pool.out; pushStack(&o.head, r) {
		o.bh.Schedule()
	}
}

// pushStack pushes r on an MPSC stack (Treiber push) and reports whether
// the stack was empty: the pusher then schedules the consumer, which is
// already scheduled (or running) for a non-empty one.
func pushStack(head *atomic.Pointer[Request], r *Request) bool {
	for {
		old := head.Load()
		r.next = old
		if head.CompareAndSwap(old, r) {
			return old == nil
		}
	}
}

// runOutbox moves the outbox's requests, in arrival order, to the pool's
// deferred completions and runs those: runDeferred is re-entrant, so a
// completion callback may wait (and poll) for another one of them.
func (p *Pool) runOutbox() {
	r := takeStack(&p.out.head)
	for r != nil {
		next := r.next
		p.pushDeferred(r) // keeps r.err
		r = next
	}
	p.runDeferred()
}

// takeStack empties an MPSC stack and returns its requests in push order.
func takeStack(head *atomic.Pointer[Request]) *Request {
	r := head.Swap(nil)
	var rev *Request
	for r != nil {
		next := r.next
		r.next = rev
		rev, r = r, next
	}
	return rev
}

// Inbox hands requests submitted on other Contexts to the one Context
// that owns a driver's state. The zero Inbox is ready for Attach.
type Inbox struct {
	head atomic.Pointer[Request]
	_    [cacheLine - 8]byte
	bh   atomic.Pointer[aio.BH]
	fn   func(*Request)
}

// Attach makes ctx the Inbox's consumer: fn runs there for each request
// pushed, in arrival order. fn must not wait for another request of the
// same batch. Call it while nothing is pushed (the node is drained, or
// not yet open).
func (b *Inbox) Attach(ctx *aio.Context, fn func(*Request)) {
	b.fn = fn
	b.bh.Store(ctx.NewBH(b.run))
}

// Detach stops the consumer (the node is drained: nothing is pushed or
// waiting). Safe on an Inbox that was never attached.
func (b *Inbox) Detach() {
	if bh := b.bh.Swap(nil); bh != nil {
		bh.Delete()
	}
}

// Push queues r for the consumer's Context. Any goroutine; no lock, no
// allocation.
func (b *Inbox) Push(r *Request) {
	if pushStack(&b.head, r) {
		b.bh.Load().Schedule()
	}
}

func (b *Inbox) run() {
	r := takeStack(&b.head)
	for r != nil {
		next := r.next
		r.next = nil
		b.fn(r)
		r = next
	}
}
