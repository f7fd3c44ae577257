// Package txn runs transactions: a list of actions applied all or none,
// QEMU's QMP 'transaction' (seed 001, seed 002).
//
// Run calls Prepare on each action in order. If every Prepare succeeds it
// calls Commit on each, in order; if one fails it calls Abort on that one
// and on every action prepared before it, in reverse order. Clean then runs
// on every action whose Prepare was called, in reverse order, whatever
// happened. An action that must hold new I/O away from its node — every
// action that looks at or changes image content — begins a drained section
// in Prepare and ends it in Clean, so nothing reaches the node between the
// check and the change (seed 001); Drained keeps that bookkeeping.
//
// Run holds no lock of its own and no Context's: each drained section
// waits on the main Context (block.Node.DrainedBegin), so two actions on
// nodes of one IOThread, or of different IOThreads, never wait for a lock
// the other holds (seed 002, drain.md Q2).
//
// Everything that can fail belongs in Prepare: Commit's error is reported
// (joined into Run's result) but the transaction counts as applied, since
// the actions committed before it cannot be undone. Actions from other
// packages (job starts, dirty bitmaps) implement Action without importing
// this package.
package txn

import (
	"errors"
	"fmt"

	"github.com/ringblk/ringblk/block"
)

// Action is one step of a transaction.
type Action interface {
	// Prepare checks and stages the change; it may begin drained
	// sections. On error the transaction aborts (and Abort and Clean are
	// still called on this action, so they must cope with a partial
	// Prepare).
	Prepare() error
	// Commit makes the staged change visible. Called only when every
	// action prepared.
	Commit() error
	// Abort undoes whatever Prepare did, leaving images and graph as
	// they were.
	Abort()
	// Clean releases what Prepare took (drained sections, references),
	// after Commit or Abort.
	Clean()
}

// Error is the error of a transaction that did not apply: the action that
// failed (its index in the list) and why. Nothing changed.
type Error struct {
	Index int
	Err   error
}

func (e *Error) Error() string {
	return fmt.Sprintf("transaction action %d: %v", e.Index, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// CommitError is the error of a transaction that applied but one of whose
// commits reported a failure.
type CommitError struct {
	Errs []error
}

func (e *CommitError) Error() string {
	return fmt.Sprintf("transaction applied, but a commit failed: %v", errors.Join(e.Errs...))
}

func (e *CommitError) Unwrap() []error { return e.Errs }

// Run applies actions as one transaction. It returns nil when all applied,
// an *Error when a Prepare failed (nothing changed), a *CommitError when
// all applied but a Commit reported an error.
func Run(actions []Action) error {
	prepared := 0 // actions whose Prepare was called
	var failed error
	for i, a := range actions {
		prepared = i + 1
		if err := a.Prepare(); err != nil {
			failed = &Error{Index: i, Err: err}
			break
		}
	}
	var commitErrs []error
	if failed == nil {
		for i, a := range actions {
			if err := a.Commit(); err != nil {
				commitErrs = append(commitErrs, fmt.Errorf("action %d: %w", i, err))
			}
		}
	} else {
		for i := prepared - 1; i >= 0; i-- {
			actions[i].Abort()
		}
	}
	for i := prepared - 1; i >= 0; i-- {
		actions[i].Clean()
	}
	if failed != nil {
		return failed
	}
	if len(commitErrs) > 0 {
		return &CommitError{Errs: commitErrs}
	}
	return nil
}

// Drained records the drained sections an action began, so Clean ends
// exactly those, once. The zero value is ready; not safe for concurrent
// use (an action runs on one goroutine).
type Drained struct {
	nodes []*block.Node
}

// Begin begins a drained section of n (with a reference held until End,
// so a node the action replaces stays alive for its section).
func (d *Drained) Begin(n *block.Node) {
	n.Graph().Control(func() {
		n.Ref()
	})
	n.DrainedBegin()
	d.nodes = append(d.nodes, n)
}

// Holds reports whether the action holds a section of n.
func (d *Drained) Holds(n *block.Node) bool {
	for _, x := range d.nodes {
		if x == n {
			return true
		}
	}
	return false
}

// End ends every section Begin began, newest first, and drops their
// references. It returns the errors of closes the dropped references
// caused.
func (d *Drained) End() error {
	var errs []error
	for i := len(d.nodes) - 1; i >= 0; i-- {
		n := d.nodes[i]
		n.DrainedEnd()
		if err := n.Unref(); err != nil {
			errs = append(errs, err)
		}
	}
	d.nodes = nil
	return errors.Join(errs...)
}
