package blkdebug_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/drivers/blkdebug"
)

// waitSuspended polls until a request is held under tag, up to 5 s.
func waitSuspended(d *blkdebug.Driver, tag string) bool {
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if d.Suspended(tag) {
			return true
		}
	}
	return false
}

// TestRMWBreakpointsAndOvertaking: on a blkdebug node with align=4k (a
// raw image's tree: no format node above), unaligned writes raise the
// pwritev_rmw_* events at the node, so breakpoints on them hold the
// request (iotest 077 -raw). And, as in QEMU, a request waiting for
// another is overtaken: with A held after its RMW read of block 0xa000,
// B (0xa800+0x1000, blocks 0xa000 and 0xb000) waits for A, and C
// (0xbe00+0x200, block 0xb000 only) overlaps B but not A, so it goes on
// to its own breakpoint instead of queueing behind B. All data lands.
func TestRMWBreakpointsAndOvertaking(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	mem := blocktest.NewMem(64 << 10)
	img := e.Open(mem, block.Options{Name: "img"})
	n, err := blkdebug.NewNodeRules(e.G, img, "", nil, block.Options{Name: "dbg", Align: 4096})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Unref() })
	d := n.Driver().(*blkdebug.Driver)
	// On a failure, let every held request go before the node closes
	// (cleanups run last first).
	t.Cleanup(func() {
		d.RemoveBreak("A")
		d.RemoveBreak("B")
	})
	write := func(p byte, off, l int64) chan error {
		ch := make(chan error, 1)
		go func() {
			_, err := n.WriteAt(bytes.Repeat([]byte{p}, int(l)), off)
			ch <- err
		}()
		return ch
	}
	if err := d.Break("pwritev_rmw_after_tail", "A"); err != nil {
		t.Fatal(err)
	}
	a := write(10, 0xa000, 0x200)
	if !waitSuspended(d, "A") {
		t.Fatal("no request held after pwritev_rmw_after_tail (RMW events not raised at the node)")
	}
	before := n.InFlight()
	b := write(11, 0xa800, 0x1000)
	for end := time.Now().Add(5 * time.Second); n.InFlight() == before; time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("B never reached the node")
		}
	}
	if err := d.Break("pwritev_rmw_after_head", "B"); err != nil {
		t.Fatal(err)
	}
	c := write(12, 0xbe00, 0x200)
	if !waitSuspended(d, "B") {
		t.Fatal("C queued behind B, which waits for A: a waiting request must be overtaken")
	}
	for _, tag := range []string{"A", "B"} {
		if err := d.Resume(tag); err != nil {
			t.Fatal(err)
		}
	}
	for _, ch := range []chan error{a, b, c} {
		select {
		case err := <-ch:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a write did not finish")
		}
	}
	data := mem.Snapshot()
	want := func(off, l int64, p byte) {
		if !bytes.Equal(data[off:off+l], bytes.Repeat([]byte{p}, int(l))) {
			t.Errorf("%#x+%#x does not hold %d", off, l, p)
		}
	}
	want(0xa000, 0x200, 10)
	want(0xa800, 0x1000, 11)
	want(0xbe00, 0x200, 12)
}
