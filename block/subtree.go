package block

import "github.com/ringblk/ringblk/internal/invariants"

// Subtree drains, built from single-node quiesces (drain.md §1.6, our
// semantics): a subtree drain of S quiesces every node reachable from S
// through child edges once (each node once even in a diamond), with no
// excluded edge, then waits once until none of them — nor any of their
// ancestors — is busy.
//
// Coverage keeps the counts exact across graph edits. coverage(X) is the
// sum of subtreeOwn over the distinct nodes that are X or an ancestor of X:
// the number of subtree drains whose subtree contains X. Every node holds
// exactly coverage(X) quiesces on account of subtree drains. When an edge
// changes, setChild measures coverage before and after for the nodes below
// the old and the new child and begins (before the edge is published) or
// ends (after) the difference. So a node attached under a subtree-drained
// parent is quiesced before any request can reach it through the edge, and
// detaching undoes exactly what attaching did — there is no "drain saldo"
// to get wrong, and nothing here polls.

// subtree returns n and every node below it, each once, parents before
// children.
func (n *Node) subtree() []*Node {
	out := []*Node{n}
	seen := map[*Node]bool{n: true}
	for i := 0; i < len(out); i++ {
		for _, c := range out[i].children {
			if x := c.node.Load(); x != nil && !seen[x] {
				seen[x] = true
				out = append(out, x)
			}
		}
	}
	return out
}

// coverage returns how many subtree drains cover n.
func (n *Node) coverage() int {
	sum := 0
	seen := map[*Node]bool{}
	stack := []*Node{n}
	for len(stack) > 0 {
		x := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[x] {
			continue
		}
		seen[x] = true
		sum += x.subtreeOwn
		for _, p := range x.parents {
			if p.parentNode != nil {
				stack = append(stack, p.parentNode)
			}
		}
	}
	return sum
}

// coverageChange records coverage before an edge edit and applies the
// difference after it. The zero value (no subtree drain active) does
// nothing.
type coverage struct {
	nodes  []*Node
	counts []int
}

func (cv *coverage) before(old, new *Node) {
	seen := map[*Node]bool{}
	for _, root := range []*Node{old, new} {
		if root == nil {
			continue
		}
		for _, x := range root.subtree() {
			if !seen[x] {
				seen[x] = true
				cv.nodes = append(cv.nodes, x)
				cv.counts = append(cv.counts, x.coverage())
			}
		}
	}
}

// applyGains quiesces nodes whose coverage grew and remembers the losses.
func (cv *coverage) applyGains() {
	for i, x := range cv.nodes {
		d := x.coverage() - cv.counts[i]
		cv.counts[i] = d
		for ; d > 0; d-- {
			x.quiesceBegin()
		}
	}
}

func (cv *coverage) applyLosses() {
	for i, x := range cv.nodes {
		for d := cv.counts[i]; d < 0; d++ {
			x.quiesceEnd()
		}
	}
}

// SubtreeDrainedBegin drains n and everything below it (see above). Main
// Context (marshalled).
func (n *Node) SubtreeDrainedBegin() { n.g.Control(n.subtreeDrainedBegin) }

// SubtreeDrainedEnd ends one SubtreeDrainedBegin of n. It never polls.
func (n *Node) SubtreeDrainedEnd() { n.g.Control(n.subtreeDrainedEnd) }

func (n *Node) subtreeDrainedBegin() {
	n.g.assertMain()
	n.g.checkNotQuiescing("a subtree drain")
	if n.g.feCallbacks > 0 {
		n.g.checkSelfWait(n.subtree(), "a subtree drain of node "+n.name)
	}
	if n.subtreeOwn == 0 {
		n.g.subtreeOwners++
	}
	n.subtreeOwn++
	for _, x := range n.subtree() {
		x.quiesceBegin()
	}
	n.g.waitWhile(func() bool {
		for _, x := range n.subtree() {
			if x.pending() {
				return true
			}
		}
		return false
	})
}

func (n *Node) subtreeDrainedEnd() {
	n.g.assertMain()
	n.g.checkNotQuiescing("a subtree drained end")
	if n.subtreeOwn <= 0 {
		invariants.Failf("block: subtree drained end without begin on %s", n.name)
	}
	nodes := n.subtree()
	n.subtreeOwn--
	if n.subtreeOwn == 0 {
		n.g.subtreeOwners--
	}
	for _, x := range nodes {
		x.quiesceEnd()
	}
}
