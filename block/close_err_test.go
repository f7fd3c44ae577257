package block_test

import (
	"errors"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

// TestCloseErrorReachesCaller: a driver whose Close fails (a metadata
// write-back that hit ENOSPC) must have that error returned by whichever
// call dropped the last reference — Unref, FrontEnd.Close, Detach,
// ReplaceNode — including a child deleted because its parent was. Before
// Close returned an error, each of these reported success.
func TestCloseErrorReachesCaller(t *testing.T) {
	isClose := func(err error) bool {
		var be *block.Error
		return errors.Is(err, syscall.ENOSPC) && errors.As(err, &be) && be.Op == block.OpClose
	}
	failing := func() *blocktest.Driver {
		d := blocktest.NewDriver(64 << 10)
		d.CloseErr = syscall.ENOSPC
		return d
	}

	t.Run("Unref", func(t *testing.T) {
		e := blocktest.NewEnv(t, 0)
		n := e.Open(failing(), block.Options{Name: "n"})
		if err := n.Unref(); !isClose(err) {
			t.Fatalf("Unref = %v, want the close's ENOSPC", err)
		}
	})
	t.Run("UnrefParentDeletesChild", func(t *testing.T) {
		e := blocktest.NewEnv(t, 0)
		p := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "p"})
		c := e.Open(failing(), block.Options{Name: "c"})
		e.Attach(p, c, "file", block.RoleFile)
		if err := c.Unref(); err != nil {
			t.Fatalf("Unref of a still-attached child = %v", err)
		}
		err := p.Unref()
		if !isClose(err) {
			t.Fatalf("Unref of the parent = %v, want the child's close error", err)
		}
		var be *block.Error
		if errors.As(err, &be); be.Node != "c" {
			t.Fatalf("error names node %q, want c", be.Node)
		}
	})
	t.Run("FrontEndClose", func(t *testing.T) {
		e := blocktest.NewEnv(t, 0)
		n := e.Open(failing(), block.Options{Name: "n"})
		fe := e.G.NewFrontEnd(block.FrontEndOptions{Name: "fe"})
		if err := fe.Insert(n); err != nil {
			t.Fatal(err)
		}
		n.Unref()
		if err := fe.Close(); !isClose(err) {
			t.Fatalf("FrontEnd.Close = %v, want the close's ENOSPC", err)
		}
	})
	t.Run("Detach", func(t *testing.T) {
		e := blocktest.NewEnv(t, 0)
		p := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "p"})
		c := e.Open(failing(), block.Options{Name: "c"})
		edge := e.Attach(p, c, "file", block.RoleFile)
		c.Unref()
		if err := e.G.Detach(edge); !isClose(err) {
			t.Fatalf("Detach = %v, want the close's ENOSPC", err)
		}
		if err := p.Unref(); err != nil {
			t.Fatalf("parent Unref = %v, want nil (error already reported once)", err)
		}
	})
	t.Run("ReplaceNode", func(t *testing.T) {
		e := blocktest.NewEnv(t, 0)
		old := e.Open(failing(), block.Options{Name: "old"})
		nw := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "new"})
		p := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "p"})
		e.Attach(p, old, "file", block.RoleFile)
		if err := e.G.ReplaceNode(old, nw); err != nil {
			t.Fatalf("ReplaceNode = %v", err)
		}
		if err := old.Unref(); !isClose(err) {
			t.Fatalf("Unref after replace = %v, want the close's ENOSPC", err)
		}
		nw.Unref()
		p.Unref()
	})
}
