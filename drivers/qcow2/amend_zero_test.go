package qcow2

import (
	"bytes"
	"path/filepath"
	"testing"
)

// TestQcow2AmendDowngradeSnapshotZeros: a downgrade to version 2 expands
// the zero clusters of internal snapshots too (QEMU does; before, the
// amend was refused): over a backing file of 0x11, a snapshot taken with
// zero clusters still reads zeros after the downgrade and an apply, the
// image is clean for qemu-img, and Progress sees every L1 entry, active
// and the snapshot's, once (qemu-img amend -p, iotest 061).
func TestQcow2AmendDowngradeSnapshotZeros(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	base, img := filepath.Join(dir, "b.qcow2"), filepath.Join(dir, "t.qcow2")
	qemuCreate(t, base, "", 64<<20)
	qemuIO(t, base, "write -P 0x11 0 1M")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", img)
	qemuIO(t, img, "write -z 0 128k", "write -z 512k 64k")
	qemuImg(t, "snapshot", "-c", "foo", img)
	qemuIO(t, img, "write -P 0x2a 0 128k")
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	var calls, last, total int64
	err := Amend(n, AmendOptions{Version: 2, Progress: func(done, tot int64) {
		calls++
		last, total = done, tot
	}})
	if err != nil {
		n.Unref()
		t.Fatalf("downgrade with zero clusters in a snapshot: %v", err)
	}
	d := n.Driver().(*Driver)
	if h := d.Header(); h.Version != 2 {
		t.Fatalf("version %d after the downgrade", h.Version)
	}
	if total != 2 || calls != total || last != total { // one L1 entry each
		t.Errorf("progress: %d calls, last %d of %d; want 2 of 2", calls, last, total)
	}
	if err := d.ApplySnapshot("foo"); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1<<20)
	if _, err := n.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte{0x11}, 1<<20)
	copy(want[0:128<<10], make([]byte, 128<<10))
	copy(want[512<<10:576<<10], make([]byte, 64<<10))
	if !bytes.Equal(got, want) {
		t.Error("the snapshot's zero clusters do not read as zeros after the downgrade")
	}
	n.Unref()
	qemuCheck(t, img)
}
