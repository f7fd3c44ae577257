package block

import (
	"errors"
	"fmt"
	"time"

	"github.com/ringblk/ringblk/aio"
)

// Move is a Context change in progress: the connected component of a node
// (through children, node parents, front ends and jobs) that must move
// together. Classes add to it from ChildClass.MoveContext; any veto aborts
// the whole move before anything changed (drain.md L1, I22).
type Move struct {
	g       *Graph
	target  *aio.Context
	ignore  *Child
	nodes   []*Node
	seen    map[*Node]bool
	edges   map[*Child]bool
	commits []func()
}

// Target returns the Context the component moves to.
func (m *Move) Target() *aio.Context { return m.target }

// AddNode adds n (and, transitively, everything connected to it).
func (m *Move) AddNode(n *Node) {
	if n != nil && !m.seen[n] {
		m.seen[n] = true
		m.nodes = append(m.nodes, n)
	}
}

// OnCommit registers fn to run when the nodes have switched (owners update
// their own Context pointers there).
func (m *Move) OnCommit(fn func()) { m.commits = append(m.commits, fn) }

// SetContext moves n and everything connected to it to ctx: the component
// is drained under the old Contexts, the old Contexts run the bottom halves
// already scheduled for it (seed 004), the drivers detach and attach, and
// the drains end under the new Context (D17). A parent that forbids the
// move vetoes it with an error and nothing changes. A node that left the
// component while the move waited, and whose last reference was the
// move's own, is deleted at the end; its driver's Close error is returned.
func (n *Node) SetContext(ctx *aio.Context) (err error) {
	n.g.Control(func() {
		cerr := n.g.collectClose(func() { err = n.g.move(n, ctx, nil) })
		err = errors.Join(err, cerr)
	})
	return err
}

// SetContext moves the front end and its root node's component to ctx
// (the front end itself never vetoes its own move).
func (fe *FrontEnd) SetContext(ctx *aio.Context) (err error) {
	fe.g.Control(func() {
		c := fe.root.Load()
		if c == nil || c.node.Load() == nil {
			fe.ctx.Store(ctx)
			return
		}
		cerr := fe.g.collectClose(func() { err = fe.g.move(c.node.Load(), ctx, c) })
		if err == nil {
			fe.ctx.Store(ctx)
		}
		err = errors.Join(err, cerr)
	})
	return err
}

// move switches start's component to ctx. The component is recomputed
// after every poll, never reused across one (drain.md, "moves drain first,
// then look"): draining and settling the old Contexts poll, and callbacks
// and bottom halves run there may attach nodes to the component, detach
// them, or delete them. So a round computes the component from the live
// graph (asking every owner for its veto), quiesces the nodes not yet held
// (taking a reference on each, so none is deleted under the move), and
// waits and settles; the switch happens in the first round that finds no
// new node and nothing in flight, with no poll between that computation
// and the switch.
func (g *Graph) move(start *Node, ctx *aio.Context, ignore *Child) error {
	g.assertMain()
	g.checkNotQuiescing("a Context move")
	var held []*Node // quiesced by this move
	var refd []*Node // the held nodes this move took a reference on
	release := func() {
		for _, x := range held {
			// A node whose deletion was already under way (refs 0, its
			// close polling) may have finished meanwhile: deletion ends
			// every quiesce the node still holds, ours included.
			if !x.closed {
				x.quiesceEnd()
			}
		}
		for _, x := range refd {
			x.unref()
		}
	}
	for round := 0; ; round++ {
		m, err := g.component(start, ctx, ignore)
		if err != nil {
			release()
			return err
		}
		if round == 0 && !m.moving() {
			for _, fn := range m.commits {
				fn()
			}
			return nil
		}
		g.checkSelfWait(m.nodes, "a Context move")
		added := false
		for _, x := range m.nodes {
			if !containsNode(held, x) {
				if x.refs > 0 {
					x.Ref()
					refd = append(refd, x)
				}
				x.quiesceBegin()
				held = append(held, x)
				added = true
			}
		}
		if !added && !anyPending(held) {
			// Computed after the last poll: this is the component.
			m.switchTo()
			release()
			return nil
		}
		g.waitWhile(func() bool { return anyPending(held) })
		// Nothing for these nodes may stay pending on an old Context: run
		// each old Context until it makes no more progress, on its own
		// owner (seed 004; a marker BH would not be a barrier).
		var olds []*aio.Context
		for _, x := range held {
			if old := x.Context(); old != ctx && !containsCtx(olds, old) {
				olds = append(olds, old)
			}
		}
		for _, old := range olds {
			settle(g, old, start)
		}
	}
}

// component computes the nodes that must move with start, asking each
// owner on the way for its veto. It never polls.
func (g *Graph) component(start *Node, ctx *aio.Context, ignore *Child) (*Move, error) {
	m := &Move{g: g, target: ctx, ignore: ignore, seen: map[*Node]bool{}, edges: map[*Child]bool{}}
	if ignore != nil {
		m.edges[ignore] = true
	}
	m.AddNode(start)
	for i := 0; i < len(m.nodes); i++ {
		x := m.nodes[i]
		for _, c := range x.parents {
			if m.edges[c] {
				continue
			}
			m.edges[c] = true
			if err := c.class.MoveContext(c, m); err != nil {
				return nil, err
			}
		}
		for _, c := range x.children {
			m.edges[c] = true
			m.AddNode(c.node.Load())
		}
	}
	return m, nil
}

func (m *Move) moving() bool {
	for _, x := range m.nodes {
		if x.Context() != m.target {
			return true
		}
	}
	return false
}

// switchTo detaches the nodes from their old Contexts, switches them and
// attaches them to the new one, then runs the owners' commits. The nodes
// are quiesced and idle; nothing here polls.
func (m *Move) switchTo() {
	ctx := m.target
	for _, x := range m.nodes {
		if x.Context() != ctx && !x.closed {
			x.drv.DetachContext(x)
		}
	}
	for _, x := range m.nodes {
		if x.Context() != ctx {
			x.ctx.Store(ctx)
			if !x.closed {
				x.drv.AttachContext(x, ctx)
			}
		}
	}
	for _, fn := range m.commits {
		fn()
	}
}

func anyPending(nodes []*Node) bool {
	for _, x := range nodes {
		if x.pending() {
			return true
		}
	}
	return false
}

func containsNode(s []*Node, n *Node) bool {
	for _, x := range s {
		if x == n {
			return true
		}
	}
	return false
}

func containsCtx(s []*aio.Context, c *aio.Context) bool {
	for _, x := range s {
		if x == c {
			return true
		}
	}
	return false
}

// DefaultSettleLimit is the settle watchdog's default bound (see
// Graph.SetSettleWatchdog).
const DefaultSettleLimit = 250 * time.Millisecond

// SetSettleWatchdog configures how a Context move settles an old Context.
// The move polls the old Context until an iteration makes no progress; if it
// is still making progress after limit (a chain of bottom halves that never
// ends, or other users keeping that Context busy without a gap), the
// watchdog reports an error naming the Context to report (nil: only
// counted, see SettleOverruns) and the move goes on: its nodes are drained
// and idle, and the watchdog judged what still runs not to be theirs.
// limit <= 0 restores DefaultSettleLimit. Any goroutine.
func (g *Graph) SetSettleWatchdog(limit time.Duration, report func(error)) {
	if limit <= 0 {
		limit = DefaultSettleLimit
	}
	g.Control(func() { g.settleLimit, g.settleReport = limit, report })
}

// SettleOverruns returns how many times the settle watchdog fired, and the
// last report.
func (g *Graph) SettleOverruns() (n int, last error) {
	g.Control(func() { n, last = g.settleOverruns, g.settleLast })
	return n, last
}

// settle polls c from its own owner, non-blocking, until an iteration makes
// no progress (seed 004: every BH scheduled for the moving nodes, and every
// BH those schedule, has run there). Every Poll runs all BHs scheduled
// before it, so only a chain of BHs that schedule BHs (or other work that
// keeps c busy) needs more than one. The watchdog (SetSettleWatchdog)
// bounds it and reports when it fires.
func settle(g *Graph, c *aio.Context, n *Node) {
	limit := g.settleLimit
	if limit <= 0 {
		limit = DefaultSettleLimit
	}
	busy := false
	polls := 0
	spin := func() {
		deadline := time.Now().Add(limit)
		for c.Poll(false) {
			polls++
			if polls&63 == 0 && time.Now().After(deadline) {
				busy = true
				return
			}
		}
	}
	if c == g.main {
		spin()
	} else {
		c.Run(spin)
	}
	if busy {
		err := newError(Io, OpMove, n, 0, fmt.Errorf("settle watchdog: old Context %s still making progress after %v (%d polls): a chain of bottom halves that never ends, or other work keeping it busy; the move went on", c.Name(), limit, polls))
		g.settleOverruns++
		g.settleLast = err
		if g.settleReport != nil {
			g.settleReport(err)
		}
	}
}
