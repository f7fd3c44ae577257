package block

import (
	"errors"
	"fmt"
	"syscall"
)

// Reopener is implemented by drivers that can change between read-only
// and read-write while their node stays open (QEMU's reopen of the
// read-only flag, bdrv_reopen_set_read_only). Both run on the main Context
// inside a subtree drained section of the node, so nothing is in flight on
// it or below it.
//
// Reopen(n, false) — to read-write — runs after the node's non-backing
// children were made writable and before the node itself is: the driver
// brings up what it
// skipped or froze because the node was read-only (a read-write file
// descriptor and a writer's locks, metadata write paths) and fails if the
// image cannot be written (another process holds it, an unknown feature,
// a corrupt image). On error it leaves the driver read-only.
//
// Reopen(n, true) — to read-only — runs while the node is still
// writable, before its
// children become read-only: the driver writes back everything it holds
// (metadata, bitmaps, the dirty bit it set) and syncs, so the image is
// clean on disk; afterwards it writes nothing. On error the node stays
// read-write.
type Reopener interface {
	Reopen(n *Node, readOnly bool) error
}

// ErrReopenUnsupported is wrapped by SetReadOnly when a driver of the
// subtree cannot change its read-only flag while open.
var ErrReopenUnsupported = errors.New("the driver cannot change between read-only and read-write while open")

// SetReadOnly makes n read-only or read-write while it stays open (QEMU's
// bdrv_reopen_set_read_only), inside a subtree drained section of n.
//
// Read-write: the children n reads its own data through (every edge but
// the backing one: the file, a data file, a crypto filter) are made
// read-write first, children before parents, then n's driver reopens and n
// accepts writes. The backing chain below stays as it is, as QEMU's
// backing children stay read-only. If a step fails, the children changed
// so far are made read-only again and the error names the node that
// refused.
//
// Read-only: n's driver writes everything back first, n refuses writes,
// then each such child whose parents are all read-only nodes becomes
// read-only too (a child another writer or a front end still uses stays
// as it is). A node that is already in the requested state is left alone
// (its children too). Marshalled to the main Context.
func (n *Node) SetReadOnly(ro bool) (err error) {
	n.g.Control(func() {
		n.Ref() // the drain polls: keep n alive through it
		n.subtreeDrainedBegin()
		if ro {
			err = n.reopenReadOnly()
		} else {
			err = n.reopenReadWrite()
		}
		n.subtreeDrainedEnd()
		n.unref()
	})
	return err
}

// reopenChildren returns the edges SetReadOnly follows: all but backing.
func (n *Node) reopenChildren() []*Node {
	var out []*Node
	for _, c := range n.children {
		if c.role&RoleBacking != 0 {
			continue
		}
		if ch := c.node.Load(); ch != nil {
			out = append(out, ch)
		}
	}
	return out
}

func (n *Node) reopenReadWrite() error {
	n.g.assertMain()
	if !n.ReadOnly() {
		return nil
	}
	if n.closed {
		return newError(Io, OpOpen, n, 0, syscall.EBADF)
	}
	rp, ok := n.drv.(Reopener)
	if !ok {
		return newError(Unsupported, OpOpen, n, 0, fmt.Errorf("reopen read-write: %w", ErrReopenUnsupported))
	}
	var changed []*Node
	undo := func(err error) error {
		for i := len(changed) - 1; i >= 0; i-- {
			err = errors.Join(err, changed[i].reopenReadOnly())
		}
		return err
	}
	for _, ch := range n.reopenChildren() {
		if !ch.ReadOnly() {
			continue
		}
		if err := ch.reopenReadWrite(); err != nil {
			return undo(err)
		}
		changed = append(changed, ch)
	}
	if err := rp.Reopen(n, false); err != nil {
		return undo(err)
	}
	n.readOnly.Store(false)
	return nil
}

func (n *Node) reopenReadOnly() error {
	n.g.assertMain()
	if n.ReadOnly() {
		return nil
	}
	if n.closed {
		return newError(Io, OpOpen, n, 0, syscall.EBADF)
	}
	rp, ok := n.drv.(Reopener)
	if !ok {
		return newError(Unsupported, OpOpen, n, 0, fmt.Errorf("reopen read-only: %w", ErrReopenUnsupported))
	}
	if err := rp.Reopen(n, true); err != nil {
		return err
	}
	n.readOnly.Store(true)
	var errs []error
	for _, ch := range n.reopenChildren() {
		if ch.ReadOnly() || ch.hasWritableParent() {
			continue
		}
		errs = append(errs, ch.reopenReadOnly())
	}
	return errors.Join(errs...)
}

// hasWritableParent reports a parent that may write through its edge to
// n: a read-write node, or a parent that is not a node (a front end, a
// job). Main Context.
func (n *Node) hasWritableParent() bool {
	for _, c := range n.parents {
		if p := c.parentNode; p == nil || !p.ReadOnly() {
			return true
		}
	}
	return false
}
