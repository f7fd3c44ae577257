package qcow2

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// TestQcow2LoadSnapshotTmp (written on branch iotvmstate beside iotwording's
// implementation, kept as a second test of it): a read-only image shows an internal snapshot
// after LoadSnapshotTmp, with the snapshot's L1 size even where the active
// table is smaller (iotest 029: size and l1_size poked down to one entry
// after the snapshot), while the virtual size stays the image's. A
// read-write image and an unknown snapshot are refused.
func TestQcow2LoadSnapshotTmp(t *testing.T) {
	e := newTestEnv(t)
	img := filepath.Join(t.TempDir(), "s.qcow2")
	if err := e.create(img, 64<<20, format.CreateOptions{ClusterSize: 512}); err != nil {
		t.Fatal(err)
	}
	n := e.mustOpen(img, false)
	if _, err := n.WriteAt(pattern(512, 0x11), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := n.WriteAt(pattern(512, 0x12), 32<<20); err != nil {
		t.Fatal(err)
	}
	d := n.Driver().(*Driver)
	if _, err := d.CreateSnapshot(SnapshotCreateOptions{Name: "foo"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.WriteAt(pattern(512, 0x22), 0); err != nil {
		t.Fatal(err)
	}
	if err := d.LoadSnapshotTmp("", "foo"); err == nil {
		t.Fatal("LoadSnapshotTmp on a read-write image succeeded")
	}
	n.Unref()

	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var b [8]byte
	put64(b[:], 0, 512)
	f.WriteAt(b[:], 24) // size: 512 bytes
	put32(b[:], 0, 1)
	f.WriteAt(b[:4], 36) // l1_size: 1
	f.Close()

	n = e.mustOpen(img, true)
	defer n.Unref()
	d = n.Driver().(*Driver)
	if err := d.LoadSnapshotTmp("", "bar"); !errors.Is(err, ErrSnapshotNotFound) {
		t.Fatalf("unknown snapshot: %v", err)
	}
	got := make([]byte, 512)
	if _, err := n.ReadAt(got, 0); err != nil || !bytes.Equal(got, pattern(512, 0x22)) {
		t.Fatalf("active disk before the load: %v", err)
	}
	if err := d.LoadSnapshotTmp("", "foo"); err != nil {
		t.Fatal(err)
	}
	if l, _ := n.Length(); l != 512 {
		t.Fatalf("length %d after the load, want the image's 512", l)
	}
	if _, err := n.ReadAt(got, 0); err != nil || !bytes.Equal(got, pattern(512, 0x11)) {
		t.Fatalf("snapshot content: %v", err)
	}
	// The snapshot's L1 table is its own size: the entry for 32 MiB, past
	// the poked active table, is there (read as VM state: past the disk).
	if _, err := n.LoadVMState(got, 32<<20-32<<10); err != nil || !bytes.Equal(got, pattern(512, 0x12)) {
		t.Fatalf("snapshot L1 entry past the active table: %v", err)
	}
}
