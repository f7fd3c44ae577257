package qcow2

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// TestQcow2AmendOrder: amend applies an upgrade before the size (a
// version 2 image with snapshots cannot be resized, the upgraded one can:
// compat=1.1,size=128M in one amend) and checks a downgrade after it: a
// snapshot whose disk size is not the image's refuses the downgrade with
// QEMU's words, the resize done and the image still version 3 and clean
// (iotest 061).
func TestQcow2AmendOrder(t *testing.T) {
	e := newTestEnv(t)
	img := filepath.Join(t.TempDir(), "a.qcow2")
	if err := e.create(img, 32<<20, format.CreateOptions{Version: 2}); err != nil {
		t.Fatal(err)
	}
	n := e.mustOpen(img, false)
	if _, err := n.WriteAt(pattern(64<<10, 0x2a), 24<<20); err != nil {
		t.Fatal(err)
	}
	d := n.Driver().(*Driver)
	if _, err := d.CreateSnapshot(SnapshotCreateOptions{Name: "foo"}); err != nil {
		t.Fatal(err)
	}
	if err := Amend(n, AmendOptions{Version: 3, Size: 128 << 20}); err != nil {
		t.Fatalf("compat=1.1,size=128M on a version 2 image with a snapshot: %v", err)
	}
	if h := d.Header(); h.Version != 3 || h.Size != 128<<20 {
		t.Fatalf("after the amend: version %d size %d", h.Version, h.Size)
	}
	if _, err := d.CreateSnapshot(SnapshotCreateOptions{Name: "bar"}); err != nil {
		t.Fatal(err)
	}
	err := Amend(n, AmendOptions{Version: 2, Size: 256 << 20})
	if err == nil || !strings.Contains(err.Error(), "Internal snapshots prevent downgrade of image") {
		t.Fatalf("downgrade with snapshots of other sizes: %v", err)
	}
	if h := d.Header(); h.Version != 3 || h.Size != 256<<20 {
		t.Fatalf("after the refused downgrade: version %d size %d, want 3 and the new size", h.Version, h.Size)
	}
	// Without the snapshot of another size: shrink back to foo's size and
	// downgrade in one amend (size first, then the downgrade's checks).
	if err := d.DeleteSnapshot("bar"); err != nil {
		t.Fatal(err)
	}
	if err := Amend(n, AmendOptions{Version: 2, Size: 32 << 20}); err != nil {
		t.Fatalf("compat=0.10,size=32M: %v", err)
	}
	if h := d.Header(); h.Version != 2 || h.Size != 32<<20 {
		t.Fatalf("after the shrinking downgrade: version %d size %d", h.Version, h.Size)
	}
	got := make([]byte, 64<<10)
	if _, err := n.ReadAt(got, 24<<20); err != nil || got[0] != 0x2a || got[len(got)-1] != 0x2a {
		t.Fatalf("data after the shrinking downgrade: %v", err)
	}
	res, err := n.Check(0)
	if err != nil || res.Corruptions != 0 || res.Leaks != 0 {
		t.Fatalf("check: %+v %v", res, err)
	}
	n.Unref()
}
