package block_test

import (
	"bytes"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

// raisingMem is Mem whose Open raises the node's alignment, as a driver
// that learns from its image that it needs whole sectors (qcow2 AES).
type raisingMem struct {
	*blocktest.Mem
	to  int
	err error
}

func (d *raisingMem) Open(n *block.Node) error {
	d.err = n.RaiseAlign(d.to)
	return d.err
}

// TestRaiseAlign: a node opened with byte alignment whose driver raises it
// to 512 in Open gets only whole sectors (unaligned writes and reads are
// read-modify-written by the block layer), its transfer limit rounded
// down to a multiple; a non power of two is refused.
func TestRaiseAlign(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	mem := blocktest.NewMem(64 << 10)
	mem.Align = 512
	d := &raisingMem{Mem: mem, to: 512}
	n := e.Open(d, block.Options{Name: "raised", MaxTransfer: 1000})
	defer n.Unref()
	if o := n.Options(); o.Align != 512 || o.MaxTransfer != 512 {
		t.Fatalf("options after RaiseAlign: Align %d MaxTransfer %d, want 512 512", o.Align, o.MaxTransfer)
	}
	buf := bytes.Repeat([]byte{0x5a}, 1000)
	if _, err := n.WriteAt(buf, 100); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1000)
	if _, err := n.ReadAt(got, 100); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, buf) || mem.Data[99] != 0 || mem.Data[1100] != 0 {
		t.Fatal("data differs after an unaligned write on a raised node")
	}
	if mem.Bad != 0 || mem.MaxSeen > 512 {
		t.Fatalf("driver saw %d misaligned requests, largest %d (max 512)", mem.Bad, mem.MaxSeen)
	}
	if err := (&raisingMem{Mem: blocktest.NewMem(4096), to: 3}).Open(n); err == nil {
		t.Fatal("RaiseAlign(3) accepted")
	}
}
