package block

import (
	"syscall"

	"github.com/ringblk/ringblk/aio"
)

// Driver turns requests on one node into work: ring operations through aio,
// requests to the node's children through Child, or arithmetic. One Driver
// value serves exactly one node; the caller builds it (block never imports a
// driver) and hands it to Graph.Open.
//
// Threading: Open, Close, Length, the drain hooks and the Context hooks run
// on the main Context. The request methods run on the Context that submitted
// the request (r.Context()); any Context may submit to any node, so request
// methods must only touch per-request state, atomics, or state they guard
// themselves. Each request method must complete r exactly once, with
// r.Complete on r.Context() or r.CompleteLater; completing inside the call is
// allowed.
//
// Embed DriverBase to get the defaults for everything a driver does not do.
type Driver interface {
	// Open is called once, before the node is visible to anyone else. It
	// may attach children with Graph.Attach. An error closes nothing: the
	// node is dropped.
	Open(n *Node) error
	// Close is called exactly once, inside a drained section that the close
	// path opened itself (D14): n.Quiesce() > 0 and no request is in flight.
	// Children still attached afterwards are detached by block. An error
	// (write-back of cached metadata failed, the file's close failed) is
	// returned to whoever dropped the last reference: Node.Unref,
	// Graph.Detach, FrontEnd.Remove or Close, ReplaceNode. The node is
	// gone either way; the driver frees what it holds before returning.
	Close(n *Node) error

	Read(r *Request)        // vectored read of r.Len bytes into r.Iov at r.Off
	Write(r *Request)       // vectored write; r.Flags may carry FUA
	Flush(r *Request)       // make completed writes durable
	Discard(r *Request)     // advisory: the range may read back as anything
	WriteZeroes(r *Request) // the range reads back as zeroes; MayUnmap allows holes
	BlockStatus(r *Request) // set r.Status and r.Pnum (≤ r.Len) for the range at r.Off
	Truncate(r *Request)    // set the length to r.Off

	// Length reports the node's size in bytes.
	Length(n *Node) (int64, error)

	// DrainBegin and DrainEnd run on the 0→1 and 1→0 transitions of the
	// node's quiesce count (D2). They must not poll, wait or change the
	// graph (D6; block panics naming the quiesce-phase rule if they try);
	// they may start asynchronous work that holds the node's in-flight
	// count (Node.IncInFlight), which the drain then waits for.
	DrainBegin(n *Node)
	DrainEnd(n *Node)

	// DetachContext runs while the node is drained, before it leaves its
	// old Context; it must cancel or finish anything it scheduled there.
	// AttachContext runs after the switch; work it needs on the new Context
	// goes through ctx.Run or ctx.Schedule.
	DetachContext(n *Node)
	AttachContext(n *Node, ctx *aio.Context)
}

// DriverBase supplies defaults: reads, writes, write-zeroes and truncate are
// unsupported, flush and discard succeed at once, every block is reported
// allocated data, the hooks do nothing.
type DriverBase struct{}

func (DriverBase) Open(*Node) error  { return nil }
func (DriverBase) Close(*Node) error { return nil }
func (DriverBase) Read(r *Request)   { r.Complete(r.unsupported()) }
func (DriverBase) Write(r *Request)  { r.Complete(r.unsupported()) }
func (DriverBase) Flush(r *Request)  { r.Complete(nil) }
func (DriverBase) Discard(r *Request) {
	r.Complete(nil)
}
func (DriverBase) WriteZeroes(r *Request) { r.Complete(r.unsupported()) }
func (DriverBase) BlockStatus(r *Request) {
	r.Status = StatusData | StatusAllocated
	r.Pnum = r.Len
	r.Complete(nil)
}
func (DriverBase) Truncate(r *Request) { r.Complete(r.unsupported()) }
func (DriverBase) Length(n *Node) (int64, error) {
	return 0, newError(Unsupported, OpLength, n, 0, syscall.ENOTSUP)
}
func (DriverBase) DrainBegin(*Node)                  {}
func (DriverBase) DrainEnd(*Node)                    {}
func (DriverBase) DetachContext(*Node)               {}
func (DriverBase) AttachContext(*Node, *aio.Context) {}

// Status describes a range for OpBlockStatus.
type Status uint8

const (
	// StatusData: the range holds data at this node (it reads as what was
	// written).
	StatusData Status = 1 << iota
	// StatusZero: the range reads as zeroes.
	StatusZero
	// StatusAllocated: this node (not a backing node) decides the content.
	StatusAllocated
)
