package block

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/internal/invariants"
)

// Graph is the registry of all nodes and front ends that share one main
// Context: QEMU's global node list plus its main loop. Every graph change,
// every drain and every Context move runs on the main Context; the exported
// control methods marshal themselves there when called from another
// goroutine (Graph.Control).
type Graph struct {
	main *aio.Context

	// Owned by the main Context.
	first, last   *Node // all nodes in creation order (drain-all walks it)
	nodeCount     int
	drainAllCount int // active DrainAllBegin sections
	subtreeOwners int // nodes with subtreeOwn > 0; 0 skips coverage work
	frontEnds     []*FrontEnd
	names         map[string]*Node
	// quiescing > 0 while a quiesce-phase callback runs (drain.go).
	quiescing int
	// feCallbacks counts front-end completion callbacks running on the
	// main Context (drain.go, checkSelfWait).
	feCallbacks int

	// Settle watchdog of Context moves (move.go).
	settleLimit    time.Duration
	settleReport   func(error)
	settleOverruns int
	settleLast     error
	// closeErr gathers the errors of driver Close calls made by node
	// deletions since the innermost collectClose began.
	closeErr error

	pendingAllFn func() bool // g.pendingAll, bound once
	// drainAllBeginFn and drainAllEndFn are the method values, bound once
	// so that DrainAllBegin/End do not allocate a closure per call.
	drainAllBeginFn, drainAllEndFn func()

	// drainWaiters counts drains in their wait phase; batching (Queue.Plug)
	// is off while it is non-zero. Read by any Context.
	drainWaiters atomic.Int32

	pools struct {
		sync.Mutex
		m map[*aio.Context]*Pool
	}
}

// NewGraph returns an empty graph controlled by main, which must be the
// Context created with aio.Options{Main: true} (it is the only Context that
// may wait for conditions driven by other Contexts).
func NewGraph(main *aio.Context) *Graph {
	g := &Graph{main: main, names: make(map[string]*Node)}
	g.pools.m = make(map[*aio.Context]*Pool)
	g.pendingAllFn = g.pendingAll
	g.drainAllBeginFn, g.drainAllEndFn = g.drainAllBegin, g.drainAllEnd
	return g
}

// Main returns the main Context.
func (g *Graph) Main() *aio.Context { return g.main }

// Control runs fn on the main Context and returns when it has run. On the
// main Context's owner it runs fn directly. It must not be called from a
// request goroutine that holds another Context's run token (that Context
// would stop while the main Context waits for it); use the Co variants of
// the drain calls there.
func (g *Graph) Control(fn func()) {
	if g.main.InContext() {
		fn()
		return
	}
	g.main.Run(fn)
}

func (g *Graph) assertMain() {
	if invariants.Enabled && !g.main.InContext() {
		invariants.Failf("block: graph control call outside the main Context")
	}
}

// Nodes returns the registered nodes in creation order (main Context).
func (g *Graph) Nodes() []*Node {
	var out []*Node
	g.Control(func() {
		for n := g.first; n != nil; n = n.allNext {
			out = append(out, n)
		}
	})
	return out
}

// NodeByName finds a node by its name (main Context).
func (g *Graph) NodeByName(name string) *Node {
	var n *Node
	g.Control(func() { n = g.names[name] })
	return n
}

// Options configure a node. Zero values mean: auto-generated name, the main
// Context, byte alignment, no transfer limit, read-write.
type Options struct {
	Name        string
	Context     *aio.Context // home Context; nil: the main Context
	ReadOnly    bool
	Align       int   // request alignment in bytes, a power of two (RMW below it)
	MaxTransfer int64 // longest request handed to the driver; a multiple of Align
	// MaxWriteZeroes, when set, replaces MaxTransfer for write-zeroes
	// requests (QEMU's max-pwrite-zeroes, which max-transfer does not
	// bound); a multiple of Align.
	MaxWriteZeroes int64
	// IgnoreDiscard completes discards at once without the driver
	// (QEMU's discard=ignore).
	IgnoreDiscard bool
}

// Open creates a node around drv: it registers the node (born quiesced once
// per active drain-all section, D12), calls drv.Open and returns the node
// with one reference held by the caller.
func (g *Graph) Open(drv Driver, opts Options) (n *Node, err error) {
	if opts.Align == 0 {
		opts.Align = 1
	}
	if opts.Align < 0 || opts.Align&(opts.Align-1) != 0 {
		return nil, newError(InvalidFormat, OpOpen, nil, 0, fmt.Errorf("alignment %d is not a power of two", opts.Align))
	}
	if opts.MaxTransfer < 0 || opts.MaxTransfer%int64(opts.Align) != 0 {
		return nil, newError(InvalidFormat, OpOpen, nil, 0, fmt.Errorf("max transfer %d is not a multiple of the alignment %d", opts.MaxTransfer, opts.Align))
	}
	if opts.MaxWriteZeroes < 0 || opts.MaxWriteZeroes%int64(opts.Align) != 0 {
		return nil, newError(InvalidFormat, OpOpen, nil, 0, fmt.Errorf("max write-zeroes %d is not a multiple of the alignment %d", opts.MaxWriteZeroes, opts.Align))
	}
	g.Control(func() { n, err = g.open(drv, opts) })
	return n, err
}

func (g *Graph) open(drv Driver, opts Options) (*Node, error) {
	g.assertMain()
	g.checkNotQuiescing("opening a node")
	n := &Node{g: g, drv: drv, name: opts.Name, opts: opts, refs: 1}
	n.readOnly.Store(opts.ReadOnly)
	if n.name == "" {
		n.name = fmt.Sprintf("#node%d", g.nodeCount)
	}
	if _, dup := g.names[n.name]; dup {
		return nil, newError(InvalidFormat, OpOpen, nil, 0, fmt.Errorf("duplicate node name %q", n.name))
	}
	ctx := opts.Context
	if ctx == nil {
		ctx = g.main
	}
	n.ctx.Store(ctx)
	n.pendingFn = n.pending
	n.drainedBeginFn = n.drainedBegin
	n.drainedEndFn = n.drainedEnd
	g.nodeCount++
	g.names[n.name] = n
	g.link(n)
	// Born quiesced: a drain-all section that is already active must cover
	// the new node too, or requests could reach it before drain_all_end.
	for i := 0; i < g.drainAllCount; i++ {
		n.quiesceBegin()
	}
	if err := drv.Open(n); err != nil {
		n.refs = 0
		n.closed = true // the driver never opened: skip its hooks
		g.delete(n)
		return nil, err
	}
	return n, nil
}

func (g *Graph) link(n *Node) {
	n.allPrev = g.last
	if g.last != nil {
		g.last.allNext = n
	} else {
		g.first = n
	}
	g.last = n
}

func (g *Graph) unlink(n *Node) {
	if n.allPrev != nil {
		n.allPrev.allNext = n.allNext
	} else {
		g.first = n.allNext
	}
	if n.allNext != nil {
		n.allNext.allPrev = n.allPrev
	} else {
		g.last = n.allPrev
	}
	n.allPrev, n.allNext = nil, nil
}

// collectClose runs fn (main Context) and returns the errors of the driver
// Close calls made by the node deletions fn caused. Every exported call that
// can drop a last reference goes through it, so a failed write-back on close
// reaches the caller that closed, never just a log.
func (g *Graph) collectClose(fn func()) error {
	g.assertMain()
	outer := g.closeErr
	g.closeErr = nil
	fn()
	err := g.closeErr
	g.closeErr = outer
	return err
}

// delete closes n inside its own drained section (D14), detaches its
// children, releases the quiesces it still holds from drain-all sections
// and drops it from the registry.
func (g *Graph) delete(n *Node) {
	g.assertMain()
	if n.refs != 0 || len(n.parents) != 0 {
		invariants.Failf("block: deleting node %s with refs=%d parents=%d", n.name, n.refs, len(n.parents))
	}
	if n.subtreeOwn != 0 {
		invariants.Failf("block: deleting node %s inside its own subtree drain", n.name)
	}
	if !n.closed {
		n.drainedBegin()
		if err := n.drv.Close(n); err != nil {
			g.closeErr = errors.Join(g.closeErr, newError(Io, OpClose, n, 0, err))
		}
		for len(n.children) > 0 {
			g.detach(n.children[0])
		}
		n.drainedEnd()
		n.closed = true
	}
	for len(n.children) > 0 {
		g.detach(n.children[0])
	}
	// What is left are quiesces from drain-all sections (and, for a node
	// that held its own subtree drain, those): end them now so drain-all
	// end will not find the node and its counts stay balanced.
	for n.quiesce.Load() > 0 {
		n.quiesceEnd()
	}
	if g.names[n.name] == n {
		delete(g.names, n.name)
	}
	g.unlink(n)
}

// Pool returns the request pool of ctx, creating it on first use. Call it
// once per Context at set-up, not per request.
func (g *Graph) Pool(ctx *aio.Context) *Pool {
	g.pools.Lock()
	defer g.pools.Unlock()
	p := g.pools.m[ctx]
	if p == nil {
		p = newPool(g, ctx)
		g.pools.m[ctx] = p
	}
	return p
}
