package nbd

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/drivers/null"

	"github.com/ringblk/ringblk/internal/nbdproto"
)

// TestFastZeroFollowsTheDriver: NBD_CMD_FLAG_FAST_ZERO succeeds on a
// driver that zeroes without writing (the null driver; raw files in
// TestCommandsSimpleAndStructured) and fails with ENOTSUP, leaving the data,
// on one that has not declared it (qcow2), where a plain WRITE_ZEROES still
// works.
func TestFastZeroFollowsTheDriver(t *testing.T) {
	needTool(t, "qemu-img")
	dir := t.TempDir()
	img := filepath.Join(dir, "d.qcow2")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "16M")
	e := newEnvFile(t, img, ExportOptions{Name: ""}, func(g *block.Graph) (*block.Node, error) {
		c, err := chain.Open(g, img, chain.Options{Format: "qcow2", Name: "q"})
		if err != nil {
			return nil, err
		}
		return c.Node, nil
	})
	cl := dial(t, e.sock, "", true)
	data := pattern(64<<10, 5)
	cl.send(nbdproto.CmdWrite, 0, 1, 0, uint32(len(data)), data)
	if v := cl.simple(1); v != 0 {
		t.Fatalf("write: %d", v)
	}
	cl.send(nbdproto.CmdWriteZeroes, nbdproto.CmdFlagFastZero, 2, 0, 64<<10, nil)
	if v := cl.simple(2); v != nbdproto.ErrNotSup {
		t.Fatalf("FAST_ZERO on qcow2: error %d, want ENOTSUP (%d)", v, nbdproto.ErrNotSup)
	}
	if got, _, _ := cl.read(3, 0, 64<<10, nbdproto.CmdFlagDF); !bytes.Equal(got, data) {
		t.Fatal("a refused FAST_ZERO changed the data")
	}
	cl.send(nbdproto.CmdWriteZeroes, 0, 4, 0, 64<<10, nil)
	if v := cl.simple(4); v != 0 {
		t.Fatalf("plain write-zeroes on qcow2: %d", v)
	}

	n := newEnvFile(t, "", ExportOptions{Name: "null"}, func(g *block.Graph) (*block.Node, error) {
		return g.Open(null.New(1<<30, null.Options{}), block.Options{Name: "null"})
	})
	nc := dial(t, n.sock, "null", false)
	nc.send(nbdproto.CmdWriteZeroes, nbdproto.CmdFlagFastZero|nbdproto.CmdFlagFUA, 1, 0, 1<<30-4096, nil)
	if v := nc.simple(1); v != 0 {
		t.Fatalf("FAST_ZERO on null: error %d", v)
	}
}
