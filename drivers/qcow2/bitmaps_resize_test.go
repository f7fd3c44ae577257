package qcow2

import (
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// TestQcow2BitmapsResize: resizing an image with persistent bitmaps (one
// enabled, one disabled) grows and shrinks them with the disk, as
// qemu-img resize does: a write past the old end is recorded, QEMU reads
// the same extents from our image as from the one qemu-img resized,
// qemu-img check is clean, and QEMU's own write to our image lands in the
// bitmap we load afterwards. Before, the resize was refused ("Cannot
// resize an image with persistent bitmaps").
func TestQcow2BitmapsResize(t *testing.T) {
	img := qemuBitmapImage(t) // 64M, b0: [0, 64k) and 1M dirty
	qemuImg(t, "bitmap", "--add", "-g", "512", "--disable", img, "b1")
	ref := filepath.Join(t.TempDir(), "ref.qcow2")
	copyFile(t, img, ref)
	same := func(step string) {
		t.Helper()
		qemuCheckClean(t, img)
		if bm := mQemuInfo(t, img).FormatSpecific.Data.Bitmaps; len(bm) != 2 || bm[0].Name != "b0" || bm[1].Name != "b1" {
			t.Fatalf("%s: qemu-img info bitmaps %+v", step, bm)
		}
		for _, name := range []string{"b0", "b1"} {
			if got, want := qemuDirty(t, img, name), qemuDirty(t, ref, name); !slices.Equal(got, want) {
				t.Fatalf("%s: QEMU reads %s %v from our image, %v from qemu-img's", step, name, got, want)
			}
		}
	}

	// Grow past the tables' old size at 512-byte granularity (1 -> 4
	// table entries), then write past the old end.
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	if err := n.Truncate(1 << 30); err != nil {
		t.Fatalf("grow: %v", err)
	}
	if b := n.Bitmap("b1"); b == nil || b.Size() != 1<<30 {
		t.Fatalf("node bitmap b1 after grow: %v", b)
	}
	if _, err := n.WriteAt(fill(0x11, 4096), 100<<20); err != nil {
		t.Fatal(err)
	}
	if got, want := n.Bitmap("b0").Count(), int64(3*64<<10); got != want {
		t.Fatalf("b0 count %d after a write past the old end, want %d", got, want)
	}
	n.Unref()
	qemuImg(t, "resize", "-q", ref, "1G")
	qemuIO(t, ref, "write -P 0x11 100M 4k")
	same("grow")
	if got, want := qemuDirty(t, img, "b0"), []extent{{0, 64 << 10}, {1 << 20, 64 << 10}, {100 << 20, 64 << 10}}; !slices.Equal(got, want) {
		t.Fatalf("b0 after grow and write: %v, want %v", got, want)
	}

	// QEMU writes to our image; we load its bits.
	qemuIO(t, img, "write 900M 4k")
	qemuIO(t, ref, "write 900M 4k")
	n = e.mustOpen(img, true)
	if b := n.Bitmap("b0"); b == nil || !b.Get(900<<20) || b.Size() != 1<<30 {
		t.Fatalf("b0 after QEMU's write past the old end: %v", b)
	}
	n.Unref()

	// Shrink below the written areas (qemu-img resize --shrink).
	n = e.mustOpen(img, false)
	if err := n.Truncate(2<<20 - 8192); err != nil {
		t.Fatalf("shrink: %v", err)
	}
	n.Unref()
	qemuImg(t, "resize", "-q", "--shrink", ref, "2088960")
	same("shrink")
}

// TestQcow2ResizeRefusedForBitmaps: a resize is refused, as by qemu-img
// 7.2 and with its words, while a bitmap is inconsistent (in use after a
// crash) or a persistent bitmap is held by an operation; the size does
// not change.
func TestQcow2ResizeRefusedForBitmaps(t *testing.T) {
	img := qemuBitmapImage(t)
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	n.Bitmap("b0").SetBusy(true)
	err := n.Truncate(128 << 20)
	if err == nil || !strings.Contains(err.Error(), "Bitmap 'b0' is currently in use by another operation and cannot be used") {
		t.Fatalf("resize with a busy bitmap: %v", err)
	}
	n.Bitmap("b0").SetBusy(false)
	if _, err := n.WriteAt(fill(1, 512), 0); err != nil {
		t.Fatal(err)
	}
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	crash := filepath.Join(t.TempDir(), "crash.qcow2")
	copyFile(t, img, crash) // what a kill -9 now leaves: b0 in use
	n.Unref()
	ref := filepath.Join(t.TempDir(), "ref.qcow2")
	copyFile(t, crash, ref)
	out, qerr := exec.Command("qemu-img", "resize", ref, "128M").CombinedOutput()
	const words = "Bitmap 'b0' is inconsistent and cannot be used"
	if qerr == nil || !strings.Contains(string(out), words) {
		t.Fatalf("qemu-img resize: %v\n%s", qerr, out)
	}
	n = e.mustOpen(crash, false)
	defer n.Unref()
	for _, size := range []int64{128 << 20, 32 << 20} {
		err = n.Truncate(size)
		if err == nil || !strings.Contains(err.Error(), words) {
			t.Fatalf("resize to %d with an in-use bitmap: %v", size, err)
		}
	}
	if l, _ := n.Length(); l != 64<<20 {
		t.Fatalf("length %d after refused resizes", l)
	}
}

// TestQcow2ResizeCrashLeavesBitmapsInUse: a crash after a resize and
// before the close leaves the bitmaps in use with tables sized for the
// old disk; the directory is still read (listed in use, removable, its
// clusters counted by check), as QEMU reads it. Before, the table size
// made the whole directory "damaged" ("bitmap table size does not match
// the disk size").
func TestQcow2ResizeCrashLeavesBitmapsInUse(t *testing.T) {
	img := qemuBitmapImage(t)
	qemuImg(t, "bitmap", "--add", "-g", "512", img, "b1")
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	if err := n.Truncate(8 << 30); err != nil {
		t.Fatal(err)
	}
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	crash := filepath.Join(t.TempDir(), "crash.qcow2")
	copyFile(t, img, crash)
	n.Unref()
	qemuCheckClean(t, img)
	n = e.mustOpen(crash, false)
	d := n.Driver().(*Driver)
	if err := d.BitmapsDamaged(); err != nil {
		t.Fatalf("directory after the crash: %v", err)
	}
	if bi := d.PersistentBitmaps(); len(bi) != 2 || !bi[0].InUse || !bi[1].InUse {
		t.Fatalf("PersistentBitmaps %+v", bi)
	}
	for _, name := range []string{"b0", "b1"} {
		if err := d.RemovePersistentBitmap(name); err != nil {
			t.Fatal(err)
		}
	}
	n.Unref()
	if bm := mQemuInfo(t, crash).FormatSpecific.Data.Bitmaps; len(bm) != 0 {
		t.Fatalf("bitmaps after removal %+v", bm)
	}
	h, err := format.ParseHeader(headerCluster(t, crash))
	if err != nil || h.Size != 8<<30 {
		t.Fatalf("header after the crash: %+v %v", h, err)
	}
}

// TestQcow2BitmapsResizeOutsideTruncate: the resizes that do not go
// through a truncate request — preallocated growth (qemu-img resize
// --preallocation=metadata) and amend -o size= — resize the node's
// bitmaps too, so the close stores them with the new size: qemu-img info
// lists them and check is clean. Before, both were refused like a plain
// resize; with only the driver's refusal lifted, the close would fail
// ("cannot store bitmap ... it covers 67108864 bytes").
func TestQcow2BitmapsResizeOutsideTruncate(t *testing.T) {
	img := qemuBitmapImage(t)
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	if err := TruncatePrealloc(n, 128<<20, format.PreallocMetadata); err != nil {
		t.Fatal(err)
	}
	if b := n.Bitmap("b0"); b.Size() != 128<<20 {
		t.Fatalf("b0 covers %d bytes after a preallocated growth", b.Size())
	}
	if err := Amend(n, AmendOptions{Size: 96 << 20}); err != nil {
		t.Fatal(err)
	}
	if b := n.Bitmap("b0"); b.Size() != 96<<20 || !b.Get(1<<20) {
		t.Fatalf("b0 after amend -o size=96M: %d bytes, 1M dirty %v", b.Size(), b.Get(1<<20))
	}
	n.Unref()
	qemuCheckClean(t, img)
	if bm := mQemuInfo(t, img).FormatSpecific.Data.Bitmaps; len(bm) != 1 || bm[0].Name != "b0" {
		t.Fatalf("qemu-img info bitmaps %+v", bm)
	}
	if got, want := qemuDirty(t, img, "b0"), []extent{{0, 64 << 10}, {1 << 20, 64 << 10}}; !slices.Equal(got, want) {
		t.Fatalf("QEMU reads b0 %v, want %v", got, want)
	}
}
