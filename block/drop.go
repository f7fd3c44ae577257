package block

import (
	"errors"
	"syscall"
)

// FilenameUpdater is an optional method of a ChildClass: DropIntermediate
// calls it for each backing edge it re-pointed, after the edge already
// points at base, so the owner can record the new backing file (a format
// node rewrites its header). It runs on the main Context inside the drained
// section DropIntermediate opened and may poll or wait (synchronous I/O);
// an error stops the operation (edges already re-pointed stay so, as in
// QEMU). NodeClass implements it by calling the parent driver's
// BackingFileChanger, and fails with ENOTSUP when the driver has none.
type FilenameUpdater interface {
	UpdateFilename(c *Child, base *Node, backingFile string) error
}

func (nodeClass) UpdateFilename(c *Child, base *Node, backingFile string) error {
	p := c.parentNode
	d, ok := p.drv.(BackingFileChanger)
	if !ok {
		return newError(Unsupported, OpDropIntermediate, p, 0, syscall.ENOTSUP)
	}
	return d.ChangeBackingFile(p, backingFile, base)
}

var errNotInChain = errors.New("base is not below top in the backing chain")

// DropIntermediate removes top and the nodes between it and base from a
// backing chain (QEMU's bdrv_drop_intermediate): every edge that uses top
// as its backing node (role RoleBacking) is pointed at base instead, then
// each such edge's class is told the new backing file through
// FilenameUpdater (backingFile, or if empty base's file name (Node.Filename), or its node name for a driver with no file). The dropped nodes
// go away when their last reference does.
//
// Updating a filename may poll, and polling may run a job's completion,
// which can delete a parent edge of top. So the whole operation runs inside
// a drained section of base, which quiesces top (base is below it), every
// parent of top and every job above them (drain.md §1.10.6, T29): no job
// completes, no request arrives, and the set of edges being updated stays
// the one that was re-pointed. base is checked to be in top's backing
// chain (following RoleBacking, then RoleFiltered edges) after the drain
// began, since the graph may change while the drain waits. Marshalled to
// the main Context.
func (g *Graph) DropIntermediate(top, base *Node, backingFile string) (err error) {
	g.Control(func() {
		cerr := g.collectClose(func() { err = g.dropIntermediate(top, base, backingFile) })
		err = errors.Join(err, cerr)
	})
	return err
}

func (g *Graph) dropIntermediate(top, base *Node, backingFile string) error {
	g.assertMain()
	g.checkNotQuiescing("dropping intermediate nodes")
	// The caller's references may be the edges we are about to move; hold
	// our own until the end, so top (and the chain under it) is deleted
	// only after the drained section, never in the middle of it.
	top.Ref()
	base.Ref()
	base.drainedBegin()
	err := g.dropIntermediateDrained(top, base, backingFile)
	base.drainedEnd()
	top.unref()
	base.unref()
	return err
}

func (g *Graph) dropIntermediateDrained(top, base *Node, backingFile string) error {
	if top == base || !chainContains(top, base) {
		return newError(InvalidFormat, OpDropIntermediate, top, 0, errNotInChain)
	}
	if backingFile == "" {
		// QEMU records the base's filename. A node name would make the
		// overlay's header name a file that does not exist; it is only
		// the fallback for drivers that have no file (test drivers).
		if backingFile = base.Filename(); backingFile == "" {
			backingFile = base.name
		}
	}
	var edges []*Child
	for _, c := range top.parents {
		if c.role&RoleBacking == 0 || c.class.Kind() != NodeParent {
			continue
		}
		if p := c.parentNode; p == base || isAncestor(base, p) {
			return newError(InvalidFormat, OpDropIntermediate, base, 0, errCycle)
		}
		edges = append(edges, c)
	}
	// Re-point first (no poll: base is drained, so each parent stays
	// quiesced through its edge, D13), then update the names.
	for _, c := range edges {
		base.Ref()
		g.setChild(c, base)
		top.unref() // cannot delete top: we hold a reference
	}
	for _, c := range edges {
		if c.node.Load() != base {
			// Detached meanwhile by someone the drain does not stop
			// (another FilenameUpdater): nothing left to update.
			continue
		}
		if u, ok := c.class.(FilenameUpdater); ok {
			if err := u.UpdateFilename(c, base, backingFile); err != nil {
				return err
			}
		}
	}
	return nil
}

// chainContains reports whether base is below top in its backing chain:
// through backing edges, or through the filtered child of a filter.
func chainContains(top, base *Node) bool {
	for n := top; n != nil; {
		c := n.Child(RoleBacking)
		if c == nil {
			c = n.Child(RoleFiltered)
		}
		if c == nil {
			return false
		}
		n = c.node.Load()
		if n == base {
			return true
		}
	}
	return false
}
