package block

import (
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/internal/invariants"
)

// Phase 1 of every drain: quiesce. It never polls, never waits and never
// changes the graph (D6, D7): the callbacks it runs (the driver's drain
// hooks, the parents' DrainedBegin/DrainedEnd, device ops) must not either.
// That rule is asserted in every build: while a quiesce-phase callback runs
// (Graph.quiescing > 0), every graph change, drain, move, wait and
// synchronous call panics with a message naming the rule
// (checkNotQuiescing). The walks are safe even so: edge lists are
// copy-on-write (prepend, remove), and an edge that left the list during
// the walk is skipped.

// quiesceBegin adds one drained section to n. On 0→1 it quiesces every
// parent through its edge (parents first: "stop in parent-to-child order"),
// then calls the driver hook (D2, D5).
func (n *Node) quiesceBegin() {
	if n.quiesce.Add(1) != 1 {
		return
	}
	n.quiesceBeginCallbacks()
}

func (n *Node) quiesceBeginCallbacks() {
	g := n.g
	g.quiescing++
	defer func() { g.quiescing-- }()
	ps := n.parents
	for _, c := range ps {
		if edgeLeft(n, ps, c) {
			continue
		}
		c.parentQuiesceBegin()
	}
	if !n.closed {
		n.drv.DrainBegin(n)
	}
}

// edgeLeft reports whether c, taken from the snapshot ps of n's parent
// list, is no longer a parent edge of n (the list was replaced meanwhile).
func edgeLeft(n *Node, ps []*Child, c *Child) bool {
	cur := n.parents
	if len(cur) == len(ps) && (len(cur) == 0 || &cur[0] == &ps[0]) {
		return false
	}
	for _, x := range cur {
		if x == c {
			return false
		}
	}
	return true
}

// checkNotQuiescing panics if a quiesce-phase callback is running: what
// (a graph change, a drain, a move, a wait) is forbidden there.
func (g *Graph) checkNotQuiescing(what string) {
	if g.quiescing > 0 {
		invariants.Failf("block: %s inside a drained begin/end callback; "+
			"quiesce-phase rule: drain hooks, parent drain callbacks and device ops must not change the graph, drain, move, wait or poll (drain.md D6, D7)", what)
	}
}

// quiesceEnd removes one drained section. On 1→0 it calls the driver hook
// first, then unquiesces the parents ("re-enable in child-to-parent
// order"). It never polls (D7): whatever the callbacks re-enable runs in a
// later poll of its Context.
func (n *Node) quiesceEnd() {
	q := n.quiesce.Add(-1)
	if q < 0 {
		invariants.Failf("block: drained end without begin on node %s", n.name) // D1
	}
	if q != 0 {
		return
	}
	n.quiesceEndCallbacks()
}

func (n *Node) quiesceEndCallbacks() {
	g := n.g
	g.quiescing++
	defer func() { g.quiescing-- }()
	if !n.closed {
		n.drv.DrainEnd(n)
	}
	ps := n.parents
	for _, c := range ps {
		if c.quiescedParent && !edgeLeft(n, ps, c) {
			c.parentQuiesceEnd()
		}
	}
}

// pending is phase 2's condition for one node: it or any owner above it is
// still busy. It is evaluated from the live graph every time (D8) and
// recurses up through node parents.
func (n *Node) pending() bool {
	if n.inFlight.load() > 0 {
		return true
	}
	for _, c := range n.parents {
		if c.class.DrainedPoll(c) {
			return true
		}
	}
	return false
}

// waitWhile is the single polling point of a drain (phase 2). Batching is
// off while it waits, so Contexts hand deferred submissions to the ring
// instead of holding them for a batch end (D18).
func (g *Graph) waitWhile(cond func() bool) {
	g.assertMain()
	g.checkNotQuiescing("a drain's wait")
	if !cond() {
		return // idle: no poll at all
	}
	g.drainWaiters.Add(1)
	// Batching is off on every Context with requests in this graph while
	// the drain waits, including plugged sections opened before it began
	// (seed 003): what they prepared is submitted, not held until their
	// owner unplugs.
	ctxs := g.disableBatching()
	g.main.WaitWhile(cond)
	for _, c := range ctxs {
		c.EnableBatching()
	}
	g.drainWaiters.Add(-1)
}

// disableBatching calls DisableBatching on the Context of every request
// pool of the graph and returns them (for the matching EnableBatching).
func (g *Graph) disableBatching() []*aio.Context {
	g.pools.Lock()
	defer g.pools.Unlock()
	ctxs := make([]*aio.Context, 0, len(g.pools.m))
	for c := range g.pools.m {
		c.DisableBatching()
		ctxs = append(ctxs, c)
	}
	return ctxs
}

// DrainedBegin opens a drained section on n: afterwards no request is in
// flight on n or any node or front end above it, front ends above it queue
// new requests, jobs above it are paused, and that stays so until the
// matching DrainedEnd (D3, D4). Children of n are not drained. Marshalled to
// the main Context; from a request goroutine use DrainedBeginCo. Called
// from a completion callback of a front end above n running on the main
// Context it panics (it would wait for that callback's own request), as it
// does from a quiesce-phase callback (drain hooks, DrainedBegin/End of a
// ChildClass, device ops).
func (n *Node) DrainedBegin() { n.g.Control(n.drainedBeginFn) }

// DrainedEnd closes one drained section of n. It never polls (D7).
func (n *Node) DrainedEnd() { n.g.Control(n.drainedEndFn) }

// Drain is DrainedBegin followed by DrainedEnd.
func (n *Node) Drain() {
	n.g.Control(func() {
		n.drainedBegin()
		n.drainedEnd()
	})
}

func (n *Node) drainedBegin() {
	n.g.assertMain()
	n.g.checkNotQuiescing("a drain")
	if n.g.feCallbacks > 0 {
		n.g.checkSelfWait([]*Node{n}, "a drain of node "+n.name)
	}
	n.quiesceBegin()
	start := time.Now()
	n.g.waitWhile(n.pendingFn)
	n.drains.Add(1)
	n.drainNs.Add(int64(time.Since(start)))
	if invariants.Enabled {
		n.checkDrained()
	}
}

func (n *Node) drainedEnd() {
	n.g.assertMain()
	n.g.checkNotQuiescing("a drained end")
	n.quiesceEnd()
}

// DrainAllBegin drains every node of the graph: each node is quiesced once
// (and through its child edges once per drained child), then a single wait
// runs until no node and no front end or job is busy. Nodes opened during
// the section are born quiesced; nodes deleted during it release their
// quiesces (D12).
func (g *Graph) DrainAllBegin() { g.Control(g.drainAllBeginFn) }

// DrainAllEnd ends one DrainAllBegin.
func (g *Graph) DrainAllEnd() { g.Control(g.drainAllEndFn) }

func (g *Graph) drainAllBegin() {
	g.assertMain()
	g.checkNotQuiescing("a drain-all")
	if g.feCallbacks > 0 {
		for _, fe := range g.frontEnds {
			if fe.root.Load() != nil {
				fe.checkSelfWait("a drain-all")
			}
		}
	}
	g.drainAllCount++
	for n := g.first; n != nil; n = n.allNext {
		n.quiesceBegin()
	}
	g.waitWhile(g.pendingAllFn)
	if invariants.Enabled {
		for n := g.first; n != nil; n = n.allNext {
			if n.inFlight.load() != 0 {
				invariants.Failf("block: node %s busy after drain-all", n.name)
			}
		}
	}
}

func (g *Graph) drainAllEnd() {
	g.assertMain()
	g.checkNotQuiescing("a drain-all end")
	if g.drainAllCount <= 0 {
		invariants.Failf("block: drain-all end without begin")
	}
	for n := g.first; n != nil; n = n.allNext {
		n.quiesceEnd()
	}
	g.drainAllCount--
}

// pendingAll is drain-all's condition. It checks each node's own count and
// only its non-node owners: node parents are in the list themselves, so the
// evaluation is O(nodes + edges), not a walk up from every node.
func (g *Graph) pendingAll() bool {
	for n := g.first; n != nil; n = n.allNext {
		if n.inFlight.load() > 0 {
			return true
		}
		for _, c := range n.parents {
			if c.class.Kind() != NodeParent && c.class.DrainedPoll(c) {
				return true
			}
		}
	}
	return false
}

// DrainAllCount returns the number of active drain-all sections.
func (g *Graph) DrainAllCount() (k int) {
	g.Control(func() { k = g.drainAllCount })
	return k
}

// checkDrained asserts D3 for n: it and every ancestor idle, every parent
// edge quiescing its parent.
func (n *Node) checkDrained() {
	if n.quiesce.Load() <= 0 {
		invariants.Failf("block: node %s not quiesced inside its drained section", n.name)
	}
	if f := n.inFlight.load(); f != 0 {
		invariants.Failf("block: node %s has %d requests in flight after drained begin", n.name, f)
	}
	for _, c := range n.parents {
		if !c.quiescedParent {
			invariants.Failf("block: parent edge %s not quiesced", c)
		}
		if busyAfterDrain(c) {
			invariants.Failf("block: parent of %s still busy after drained begin", n.name)
		}
	}
}

// busyAfterDrain is checkDrained's test of parent edge c: whether its owner,
// or anything above it, has work in flight. A front end's count may be
// raised for an instant by a submitter on another Context that then parks
// its request (Queue.Submit counts before it checks the quiesce): not work
// in flight, at any height above the drained node. So front ends are
// skipped, and a node parent is checked by its own count and, recursively,
// its parents, instead of its class's DrainedPoll (pending, which counts
// the front ends above it: CI saw a mirror's Prepare fail on a guest
// front end above the mirror filter).
func busyAfterDrain(c *Child) bool {
	switch c.class.Kind() {
	case FrontEndParent:
		return false
	case NodeParent:
		p := c.parentNode
		if p.inFlight.load() != 0 {
			return true
		}
		for _, pc := range p.parents {
			if busyAfterDrain(pc) {
				return true
			}
		}
		return false
	}
	return c.class.DrainedPoll(c)
}

// Drains from a request goroutine (a coroutine holding a Context's run
// token) hand over to the main Context (D11): the coroutine raises n's
// in-flight count for the hand-over, schedules the drain on the main
// Context and parks; the main Context drops the count, runs the drain, and
// wakes the coroutine, which nothing else may resume.

// DrainedBeginCo is DrainedBegin for a coroutine.
func (n *Node) DrainedBeginCo(co *aio.Co) { n.g.handOver(co, n, n.drainedBegin) }

// DrainedEndCo is DrainedEnd for a coroutine.
func (n *Node) DrainedEndCo(co *aio.Co) { n.g.handOver(co, n, n.drainedEnd) }

// SubtreeDrainedBeginCo is SubtreeDrainedBegin for a coroutine.
func (n *Node) SubtreeDrainedBeginCo(co *aio.Co) { n.g.handOver(co, n, n.subtreeDrainedBegin) }

// SubtreeDrainedEndCo is SubtreeDrainedEnd for a coroutine.
func (n *Node) SubtreeDrainedEndCo(co *aio.Co) { n.g.handOver(co, n, n.subtreeDrainedEnd) }

// DrainAllBeginCo is DrainAllBegin for a coroutine.
func (g *Graph) DrainAllBeginCo(co *aio.Co) { g.handOver(co, nil, g.drainAllBegin) }

// DrainAllEndCo is DrainAllEnd for a coroutine.
func (g *Graph) DrainAllEndCo(co *aio.Co) { g.handOver(co, nil, g.drainAllEnd) }

func (g *Graph) handOver(co *aio.Co, n *Node, fn func()) {
	if n != nil {
		n.inFlight.inc() // a drain starting meanwhile waits for this one
	}
	co.RunOn(g.main, func() {
		if n != nil {
			n.inFlight.dec() // on main, about to drain: no kick needed
		}
		fn()
	})
}

// A drain called from a front end's completion callback on the main
// Context would wait for that callback's own request: the front end counts
// a request until its callback has returned, and the callback cannot
// return while the drain waits on the same thread. That is bug class 1 of
// the spec (a wait for oneself); it is refused with a panic, before
// anything was quiesced, as the IOThread variant is (Control from an
// IOThread panics). Queue.finish counts the callbacks running on main in
// FrontEnd.mainCallbacks and Graph.feCallbacks; both belong to the main
// Context, and the checks cost nothing while no such callback runs.

// checkSelfWait panics if a drain of nodes (and their ancestors) would wait
// for a front end whose completion callback is running below the caller.
func (g *Graph) checkSelfWait(nodes []*Node, what string) {
	if g.feCallbacks == 0 {
		return
	}
	seen := map[*Node]bool{}
	stack := append([]*Node(nil), nodes...)
	for len(stack) > 0 {
		x := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[x] {
			continue
		}
		seen[x] = true
		for _, c := range x.parents {
			if c.parentNode != nil {
				stack = append(stack, c.parentNode)
			} else if fe, ok := c.owner.(*FrontEnd); ok && c.class.Kind() == FrontEndParent {
				fe.checkSelfWait(what)
			}
		}
	}
}

// checkSelfWait panics if fe's completion callback is running on the main
// Context below the caller.
func (fe *FrontEnd) checkSelfWait(what string) {
	if fe.mainCallbacks > 0 {
		invariants.Failf("block: %s from a completion callback of front end %s"+
			" on the main Context would wait for that callback's own request forever; drain from a bottom half or after the callback returned", what, quote(fe.name))
	}
}
