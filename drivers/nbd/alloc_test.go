package nbd_test

import (
	"testing"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	nbdsrv "github.com/ringblk/ringblk/nbd"
)

// TestClientZeroAllocs: 4 KiB reads and writes at QD16 through the client
// (and our server, in the same process) allocate nothing per request in
// steady state, from the node's Context and from an IOThread (whose
// requests go through the driver's inbox and come back through the
// IOThread's outbox, block.Request.CompleteRemote).
func TestClientZeroAllocs(t *testing.T) {
	path, _ := image(t)
	uri := serve(t, path, nbdsrv.ExportOptions{Name: ""})
	e := blocktest.NewEnv(t, 1)
	n := open(t, e, uri, false, block.Options{})
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{})
	defer fe.Close()
	for _, ctx := range []*aio.Context{e.Main, e.IO[0]} {
		t.Run(ctx.Name(), func(t *testing.T) {
			blocktest.CheckQDAllocs(t, e, fe, blocktest.AllocCheck{Ctx: ctx, QD: 16, Span: size,
				Warm: 2000, Count: 4000, Budget: 64, Race: raceEnabled})
		})
	}
}
