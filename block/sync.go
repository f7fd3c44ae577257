package block

import (
	"fmt"
	"sync/atomic"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/internal/invariants"
)

// Synchronous convenience calls. Each runs one request on a Context — the
// node's home Context for node calls, the front end's for front-end calls —
// and waits for it the way the caller is allowed to:
//
//   - on that Context's owner: WaitWhile on its own loop (a nested wait,
//     fine inside a callback or BH);
//   - on the main Context's owner: WaitWhile on main, woken by Kick;
//   - on a goroutine that owns no Context: a channel.
//
// They allocate; they are for control paths, tools and tests. A coroutine
// must not call them (it would wait while holding its Context's token).

type syncWait struct {
	g      *Graph
	done   atomic.Bool
	ch     chan struct{}
	err    error
	status Status
	pnum   int64
}

func (s *syncWait) RequestDone(r *Request, err error) {
	s.err, s.status, s.pnum = err, r.Status, r.Pnum
	s.done.Store(true)
	if s.ch != nil {
		close(s.ch)
	}
	s.g.main.Kick()
}

// runSync runs one request on ctx and waits for it (see above). Two
// mistakes are refused instead of hanging:
//
//   - ctx has stopped (or stops before the request completes): the call
//     returns an error wrapping aio.ErrStopped and naming the Context;
//   - the caller runs on another IOThread (its owner, or one of its
//     coroutines): it panics naming both Contexts, because blocking there
//     stops that IOThread, and two IOThreads doing it to each other
//     deadlock. Use the asynchronous calls (Queue) or go via the main
//     Context.
func (g *Graph) runSync(ctx *aio.Context, n *Node, fill func(r *Request), submit func(p *Pool, d Done)) *syncWait {
	if g.main.InContext() {
		g.checkNotQuiescing("a synchronous request")
	}
	s := &syncWait{g: g}
	notDone := func() bool { return !s.done.Load() }
	switch {
	case ctx.InContext():
		submit(g.Pool(ctx), s)
		ctx.WaitWhile(notDone)
		return s
	case stopped(ctx):
		return s.stoppedErr(ctx, n, fill)
	case g.main.InContext():
		ctx.Schedule(func() { submit(g.Pool(ctx), s) })
		// An exiting Context kicks every main Context, so a ctx that
		// stops before it ran the request ends this wait too.
		g.main.WaitWhile(func() bool { return !s.done.Load() && !stopped(ctx) })
	default:
		if cc := aio.CallerContext(); cc != nil {
			invariants.Failf("block: synchronous request to Context %s from Context %s"+
				" (its owner or a coroutine): an IOThread must not block waiting for another Context (two doing so deadlock); use the asynchronous Queue calls or go via the main Context", ctx.Name(), cc.Name())
		}
		s.ch = make(chan struct{})
		ctx.Schedule(func() { submit(g.Pool(ctx), s) })
		select {
		case <-s.ch:
		case <-ctx.Stopped():
		}
	}
	if !s.done.Load() {
		return s.stoppedErr(ctx, n, fill)
	}
	return s
}

func stopped(ctx *aio.Context) bool {
	select {
	case <-ctx.Stopped():
		return true
	default:
		return false
	}
}

// stoppedErr makes s report that ctx stopped before the request ran.
func (s *syncWait) stoppedErr(ctx *aio.Context, n *Node, fill func(r *Request)) *syncWait {
	var r Request // only to learn the operation and offset
	fill(&r)
	out := &syncWait{g: s.g, err: newError(Io, r.Op, n, r.Off, fmt.Errorf("Context %s has stopped: %w", ctx.Name(), aio.ErrStopped))}
	return out
}

func (n *Node) syncReq(fill func(r *Request)) *syncWait {
	return n.g.runSync(n.Context(), n, fill, func(p *Pool, d Done) {
		r := p.Get()
		fill(r)
		n.Submit(r, d)
	})
}

// ReadAt reads len(p) bytes at off (io.ReaderAt).
func (n *Node) ReadAt(p []byte, off int64) (int, error) {
	s := n.syncReq(func(r *Request) { r.Op, r.Off = OpRead, off; r.SetBuf(p) })
	if s.err != nil {
		return 0, s.err
	}
	return len(p), nil
}

// WriteAt writes p at off (io.WriterAt).
func (n *Node) WriteAt(p []byte, off int64) (int, error) {
	s := n.syncReq(func(r *Request) { r.Op, r.Off = OpWrite, off; r.SetBuf(p) })
	if s.err != nil {
		return 0, s.err
	}
	return len(p), nil
}

// Readv reads into iov at off.
func (n *Node) Readv(iov [][]byte, off int64) error {
	return n.syncReq(func(r *Request) { r.Op, r.Off, r.Iov, r.Len = OpRead, off, iov, iovLen(iov) }).err
}

// Writev writes iov at off.
func (n *Node) Writev(iov [][]byte, off int64, flags Flags) error {
	return n.syncReq(func(r *Request) { r.Op, r.Off, r.Iov, r.Len, r.Flags = OpWrite, off, iov, iovLen(iov), flags }).err
}

// Flush makes completed writes durable (a read-only node succeeds at once).
func (n *Node) Flush() error { return n.syncReq(func(r *Request) { r.Op = OpFlush }).err }

// Discard discards [off, off+length).
func (n *Node) Discard(off, length int64) error {
	return n.syncReq(func(r *Request) { r.Op, r.Off, r.Len = OpDiscard, off, length }).err
}

// WriteZeroes zeroes [off, off+length).
func (n *Node) WriteZeroes(off, length int64, flags Flags) error {
	return n.syncReq(func(r *Request) { r.Op, r.Off, r.Len, r.Flags = OpWriteZeroes, off, length, flags }).err
}

// Truncate sets the node's length.
func (n *Node) Truncate(size int64) error {
	return n.syncReq(func(r *Request) { r.Op, r.Off = OpTruncate, size }).err
}

// BlockStatus describes the range at off: its status and how many bytes
// from off share it (0 at or past the end, or for a zero length).
func (n *Node) BlockStatus(off, length int64) (Status, int64, error) {
	s := n.syncReq(func(r *Request) { r.Op, r.Off, r.Len = OpBlockStatus, off, length })
	return s.status, s.pnum, s.err
}

// IsAllocated reports whether this node decides the content at off
// (rather than a backing node), and for how many bytes.
func (n *Node) IsAllocated(off, length int64) (bool, int64, error) {
	st, pnum, err := n.BlockStatus(off, length)
	return st&StatusAllocated != 0, pnum, err
}

func (fe *FrontEnd) syncReq(fill func(r *Request)) *syncWait {
	ctx := fe.Context()
	q := fe.Queue(ctx)
	return fe.g.runSync(ctx, fe.Root(), fill, func(p *Pool, d Done) {
		r := p.Get()
		fill(r)
		q.Submit(r, d)
	})
}

// ReadAt reads len(p) bytes at off through the front end.
func (fe *FrontEnd) ReadAt(p []byte, off int64) (int, error) {
	s := fe.syncReq(func(r *Request) { r.Op, r.Off = OpRead, off; r.SetBuf(p) })
	if s.err != nil {
		return 0, s.err
	}
	return len(p), nil
}

// WriteAt writes p at off through the front end.
func (fe *FrontEnd) WriteAt(p []byte, off int64) (int, error) {
	s := fe.syncReq(func(r *Request) { r.Op, r.Off = OpWrite, off; r.SetBuf(p) })
	if s.err != nil {
		return 0, s.err
	}
	return len(p), nil
}

// Readv reads into iov at off through the front end.
func (fe *FrontEnd) Readv(iov [][]byte, off int64) error {
	return fe.syncReq(func(r *Request) { r.Op, r.Off, r.Iov, r.Len = OpRead, off, iov, iovLen(iov) }).err
}

// Writev writes iov at off through the front end.
func (fe *FrontEnd) Writev(iov [][]byte, off int64, flags Flags) error {
	return fe.syncReq(func(r *Request) { r.Op, r.Off, r.Iov, r.Len, r.Flags = OpWrite, off, iov, iovLen(iov), flags }).err
}

// Flush flushes through the front end.
func (fe *FrontEnd) Flush() error { return fe.syncReq(func(r *Request) { r.Op = OpFlush }).err }

// Discard discards through the front end.
func (fe *FrontEnd) Discard(off, length int64) error {
	return fe.syncReq(func(r *Request) { r.Op, r.Off, r.Len = OpDiscard, off, length }).err
}

// WriteZeroes zeroes through the front end.
func (fe *FrontEnd) WriteZeroes(off, length int64, flags Flags) error {
	return fe.syncReq(func(r *Request) { r.Op, r.Off, r.Len, r.Flags = OpWriteZeroes, off, length, flags }).err
}

// Truncate truncates the root node through the front end.
func (fe *FrontEnd) Truncate(size int64) error {
	return fe.syncReq(func(r *Request) { r.Op, r.Off = OpTruncate, size }).err
}
