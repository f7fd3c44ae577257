package job

import (
	"sync/atomic"
	"syscall"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
)

// filter is the node a job inserts above its source (QEMU's mirror_top,
// copy-before-write and stream's copy-on-read filter): every parent of
// the source goes through it, so the job sees the guest's writes. Reads,
// flushes and block status pass through; writes, write-zeroes and
// discards pass through unless the job's hook takes them:
//
//   - locks: the write waits for (and holds off) the job's copies of the
//     same range (stream);
//   - cbw: copy-before-write — the old data of clusters a backup has not
//     copied yet goes to the target first (backup);
//   - active: write-blocking mirror — the write goes to the source and
//     then to the target before it completes (mirror, copy-mode
//     write-blocking).
//
// A filter that writes the job's target (cbw, active) does so through an
// edge of its own to the target, not the job's: it is then a parent of the
// target, so a drained section of the target quiesces the filter and the
// guest's front ends above it, and waits for their writes (D3). Through
// the job's edge the guest's writes reached a drained target: draining it
// pauses the job, which says nothing of requests the guest drives
// (docs/spec/drain.md, bug class 31).
type filter struct {
	block.DriverBase
	edge   atomic.Pointer[block.Child]
	target atomic.Pointer[block.Child] // the job's target, for cbw and active
	locks  *ranges
	ud     unlockDone // the Done of lock-holding forwards (no allocation)
	cbw    *blockCopy
	active atomic.Pointer[Mirror]
	// drv is QEMU's driver name for this filter ("mirror_top",
	// "copy-before-write", "copy-on-read"), for queries.
	drv string
}

// FilterDriver returns QEMU's name for the filter's driver: what
// query-named-block-nodes reports as its "drv".
func (f *filter) FilterDriver() string { return f.drv }

func newLockingFilter(l *ranges) *filter {
	f := &filter{locks: l, drv: "copy-on-read"}
	f.ud.l = l
	return f
}

func (f *filter) Length(n *block.Node) (int64, error) {
	if c := f.edge.Load(); c != nil && c.Node() != nil {
		return c.Node().Length()
	}
	return 0, nil
}

func (f *filter) child(r *block.Request) *block.Child {
	c := f.edge.Load()
	if c == nil || c.Node() == nil {
		r.CompleteLater(&block.Error{Kind: block.Io, Op: r.Op, Node: r.Node().Name(), Offset: r.Off, Err: syscall.ENOMEDIUM})
		return nil
	}
	return c
}

func (f *filter) forward(r *block.Request) {
	if c := f.child(r); c != nil {
		forwardTo(c, r, fwdDone{})
	}
}

func forwardTo(c *block.Child, r *block.Request, d block.Done) {
	s := r.Sub()
	s.Op, s.Flags, s.Off, s.Len, s.Iov = r.Op, r.Flags, r.Off, r.Len, r.Iov
	c.Submit(s, d)
}

type fwdDone struct{}

func (fwdDone) RequestDone(s *block.Request, err error) {
	r := s.Parent
	r.Status, r.Pnum = s.Status, s.Pnum
	r.Complete(err)
}

// unlockDone releases the range lock held for the forwarded write (its id
// rides in the sub-request's Tag) and completes the parent.
type unlockDone struct{ l *ranges }

func (d *unlockDone) RequestDone(s *block.Request, err error) {
	d.l.unlock(s.Tag)
	s.Parent.Complete(err)
}

func (f *filter) Read(r *block.Request)            { f.forward(r) }
func (f *filter) Flush(r *block.Request)           { f.forward(r) }
func (f *filter) BlockStatus(r *block.Request)     { f.forward(r) }
func (f *filter) WriteCompressed(r *block.Request) { f.modify(r) }
func (f *filter) Write(r *block.Request)           { f.modify(r) }
func (f *filter) WriteZeroes(r *block.Request)     { f.modify(r) }
func (f *filter) Discard(r *block.Request)         { f.modify(r) }

func (f *filter) modify(r *block.Request) {
	c := f.child(r)
	if c == nil {
		return
	}
	if bc := f.cbw; bc != nil && bc.needsCopy(r.Off, r.Len) {
		tc := f.target.Load()
		r.Context().Go(func(co *aio.Co) { r.Complete(bc.copyBeforeWrite(co, c, tc, r)) })
		return
	}
	if m := f.active.Load(); m != nil && r.Op != block.OpDiscard && r.Op != block.OpWriteCompressed {
		tc := f.target.Load()
		r.Context().Go(func(co *aio.Co) { r.Complete(m.activeWrite(co, c, tc, r)) })
		return
	}
	if l := f.locks; l != nil {
		if id, ok := l.tryLock(r.Off, r.Off+r.Len); ok {
			s := r.Sub()
			s.Op, s.Flags, s.Off, s.Len, s.Iov, s.Tag = r.Op, r.Flags, r.Off, r.Len, r.Iov, id
			c.Submit(s, &f.ud)
			return
		}
		r.Context().Go(func(co *aio.Co) {
			id := l.lock(co, r.Off, r.Off+r.Len)
			err := coForward(co, c, r)
			l.unlock(id)
			r.Complete(err)
		})
		return
	}
	forwardTo(c, r, fwdDone{})
}

// coWait is a Done that wakes a coroutine.
type coWait struct {
	co   *aio.Co
	done bool
	err  error
}

func (w *coWait) RequestDone(_ *block.Request, err error) {
	w.done, w.err = true, err
	w.co.Wake()
}

func (w *coWait) wait() error {
	for !w.done {
		w.co.Yield()
	}
	return w.err
}

// coForward sends a copy of r through c from a coroutine and waits.
func coForward(co *aio.Co, c *block.Child, r *block.Request) error {
	w := &coWait{co: co}
	s := r.Sub()
	s.Op, s.Flags, s.Off, s.Len, s.Iov = r.Op, r.Flags, r.Off, r.Len, r.Iov
	c.Submit(s, w)
	return w.wait()
}

// coIO runs one request on c from a coroutine and waits.
func coIO(co *aio.Co, g *block.Graph, c *block.Child, op block.Op, off int64, buf []byte, n int64) error {
	w := &coWait{co: co}
	r := g.Pool(co.Context()).Get()
	r.Op, r.Off = op, off
	if buf != nil {
		r.SetBuf(buf)
	} else {
		r.Len = n
	}
	c.Submit(r, w)
	return w.wait()
}

// insertFilter opens f as a node named name above n and points every
// parent of n (not jobs) at it. A non-nil target becomes the filter's
// second child, "target" (the edge its cbw and active writes use). Main
// Context.
func insertFilter(g *block.Graph, n *block.Node, f *filter, name string, target *block.Node) (*block.Node, error) {
	fn, err := g.Open(f, block.Options{Name: name, Context: n.Context()})
	if err != nil {
		return nil, err
	}
	c, err := g.Attach(fn, n, block.ChildSpec{Name: "file", Role: block.RoleFiltered | block.RolePrimary})
	if err != nil {
		fn.Unref()
		return nil, err
	}
	f.edge.Store(c)
	if target != nil {
		tc, err := g.Attach(fn, target, block.ChildSpec{Name: "target"})
		if err != nil {
			fn.Unref()
			return nil, err
		}
		f.target.Store(tc)
	}
	replace := g.ReplaceNode
	if f.drv == "copy-before-write" {
		// A fleecing target is an overlay of the source: its backing
		// edge stays on the source (block.Graph.InsertAbove).
		replace = g.InsertAbove
	}
	if err := replace(n, fn); err != nil {
		fn.Unref()
		return nil, err
	}
	return fn, nil
}

// removeFilter points the filter's parents at to (its child, or a
// mirror's target) and drops the filter.
func removeFilter(g *block.Graph, fn *block.Node, to *block.Node) error {
	err := g.ReplaceNode(fn, to)
	if uerr := fn.Unref(); err == nil {
		err = uerr
	}
	return err
}
