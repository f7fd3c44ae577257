package blocktest

import (
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/internal/invariants"
)

// DefaultReadDelay is how long a test-driver read sleeps: long enough that
// the request is still in flight when a drain's polling phase starts, so
// the drain (not the quiesce phase) must wait for it.
const DefaultReadDelay = 100 * time.Microsecond

// Driver is the counting test driver of drain.md §2.1.
//
//   - DrainBegin/DrainEnd count in DrainCount; with SleepInDrainBegin,
//     DrainBegin also holds the node's in-flight count for ~100µs on the
//     node's Context, so the drain has to wait for it.
//   - Close panics unless the node is drained (D14).
//   - Read sets HasRead, sleeps ReadDelay on a timer of the request's
//     Context and, with ReadHop, bounces through a bottom half on that other
//     Context before it completes on its own (a cross-Context hop).
//   - Every other operation succeeds at once; block status reports "not
//     allocated" for the whole range. ChangeBackingFile (for
//     Graph.DropIntermediate) records the name and succeeds; the optional
//     operations (compressed writes, VM state, check) are unsupported.
//
// Counters are atomics: the main Context writes them, tests read them.
type Driver struct {
	block.DriverBase

	Size              int64
	ReadDelay         time.Duration // 0: DefaultReadDelay; <0: no delay
	ReadHop           *aio.Context
	SleepInDrainBegin bool

	DrainCount atomic.Int32
	HasRead    atomic.Bool
	Reads      atomic.Int64
	Writes     atomic.Int64
	Closed     atomic.Bool

	// OnDrainBegin, if set, runs inside DrainBegin (after the count); it
	// must obey the quiesce-phase rules (no polling, no graph change).
	OnDrainBegin func(n *block.Node)
	// OnClose runs inside Close.
	OnClose func(n *block.Node)
	// CloseErr is what Close returns (a failed write-back on close).
	CloseErr error

	// BackingFile is the last name ChangeBackingFile recorded (main
	// Context); BackingFileChanges counts the calls.
	BackingFile        string
	BackingFileChanges atomic.Int32
}

// NewDriver returns a test driver for a node of size bytes.
func NewDriver(size int64) *Driver { return &Driver{Size: size} }

func (d *Driver) DrainBegin(n *block.Node) {
	d.DrainCount.Add(1)
	if d.SleepInDrainBegin {
		n.IncInFlight()
		ctx := n.Context()
		ctx.Schedule(func() { ctx.AfterFunc(100*time.Microsecond, n.DecInFlight) })
	}
	if d.OnDrainBegin != nil {
		d.OnDrainBegin(n)
	}
}

func (d *Driver) DrainEnd(n *block.Node) {
	if d.DrainCount.Add(-1) < 0 {
		invariants.Failf("blocktest: drain end without begin on %s", n.Name())
	}
}

func (d *Driver) Close(n *block.Node) error {
	if n.Quiesce() <= 0 || d.DrainCount.Load() <= 0 {
		invariants.Failf("blocktest: node %s closed outside a drained section (D14)", n.Name())
	}
	d.Closed.Store(true)
	if d.OnClose != nil {
		d.OnClose(n)
	}
	return d.CloseErr
}

func (d *Driver) Length(*block.Node) (int64, error) { return d.Size, nil }

// ChangeBackingFile records the new backing file name and succeeds (like
// QEMU's test driver, so DropIntermediate works on its nodes).
func (d *Driver) ChangeBackingFile(_ *block.Node, backingFile string, _ *block.Node) error {
	d.BackingFile = backingFile
	d.BackingFileChanges.Add(1)
	return nil
}

func (d *Driver) Read(r *block.Request) {
	d.HasRead.Store(true)
	d.Reads.Add(1)
	delay := d.ReadDelay
	if delay == 0 {
		delay = DefaultReadDelay
	}
	if delay < 0 && d.ReadHop == nil {
		r.CompleteLater(nil)
		return
	}
	ctx := r.Context()
	finish := func() {
		if hop := d.ReadHop; hop != nil {
			hop.Schedule(func() { ctx.Schedule(func() { r.Complete(nil) }) })
			return
		}
		r.Complete(nil)
	}
	if delay < 0 {
		finish()
		return
	}
	ctx.AfterFunc(delay, finish)
}

func (d *Driver) Write(r *block.Request) {
	d.Writes.Add(1)
	r.CompleteLater(nil)
}

func (d *Driver) WriteZeroes(r *block.Request) { r.CompleteLater(nil) }
func (d *Driver) Discard(r *block.Request)     { r.CompleteLater(nil) }
func (d *Driver) Flush(r *block.Request)       { r.CompleteLater(nil) }
func (d *Driver) Truncate(r *block.Request) {
	d.Size = r.Off
	r.CompleteLater(nil)
}

func (d *Driver) BlockStatus(r *block.Request) {
	r.Status = 0 // not allocated
	r.Pnum = r.Len
	r.CompleteLater(nil)
}

// Null is a driver whose requests complete from a bottom half with no work:
// reads leave the buffer alone (or zero it with ReadZeroes).
type Null struct {
	block.DriverBase
	Size       int64
	ReadZeroes bool
}

func (d *Null) Length(*block.Node) (int64, error) { return d.Size, nil }
func (d *Null) Read(r *block.Request) {
	if d.ReadZeroes {
		for _, b := range r.Iov {
			clear(b)
		}
	}
	r.CompleteLater(nil)
}
func (d *Null) Write(r *block.Request)       { r.CompleteLater(nil) }
func (d *Null) WriteZeroes(r *block.Request) { r.CompleteLater(nil) }
func (d *Null) Flush(r *block.Request)       { r.CompleteLater(nil) }

// Forward is a pass-through driver for filter and "top" nodes: requests go
// to one child, so they are counted on both levels. The child is Edge if
// set (safe from any Context: the edge's child pointer is atomic), else the
// child edge named ChildName, else the oldest child edge — those two look
// at the edge list, which belongs to the main Context, so use them only for
// requests submitted there.
type Forward struct {
	block.DriverBase
	ChildName string
	Size      int64
	Edge      atomic.Pointer[block.Child]
	// BeforeForward, if set, runs for each request before it is forwarded.
	BeforeForward func(r *block.Request)
}

func (d *Forward) edge(n *block.Node) *block.Child {
	if c := d.Edge.Load(); c != nil {
		return c
	}
	if d.ChildName != "" {
		return n.ChildNamed(d.ChildName)
	}
	return n.OldestChild()
}

func (d *Forward) Length(n *block.Node) (int64, error) {
	if d.Size > 0 {
		return d.Size, nil
	}
	if c := d.edge(n); c != nil && c.Node() != nil {
		return c.Node().Length()
	}
	return 0, nil
}

func (d *Forward) forward(r *block.Request) {
	if d.BeforeForward != nil {
		d.BeforeForward(r)
	}
	c := d.edge(r.Node())
	if c == nil || c.Node() == nil {
		r.CompleteLater(&block.Error{Kind: block.Io, Op: r.Op, Node: r.Node().Name(), Offset: r.Off, Err: syscall.ENOMEDIUM})
		return
	}
	Forwarded(c, r)
}

func (d *Forward) Read(r *block.Request)        { d.forward(r) }
func (d *Forward) Write(r *block.Request)       { d.forward(r) }
func (d *Forward) Flush(r *block.Request)       { d.forward(r) }
func (d *Forward) Discard(r *block.Request)     { d.forward(r) }
func (d *Forward) WriteZeroes(r *block.Request) { d.forward(r) }
func (d *Forward) BlockStatus(r *block.Request) { d.forward(r) }

// WriteCompressed passes compressed writes through (the child decides
// whether it supports them).
func (d *Forward) WriteCompressed(r *block.Request) { d.forward(r) }

// Forwarded sends a copy of r through c and completes r when it completes.
func Forwarded(c *block.Child, r *block.Request) {
	s := r.Sub()
	s.Op, s.Flags, s.Off, s.Len, s.Iov = r.Op, r.Flags, r.Off, r.Len, r.Iov
	c.Submit(s, forwardDone{})
}

type forwardDone struct{}

func (forwardDone) RequestDone(s *block.Request, err error) {
	r := s.Parent
	r.Status, r.Pnum = s.Status, s.Pnum
	r.Complete(err)
}
