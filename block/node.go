package block

import (
	"fmt"
	"time"

	"sync"
	"sync/atomic"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/internal/invariants"
)

// Node is a vertex of the block graph (QEMU's BlockDriverState): a driver,
// its options, a home Context, an in-flight count, a quiesce count, and the
// edges to its parents and children.
//
// Ownership: the graph fields (parents, children, refs, subtreeOwn, closed,
// the registry links) belong to the main Context. inFlight and quiesce are
// atomics that any Context reads; ctx is an atomic pointer because drivers
// read it from request Contexts while the main Context moves the node.
type Node struct {
	inFlight inFlight // first: it gets its own cache line

	// INVARIANT: quiesce >= 0; it counts the drained sections covering the
	// node (its own, one per child edge through which a drained child
	// quiesces it, and those inherited from subtree drains).
	quiesce atomic.Int32

	g    *Graph
	drv  Driver
	name string
	opts Options
	ctx  atomic.Pointer[aio.Context]

	refs     int
	parents  []*Child // edges whose child is this node; newest first
	children []*Child // edges this node owns; newest first
	// subtreeOwn counts active subtree drains started on this node.
	subtreeOwn int
	closed     bool

	// inactive: the node was handed over (migration) and refuses writes
	// with EPERM until Activate (ops.go). Written on the node's Context by
	// the activation requests, read by validation on any Context.
	inactive atomic.Bool
	// readOnly: writes are refused with EACCES. Set from Options.ReadOnly
	// at open; SetReadOnly (reopen.go) changes it on the main Context
	// inside a subtree drained section; read by validation on any Context.
	readOnly atomic.Bool

	allPrev, allNext *Node // registry list, creation order

	// Bound once, so that drains and control calls do not allocate.
	pendingFn      func() bool
	drainedBeginFn func()
	drainedEndFn   func()

	tracked tracker // serialised requests; used only when Align > 1

	// drains and drainNs count the drained sections begun on this node
	// itself and the time their waits took (DrainStats; metrics).
	drains, drainNs atomic.Int64
	// bitmaps: the dirty bitmaps marked by the write paths (bitmaps.go);
	// replaced whole on the main Context, loaded by any Context.
	bitmaps atomic.Pointer[bitmapList]
	// bitmapMu orders ResizeBitmaps with AddBitmap and AttachBitmap, so a
	// bitmap attached while a truncate completes gets the new length
	// (control paths only; marking never takes it).
	bitmapMu sync.Mutex

	// Aux is the driver's or owner's; block never touches it.
	Aux any
}

// DrainStats returns how many drained sections were begun on n itself
// (DrainedBegin, Drain and their Co variants; subtree and drain-all
// sections are not counted) and the total time their waits took. Any
// goroutine.
func (n *Node) DrainStats() (count int64, wait time.Duration) {
	return n.drains.Load(), time.Duration(n.drainNs.Load())
}

// Name returns the node name (unique in its graph).
func (n *Node) Name() string { return n.name }

// Graph returns the graph the node belongs to.
func (n *Node) Graph() *Graph { return n.g }

// Driver returns the node's driver.
func (n *Node) Driver() Driver { return n.drv }

// Options returns the options the node was opened with, ReadOnly as it
// is now (SetReadOnly may have changed it).
func (n *Node) Options() Options {
	o := n.opts
	o.ReadOnly = n.readOnly.Load()
	return o
}

// RaiseAlign raises the node's request alignment to a (a power of two)
// when it is lower, rounding MaxTransfer and MaxWriteZeroes down to a
// multiple of it (at least a): for a driver whose Open learns from the
// image that it needs whole sectors (QEMU's refresh_limits). Only inside
// Driver.Open, before the node is visible to anyone else.
func (n *Node) RaiseAlign(a int) error {
	if a <= 0 || a&(a-1) != 0 {
		return newError(InvalidFormat, OpOpen, n, 0, fmt.Errorf("alignment %d is not a power of two", a))
	}
	if n.opts.Align >= a {
		return nil
	}
	n.opts.Align = a
	round := func(v int64) int64 {
		if v > 0 {
			v = max(v&^int64(a-1), int64(a))
		}
		return v
	}
	n.opts.MaxTransfer = round(n.opts.MaxTransfer)
	n.opts.MaxWriteZeroes = round(n.opts.MaxWriteZeroes)
	return nil
}

// ReadOnly reports whether writes are refused.
func (n *Node) ReadOnly() bool { return n.readOnly.Load() }

// Context returns the node's home Context: where its timers, BHs and
// driver-internal work run. Requests run on the Context that submitted them.
func (n *Node) Context() *aio.Context { return n.ctx.Load() }

// InFlight returns the number of requests in progress on the node.
func (n *Node) InFlight() int64 { return n.inFlight.load() }

// Quiesce returns the number of drained sections covering the node.
func (n *Node) Quiesce() int { return int(n.quiesce.Load()) }

// IncInFlight makes the node look busy to drain until DecInFlight: for
// driver-internal work (a timer that will issue I/O, a BH hop) that a drain
// must wait for. Any Context may call it.
func (n *Node) IncInFlight() { n.inFlight.inc() }

// DecInFlight ends what IncInFlight began and wakes a waiting main Context.
func (n *Node) DecInFlight() {
	n.inFlight.dec()
	n.g.main.Kick()
}

// Length asks the driver for the node's size (main Context or any Context
// the driver allows).
func (n *Node) Length() (int64, error) { return n.drv.Length(n) }

// Refs returns the reference count (main Context).
func (n *Node) Refs() int { return n.refs }

// Ref takes a reference (main Context).
func (n *Node) Ref() {
	n.g.assertMain()
	if n.refs <= 0 {
		invariants.Failf("block: ref of dead node %s", n.name)
	}
	n.refs++
}

// Unref drops a reference; the last one deletes the node: close inside a
// drained section, children detached, registry entry removed. It returns
// the errors of the Close calls of the nodes deleted (n and children whose
// last reference n held). Marshalled to the main Context.
func (n *Node) Unref() (err error) {
	n.g.Control(func() { err = n.g.collectClose(n.unref) })
	return err
}

func (n *Node) unref() {
	n.g.assertMain()
	n.g.checkNotQuiescing("dropping a node reference")
	if n.refs <= 0 {
		invariants.Failf("block: unref of dead node %s", n.name)
	}
	n.refs--
	if n.refs == 0 {
		n.g.delete(n)
	}
}

// Parents returns the node's parent edges, newest first (main Context).
func (n *Node) Parents() []*Child { return append([]*Child(nil), n.parents...) }

// Children returns the node's child edges, newest first (main Context).
func (n *Node) Children() []*Child { return append([]*Child(nil), n.children...) }

// OldestChild returns the child edge attached first, or nil. Unlike
// Children it copies nothing, so a driver may call it on its request path:
// edges change only inside drained sections, when no request is in flight.
func (n *Node) OldestChild() *Child {
	if len(n.children) == 0 {
		return nil
	}
	return n.children[len(n.children)-1]
}

// Child returns the first child edge with role r, or nil.
func (n *Node) Child(r Role) *Child {
	for _, c := range n.children {
		if c.role&r != 0 {
			return c
		}
	}
	return nil
}

// ChildNamed returns the child edge with the given name, or nil.
func (n *Node) ChildNamed(name string) *Child {
	for _, c := range n.children {
		if c.name == name {
			return c
		}
	}
	return nil
}

// Closed reports whether the node was deleted.
func (n *Node) Closed() bool { return n.closed }
