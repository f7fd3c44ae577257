package qcow2

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
)

// TestLazyRefcountsTableRefcountsDurable: in lazy mode only guest data
// refcounts may stay in memory. A write that allocates an L2 table and a
// data cluster, with FUA, then a crash copy: the dirty bit is set, the L2
// table's refcount (cluster 4) is on disk, the data cluster's (cluster 5)
// is not, as QEMU leaves it (iotests 039, 061). Without lazy mode both
// are on disk and the image is clean.
func TestLazyRefcountsTableRefcountsDurable(t *testing.T) {
	for _, lazy := range []bool{true, false} {
		e := newTestEnv(t)
		dir := t.TempDir()
		img, crash := filepath.Join(dir, "l.qcow2"), filepath.Join(dir, "crash.qcow2")
		if err := e.create(img, 128<<20, format.CreateOptions{LazyRefcounts: lazy}); err != nil {
			t.Fatal(err)
		}
		n := e.mustOpen(img, false)
		if err := n.Writev([][]byte{pattern(512, 0x5a)}, 0, block.FUA); err != nil {
			t.Fatal(err)
		}
		copyFile(t, img, crash)
		n.Unref()
		b, err := os.ReadFile(crash)
		if err != nil {
			t.Fatal(err)
		}
		// QEMU's layout for 64 KiB clusters: header, refcount table,
		// refcount block, L1 table, then the L2 table and the data.
		const cs = 64 << 10
		if l1 := binary.BigEndian.Uint64(b[3*cs:]); l1&format.OffsetMask != 4*cs {
			t.Fatalf("lazy %v: L1 entry %#x, want the L2 table at cluster 4", lazy, l1)
		}
		rc := func(c int) uint16 { return binary.BigEndian.Uint16(b[2*cs+2*c:]) }
		dirty := binary.BigEndian.Uint64(b[72:])&format.IncompatDirty != 0
		if rc(4) != 1 || dirty != lazy || rc(5) != map[bool]uint16{true: 0, false: 1}[lazy] {
			t.Errorf("lazy %v: after the crash: dirty %v, refcount of the L2 table %d, of the data cluster %d; want dirty %v, 1, %d",
				lazy, dirty, rc(4), rc(5), lazy, map[bool]int{true: 0, false: 1}[lazy])
		}
	}
}

// TestLazyRefcountsOpenRepairLog: a read-write open of a dirty image
// repairs it and reports the repair through DriverOptions.RepairLog in
// qemu-img check's words (QEMU prints them on stderr at open: iotest 039).
func TestLazyRefcountsOpenRepairLog(t *testing.T) {
	e := newTestEnv(t)
	dir := t.TempDir()
	img, crash := filepath.Join(dir, "l.qcow2"), filepath.Join(dir, "crash.qcow2")
	if err := e.create(img, 128<<20, format.CreateOptions{LazyRefcounts: true}); err != nil {
		t.Fatal(err)
	}
	n := e.mustOpen(img, false)
	if err := n.Writev([][]byte{pattern(512, 0x5a)}, 0, block.FUA); err != nil {
		t.Fatal(err)
	}
	copyFile(t, img, crash)
	n.Unref()
	file, err := raw.NewNode(e.g, crash, raw.Options{Locking: raw.LockingOff}, block.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var log []string
	n, err = NewNode(e.g, file, DriverOptions{RepairLog: func(m string) { log = append(log, m) }}, block.Options{})
	if err != nil {
		t.Fatal(err)
	}
	n.Unref()
	want := []string{"ERROR cluster 5 refcount=0 reference=1", "Rebuilding refcount structure",
		"Repairing cluster 1 refcount=1 reference=0", "Repairing cluster 2 refcount=1 reference=0"}
	if strings.Join(log, "\n") != strings.Join(want, "\n") {
		t.Fatalf("repair log at open:\n%s\nwant:\n%s", strings.Join(log, "\n"), strings.Join(want, "\n"))
	}
	if incompatOf(t, crash)&format.IncompatDirty != 0 {
		t.Fatal("dirty bit still set after the repairing open")
	}
}
