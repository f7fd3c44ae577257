package block_test

import (
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

// TestCheckDrainedFrontEndAboveParent: a front end's count raised for an
// instant by a submitter on another Context (Queue.Submit counts before it
// sees the quiesce and parks the request) is not work in flight, also when
// the front end sits above a parent node of the drained node, as a guest's
// front end above a mirror filter. CI's mirror Prepare failed there ("parent
// of src still busy after drained begin"): checkDrained skipped only front
// ends directly above the node and asked a node parent's class, which
// counts the front ends above it.
func TestCheckDrainedFrontEndAboveParent(t *testing.T) {
	e := blocktest.NewEnv(t, 1)
	n := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "n"})
	p := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "p"})
	e.Attach(p, n, "file", block.RoleFile)
	fe := e.FrontEnd("fe", p, block.FrontEndOptions{})
	n.Unref()
	p.Unref()
	defer fe.Close()

	check := func() (failed any) {
		defer func() { failed = recover() }()
		block.CheckDrained(n)
		return nil
	}
	e.OnMain(func() {
		block.DrainedBeginOnMain(n)
		defer block.DrainedEndOnMain(n)
		block.RaiseFrontEndCount(fe, 1)
		got := check()
		block.RaiseFrontEndCount(fe, -1)
		if got != nil {
			t.Errorf("front end above a parent counted for an instant: %v", got)
		}
	})
}
