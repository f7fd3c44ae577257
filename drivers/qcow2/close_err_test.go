package qcow2

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/uring"
	"github.com/ringblk/ringblk/uring/uringtest"
)

// TestQcow2CloseReturnsWriteBackError (issue 14 item 3): an allocating
// write leaves its new L2 table and refcount block dirty in memory; the
// caller closes without a flush, and the write-back done by the driver's
// Close fails with ENOSPC (injected on the fake ring). The caller that
// dropped the last reference — Node.Unref, or FrontEnd.Close of the front
// end holding the node — must get that ENOSPC, and the node must still be
// gone (closing frees it whether or not the write-back worked).
func TestQcow2CloseReturnsWriteBackError(t *testing.T) {
	for _, via := range []string{"Unref", "FrontEnd.Close"} {
		t.Run(via, func(t *testing.T) {
			ring := uringtest.New(uringtest.Options{Seed: uringtest.Seed(t)})
			e := blocktest.NewEnvOpts(t, blocktest.EnvOptions{Queue: func(string) uring.Queue { return ring }, ArenaSize: 1 << 20})
			path := filepath.Join(t.TempDir(), "c.qcow2")
			if err := os.WriteFile(path, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			file, err := raw.NewNode(e.G, path, raw.Options{Locking: raw.LockingOff}, block.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if err := Create(file, 4<<20, format.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			n, err := NewNode(e.G, file, DriverOptions{}, block.Options{Name: "img"})
			if err != nil {
				t.Fatal(err)
			}
			data := bytes.Repeat([]byte{0x5a}, 64<<10)
			if _, err := n.WriteAt(data, 1<<20); err != nil {
				t.Fatal(err)
			}
			var rule *uringtest.Rule
			e.OnMain(func() {
				rule = ring.Inject(uringtest.Fault{Ops: uringtest.WriteOps, Errno: syscall.ENOSPC})
			})
			switch via {
			case "Unref":
				err = n.Unref()
			default:
				fe := e.G.NewFrontEnd(block.FrontEndOptions{Name: "fe"})
				if ierr := fe.Insert(n); ierr != nil {
					t.Fatal(ierr)
				}
				if uerr := n.Unref(); uerr != nil {
					t.Fatalf("Unref while the front end holds the node: %v", uerr)
				}
				err = fe.Close()
			}
			fired := 0
			e.OnMain(func() { fired = rule.Fired() })
			if fired == 0 {
				t.Fatal("close wrote nothing: the write left no dirty metadata to write back")
			}
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("%s after a failed close-time write-back = %v, want ENOSPC", via, err)
			}
			var be *block.Error
			if !errors.As(err, &be) || be.Op != block.OpClose {
				t.Errorf("error %v does not name the close", err)
			}
			if left := e.G.Nodes(); len(left) != 0 {
				t.Errorf("%d node(s) left in the graph after the failed close", len(left))
			}
		})
	}
}
