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

// TestQcow2CloseWriteBackRetry (iotest 026): an allocating write leaves
// its new L2 table and refcount block dirty; the close's write-back fails.
// One failing write (a transient error): the second try writes
// everything and the close succeeds. Two: the close reports the second
// try's error as a *CloseWriteBackError with no Retry error (the third
// try wrote everything). In both the data reads back after a reopen and
// the image has no leak. Every write failing: Retry carries the errno too.
func TestQcow2CloseWriteBackRetry(t *testing.T) {
	for _, c := range []struct {
		name  string
		count int // failing writes (0: all)
	}{{"transient", 1}, {"twice", 2}, {"persistent", 0}} {
		t.Run(c.name, func(t *testing.T) {
			ring := uringtest.New(uringtest.Options{Seed: uringtest.Seed(t)})
			e := blocktest.NewEnvOpts(t, blocktest.EnvOptions{Queue: func(string) uring.Queue { return ring }, ArenaSize: 1 << 20})
			path := filepath.Join(t.TempDir(), "c.qcow2")
			if err := os.WriteFile(path, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			open := func() *block.Node {
				file, err := raw.NewNode(e.G, path, raw.Options{Locking: raw.LockingOff}, block.Options{})
				if err != nil {
					t.Fatal(err)
				}
				n, err := NewNode(e.G, file, DriverOptions{}, block.Options{Name: "img"})
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
			file, err := raw.NewNode(e.G, path, raw.Options{Locking: raw.LockingOff}, block.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if err := Create(file, 4<<20, format.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			file.Unref()
			n := open()
			data := bytes.Repeat([]byte{0x5a}, 64<<10)
			if _, err := n.WriteAt(data, 1<<20); err != nil {
				t.Fatal(err)
			}
			e.OnMain(func() {
				ring.Inject(uringtest.Fault{Ops: uringtest.WriteOps, Errno: syscall.ENOSPC, Count: c.count})
			})
			err = n.Unref()
			var wb *CloseWriteBackError
			switch c.count {
			case 1:
				if err != nil {
					t.Fatalf("close after one transient write error = %v, want nil (the second try wrote everything)", err)
				}
			case 2:
				if !errors.As(err, &wb) || !errors.Is(wb.WriteBack, syscall.ENOSPC) || wb.Retry != nil {
					t.Fatalf("close after two write errors = %v (%+v), want a *CloseWriteBackError with ENOSPC and no Retry error", err, wb)
				}
			default:
				if !errors.As(err, &wb) || !errors.Is(wb.WriteBack, syscall.ENOSPC) || !errors.Is(wb.Retry, syscall.ENOSPC) {
					t.Fatalf("close with every write failing = %v (%+v), want ENOSPC twice", err, wb)
				}
			}
			e.OnMain(func() { ring.ClearFaults() })
			if c.count == 0 {
				return
			}
			n = open()
			defer n.Unref()
			got := make([]byte, len(data))
			if _, err := n.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("after the retried close the data reads back wrong (%v)", err)
			}
			res, err := n.Check(0)
			if err != nil || res.Corruptions != 0 || res.Leaks != 0 {
				t.Fatalf("check after the retried close: %+v %v", res, err)
			}
		})
	}
}
