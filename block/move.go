package block

import (
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
// move vetoes it with an error and nothing changes.
func (n *Node) SetContext(ctx *aio.Context) (err error) {
	n.g.Control(func() { err = n.g.move(n, ctx, nil) })
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
		if err = fe.g.move(c.node.Load(), ctx, c); err == nil {
			fe.ctx.Store(ctx)
		}
	})
	return err
}

func (g *Graph) move(start *Node, ctx *aio.Context, ignore *Child) error {
	g.assertMain()
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
				return err
			}
		}
		for _, c := range x.children {
			m.edges[c] = true
			m.AddNode(c.node.Load())
		}
	}
	moving := false
	for _, x := range m.nodes {
		if x.Context() != ctx {
			moving = true
		}
	}
	if !moving {
		for _, fn := range m.commits {
			fn()
		}
		return nil
	}

	// Drain the component under the old Contexts.
	for _, x := range m.nodes {
		x.quiesceBegin()
	}
	g.waitWhile(func() bool {
		for _, x := range m.nodes {
			if x.pending() {
				return true
			}
		}
		return false
	})
	// Nothing for these nodes may stay pending on an old Context: run each
	// old Context until it makes no more progress, on its own owner
	// (seed 004; a marker BH would not be a barrier).
	var olds []*aio.Context
	for _, x := range m.nodes {
		if old := x.Context(); old != ctx && !containsCtx(olds, old) {
			olds = append(olds, old)
		}
	}
	for _, old := range olds {
		runUntilIdle(g, old)
	}
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
	for _, x := range m.nodes {
		x.quiesceEnd()
	}
	return nil
}

func containsCtx(s []*aio.Context, c *aio.Context) bool {
	for _, x := range s {
		if x == c {
			return true
		}
	}
	return false
}

// maxSettlePolls bounds runUntilIdle: a Context that other front ends keep
// busy always makes progress. Every Poll runs all BHs scheduled before it,
// so the bound only limits chains of BHs that schedule BHs.
const maxSettlePolls = 64

// runUntilIdle polls c from its own owner, non-blocking, until an iteration
// makes no progress (at most maxSettlePolls times).
func runUntilIdle(g *Graph, c *aio.Context) {
	spin := func() {
		for i := 0; i < maxSettlePolls && c.Poll(false); i++ {
		}
	}
	if c == g.main {
		spin()
		return
	}
	c.Run(spin)
}
