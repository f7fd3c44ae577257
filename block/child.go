package block

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/ringblk/ringblk/internal/invariants"
)

// Role says what a child is to its parent. A child may have several roles.
type Role uint8

const (
	RoleFile     Role = 1 << iota // the protocol layer under a format node
	RoleBacking                   // copy-on-write backing data
	RolePrimary                   // the main data child (filters, formats)
	RoleFiltered                  // the child a filter passes requests to
)

// ParentKind is the class of an edge's owner.
type ParentKind uint8

const (
	NodeParent     ParentKind = iota + 1 // another node
	FrontEndParent                       // a FrontEnd (device, export, internal user)
	JobParent                            // a job (see the jobs package; blocktest has a minimal one)
)

// ChildClass carries the callbacks of an edge's owner: how to quiesce it,
// whether it is still busy, and whether it follows a Context move. Node
// parents use NodeClass; front ends theirs; jobs implement their own.
//
// DrainedBegin and DrainedEnd must not poll, wait or change the graph (D6,
// D7): graph changes, drains, moves and synchronous calls made from them
// panic, naming the quiesce-phase rule. DrainedPoll must be cheap and
// side-effect free (D8).
type ChildClass interface {
	Kind() ParentKind
	DrainedBegin(c *Child)
	DrainedPoll(c *Child) bool
	DrainedEnd(c *Child)
	// MoveContext is asked, on the main Context, whether the owner allows
	// c's child to move to m.Target(); to allow it, it adds to m whatever
	// must move along (m.AddNode for other nodes, m.OnCommit for its own
	// Context pointer). Returning an error vetoes the whole move. A move
	// asks again after each of its polls (it recomputes the component), so
	// MoveContext must do nothing but answer and add to m.
	MoveContext(c *Child, m *Move) error
}

// Child is an edge from a parent (a node, a front end or a job) to a child
// node (QEMU's BdrvChild). Its graph fields belong to the main Context;
// the child pointer is atomic because requests read it from any Context.
type Child struct {
	name  string
	role  Role
	class ChildClass

	g          *Graph
	parentNode *Node // owner when the class is a node parent
	owner      any   // owner otherwise (front end, job)

	node atomic.Pointer[Node]

	// quiescedParent: this edge currently holds one quiesce of the parent.
	// INVARIANT: quiescedParent == (child.quiesce > 0), except while the
	// child enters or leaves a drained section or the edge is being edited.
	quiescedParent bool
}

// Name returns the edge name ("file", "backing", …).
func (c *Child) Name() string { return c.name }

// Role returns the edge's role.
func (c *Child) Role() Role { return c.role }

// Node returns the child node (nil once detached). Any Context.
func (c *Child) Node() *Node { return c.node.Load() }

// Parent returns the parent node, or nil for front-end and job edges.
func (c *Child) Parent() *Node { return c.parentNode }

// Owner returns the non-node owner (front end, job), or nil.
func (c *Child) Owner() any { return c.owner }

// Class returns the edge's class.
func (c *Child) Class() ChildClass { return c.class }

// QuiescedParent reports whether the edge holds a quiesce of its parent.
func (c *Child) QuiescedParent() bool { return c.quiescedParent }

func (c *Child) String() string {
	p := "?"
	switch {
	case c.parentNode != nil:
		p = c.parentNode.name
	case c.owner != nil:
		p = fmt.Sprintf("%T", c.owner)
	}
	ch := "<nil>"
	if n := c.node.Load(); n != nil {
		ch = n.name
	}
	return p + " -" + c.name + "-> " + ch
}

// nodeClass is the class of edges owned by a node: quiescing the edge
// quiesces the parent (recursion up the graph), and the parent is busy while
// it or any of its ancestors is.
type nodeClass struct{}

// NodeClass is the default class of node-parent edges. Wrap it to hook a
// parent's drain callbacks (as the detach/driver_cb test does).
var NodeClass ChildClass = nodeClass{}

func (nodeClass) Kind() ParentKind                    { return NodeParent }
func (nodeClass) DrainedBegin(c *Child)               { c.parentNode.quiesceBegin() }
func (nodeClass) DrainedPoll(c *Child) bool           { return c.parentNode.pending() }
func (nodeClass) DrainedEnd(c *Child)                 { c.parentNode.quiesceEnd() }
func (nodeClass) MoveContext(c *Child, m *Move) error { m.AddNode(c.parentNode); return nil }

// ChildSpec describes a new edge.
type ChildSpec struct {
	Name  string
	Role  Role
	Class ChildClass // nil: NodeClass (requires a parent node)
	Owner any        // the owner for a non-node class
}

var errCycle = errors.New("block: edge would create a cycle")

// Attach makes child a child of parent (or of spec.Owner when parent is
// nil) and takes a reference on child. If child is drained, the parent
// becomes quiesced through the new edge before the edge is visible (D13);
// nodes under a subtree-drained parent are quiesced likewise. Attach never
// polls — except that a child in another Context than its parent is first
// moved (with its component) to the parent's Context, or else the parent to
// the child's, which drains them. New edges go to the head of both edge
// lists.
func (g *Graph) Attach(parent, child *Node, spec ChildSpec) (c *Child, err error) {
	g.Control(func() { c, err = g.attach(parent, child, spec) })
	return c, err
}

func (g *Graph) attach(parent, child *Node, spec ChildSpec) (*Child, error) {
	g.assertMain()
	g.checkNotQuiescing("attaching an edge")
	if spec.Class == nil {
		spec.Class = NodeClass
	}
	if parent == nil && spec.Class.Kind() == NodeParent {
		return nil, newError(InvalidFormat, OpAttach, child, 0, errors.New("node-parent edge without a parent node"))
	}
	if parent != nil && (parent == child || isAncestor(child, parent)) {
		return nil, newError(InvalidFormat, OpAttach, child, 0, errCycle)
	}
	if parent != nil && parent.Context() != child.Context() {
		// Parent and child share a Context: move the child (and what is
		// connected to it) to the parent, or else the parent to the child.
		if err := g.move(child, parent.Context(), nil); err != nil {
			if err2 := g.move(parent, child.Context(), nil); err2 != nil {
				return nil, err
			}
		}
	}
	c := &Child{g: g, name: spec.Name, role: spec.Role, class: spec.Class, parentNode: parent, owner: spec.Owner}
	child.Ref()
	if parent != nil {
		parent.children = prepend(parent.children, c)
	}
	g.setChild(c, child)
	return c, nil
}

// isAncestor reports whether a is reachable from n by walking parent
// edges, so that making a a child of n would close a cycle.
func isAncestor(a, n *Node) bool {
	for _, p := range n.parents {
		pn := p.parentNode
		if pn != nil && (pn == a || isAncestor(a, pn)) {
			return true
		}
	}
	return false
}

// Detach removes the edge and drops its reference on the child (which may
// delete the child). If the edge held a quiesce of its parent, the parent is
// unquiesced at once (D13). Never polls, except that deleting the child
// drains it for its close. It returns the errors of the Close calls of
// the nodes it deleted.
func (g *Graph) Detach(c *Child) (err error) {
	g.Control(func() { err = g.collectClose(func() { g.detach(c) }) })
	return err
}

func (g *Graph) detach(c *Child) {
	g.assertMain()
	g.checkNotQuiescing("detaching an edge")
	old := c.node.Load()
	if old == nil {
		invariants.Failf("block: detach of a detached edge %s", c)
	}
	g.setChild(c, nil)
	if p := c.parentNode; p != nil {
		p.children = remove(p.children, c)
	}
	old.unref()
}

// ReplaceNode points every parent edge of old (node parents and front ends,
// not jobs) at new instead. Both nodes are drained around the switch, so
// requests in flight to old finish first and none reaches a drained node;
// a parent drained through both is never undrained in between. If the
// moved edges held the last references to old, old is deleted after the
// drained sections end.
func (g *Graph) ReplaceNode(old, new *Node) (err error) {
	return g.replaceNode(old, new, false)
}

// InsertAbove is ReplaceNode for a filter new put above old: an edge whose
// parent new reaches through its other children stays on old instead of
// making a loop (QEMU's should_update_child). A fleecing backup's target
// is an overlay of its source; the copy-before-write filter inserted
// above the source writes into that target, whose backing edge must keep
// pointing at the source itself.
func (g *Graph) InsertAbove(old, new *Node) error {
	return g.replaceNode(old, new, true)
}

func (g *Graph) replaceNode(old, new *Node, skipLoops bool) (err error) {
	g.Control(func() {
		g.checkNotQuiescing("replacing a node")
		cerr := g.collectClose(func() {
			// Our own references for the whole operation (as QEMU's
			// bdrv_replace_node does): when the edges being moved are
			// old's only users, the last one moving away would otherwise
			// delete old inside its drained section.
			old.Ref()
			new.Ref()
			old.drainedBegin()
			new.drainedBegin()
			err = g.replaceNoDrain(old, new, skipLoops)
			new.drainedEnd()
			old.drainedEnd()
			new.unref()
			old.unref()
		})
		err = errors.Join(err, cerr)
	})
	return err
}

func (g *Graph) replaceNoDrain(old, new *Node, skipLoops bool) error {
	g.assertMain()
	var edges []*Child
	for _, c := range old.parents {
		if c.class.Kind() == JobParent {
			continue
		}
		if c.parentNode == new {
			continue // new's own edge to old stays (appending an overlay)
		}
		if c.parentNode != nil && isAncestor(new, c.parentNode) {
			if skipLoops {
				continue
			}
			return newError(InvalidFormat, OpAttach, new, 0, errCycle)
		}
		edges = append(edges, c)
	}
	for _, c := range edges {
		new.Ref()
		g.setChild(c, new)
		old.unref()
	}
	return nil
}

// ReplaceChild points edge c at new (nil detaches it without dropping the
// edge object). The caller keeps both nodes drained as ReplaceNode does.
// It returns the errors of the Close calls of the nodes it deleted.
func (g *Graph) ReplaceChild(c *Child, new *Node) (err error) {
	g.Control(func() {
		g.checkNotQuiescing("replacing a child")
		err = g.collectClose(func() {
			old := c.node.Load()
			if new != nil {
				new.Ref()
			}
			g.setChild(c, new)
			if old != nil {
				old.unref()
			}
		})
	})
	return err
}

// setChild is the one place an edge changes its child (QEMU's
// bdrv_replace_child_noperm). Order:
//  1. if the new child is drained, quiesce the parent through the edge
//     first, so no request can pass the edge into a drained node;
//  2. move the edge between the parent lists;
//  3. apply subtree-drain coverage changes (quiesce the newly covered);
//  4. publish the new child pointer;
//  5. unquiesce what lost coverage;
//  6. if the edge quiesced the parent and the new child is not drained,
//     end that quiesce.
//
// Nothing here polls (D13).
func (g *Graph) setChild(c *Child, new *Node) {
	old := c.node.Load()
	if new != nil && new.quiesce.Load() > 0 && !c.quiescedParent {
		c.parentQuiesceBegin()
	}
	var cov coverage
	if g.subtreeOwners > 0 {
		cov.before(old, new)
	}
	if old != nil {
		old.parents = remove(old.parents, c)
	}
	if new != nil {
		new.parents = prepend(new.parents, c)
	}
	cov.applyGains()
	c.node.Store(new)
	cov.applyLosses()
	if c.quiescedParent && (new == nil || new.quiesce.Load() == 0) {
		c.parentQuiesceEnd()
	}
}

// parentQuiesceBegin and parentQuiesceEnd run the owner's callbacks as
// quiesce-phase callbacks (drain.go: they must not change the graph).
func (c *Child) parentQuiesceBegin() {
	if c.quiescedParent {
		invariants.Failf("block: edge %s already quiesces its parent", c)
	}
	c.quiescedParent = true
	g := c.graph()
	g.quiescing++
	defer func() { g.quiescing-- }()
	c.class.DrainedBegin(c)
}

func (c *Child) parentQuiesceEnd() {
	if !c.quiescedParent {
		invariants.Failf("block: edge %s does not quiesce its parent", c)
	}
	c.quiescedParent = false
	g := c.graph()
	g.quiescing++
	defer func() { g.quiescing-- }()
	c.class.DrainedEnd(c)
}

// graph returns the edge's graph (through its child, or its parent node).
func (c *Child) graph() *Graph { return c.g }

// prepend and remove return new slices (copy on write): a walk over the old
// list, in a drain's quiesce phase, never sees it change under it.
func prepend(s []*Child, c *Child) []*Child {
	out := make([]*Child, len(s)+1)
	out[0] = c
	copy(out[1:], s)
	return out
}

func remove(s []*Child, c *Child) []*Child {
	for i, x := range s {
		if x == c {
			out := make([]*Child, 0, len(s)-1)
			out = append(out, s[:i]...)
			return append(out, s[i+1:]...)
		}
	}
	invariants.Failf("block: edge %s not in list", c)
	return s
}
