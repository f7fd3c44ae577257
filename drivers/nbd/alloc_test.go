package nbd_test

import (
	"testing"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	nbdsrv "github.com/ringblk/ringblk/nbd"
)

// servedFrontEnd serves a fresh image with our server and opens a client
// node with a front end on an Env with iothreads IOThreads.
func servedFrontEnd(t *testing.T, iothreads int) (*blocktest.Env, *block.FrontEnd) {
	path, _ := image(t)
	uri := serve(t, path, nbdsrv.ExportOptions{Name: ""})
	e := blocktest.NewEnv(t, iothreads)
	n := open(t, e, uri, false, block.Options{})
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{})
	t.Cleanup(func() { fe.Close() })
	return e, fe
}

// TestClientZeroAllocs: 4 KiB reads and writes at QD16 through the client
// (and our server, in the same process) allocate nothing per request in
// steady state, from the node's Context and from an IOThread (whose
// requests go through the driver's inbox and come back through the
// IOThread's outbox, block.Request.CompleteRemote).
func TestClientZeroAllocs(t *testing.T) {
	e, fe := servedFrontEnd(t, 1)
	for _, ctx := range []*aio.Context{e.Main, e.IO[0]} {
		t.Run(ctx.Name(), func(t *testing.T) {
			blocktest.CheckQDAllocs(t, e, fe, blocktest.AllocCheck{Ctx: ctx, QD: 16, Span: size,
				Warm: 2000, Count: 4000, Budget: 64, Race: raceEnabled})
		})
	}
}

// TestForgottenContextsReleased: Contexts that submitted to the node and
// were then stopped and forgotten are not kept by the driver (its
// per-Context outboxes were a map keyed by Context, never emptied).
func TestForgottenContextsReleased(t *testing.T) {
	e, fe := servedFrontEnd(t, 0)
	blocktest.CheckContextsReleased(t, e, fe, 4)
}
