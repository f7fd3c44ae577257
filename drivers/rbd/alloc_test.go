//go:build rbd

package rbd_test

import (
	"testing"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

// TestRBDZeroAllocs: 4 KiB writes and reads at QD32 through the driver
// (one cgo call to submit, completions reaped from the eventfd in
// batches) allocate nothing per request in steady state, from the node's
// Context and from an IOThread (inbox and outbox:
// block.Request.CompleteRemote).
func TestRBDZeroAllocs(t *testing.T) {
	s := newImage(t, 16<<20)
	e := blocktest.NewEnv(t, 1)
	n := open(t, e, s, false)
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{})
	defer fe.Close()
	for _, ctx := range []*aio.Context{e.Main, e.IO[0]} {
		t.Run(ctx.Name(), func(t *testing.T) {
			blocktest.CheckQDAllocs(t, e, fe, blocktest.AllocCheck{Ctx: ctx, QD: 32, Span: 16 << 20,
				Warm: 1000, Count: 2000, Budget: 32, Race: raceEnabled, WritesFirst: true})
		})
	}
}

// TestRBDForgottenContextsReleased: Contexts that submitted to the node
// and were then stopped and forgotten are not kept by the driver (its
// per-Context outboxes were a map keyed by Context, never emptied).
func TestRBDForgottenContextsReleased(t *testing.T) {
	s := newImage(t, 16<<20)
	e := blocktest.NewEnv(t, 0)
	n := open(t, e, s, false)
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{})
	defer fe.Close()
	blocktest.CheckContextsReleased(t, e, fe, 4)
}
