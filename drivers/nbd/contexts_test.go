package nbd_test

import (
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	nbdsrv "github.com/ringblk/ringblk/nbd"
)

// TestForgottenContextsReleased: Contexts that submitted to the node and
// were then stopped and forgotten are not kept by the driver (its
// per-Context outboxes were a map keyed by Context, never emptied).
func TestForgottenContextsReleased(t *testing.T) {
	path, _ := image(t)
	uri := serve(t, path, nbdsrv.ExportOptions{Name: ""})
	e := blocktest.NewEnv(t, 0)
	n := open(t, e, uri, false, block.Options{})
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{})
	defer fe.Close()
	blocktest.CheckContextsReleased(t, e, fe, 4)
}
