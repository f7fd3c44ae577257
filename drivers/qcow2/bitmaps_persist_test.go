package qcow2

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/bitmap"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// extent is a dirty range of a bitmap.
type extent struct{ Off, Len int64 }

// qemuDirty returns the dirty extents QEMU reads from persistent bitmap
// name of img (qemu-nbd -B exports it, nbdinfo --map reads it).
func qemuDirty(t *testing.T, img, name string) []extent {
	t.Helper()
	if _, err := exec.LookPath("nbdinfo"); err != nil {
		t.Skip("nbdinfo not installed")
	}
	if _, err := exec.LookPath("qemu-nbd"); err != nil {
		t.Skip("qemu-nbd not installed")
	}
	out, err := exec.Command("nbdinfo", "--json", "--map=qemu:dirty-bitmap:"+name, "--",
		"[", "qemu-nbd", "-r", "-f", "qcow2", "-B", name, img, "]").CombinedOutput()
	if err != nil {
		t.Fatalf("nbdinfo --map: %v\n%s", err, out)
	}
	var m []struct {
		Offset, Length int64
		Type           int
	}
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("nbdinfo json: %v\n%s", err, out)
	}
	var ex []extent
	for _, e := range m {
		if e.Type&1 != 0 {
			ex = append(ex, extent{e.Offset, e.Length})
		}
	}
	return ex
}

// ourDirty returns the dirty extents of bitmap b.
func ourDirty(b *bitmap.Bitmap) []extent {
	var ex []extent
	b.Extents(func(off, n int64) bool { ex = append(ex, extent{off, n}); return true })
	return ex
}

// qemuBitmapImage makes a 64 MiB image with persistent bitmap b0 (64 KiB
// granularity) added by qemu-img and dirtied by qemu-io at [0, 64k) and
// 1M+4k.
func qemuBitmapImage(t *testing.T) string {
	t.Helper()
	needQemu(t)
	img := filepath.Join(t.TempDir(), "bm.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", img, "64M")
	qemuImg(t, "bitmap", "--add", img, "b0")
	qemuIO(t, img, "write 0 64k", "write 1M 4k")
	return img
}

// TestQcow2BitmapsKeptOnWrite is the regression test for the data-safety
// bug "a write to an image with bitmaps drops them": after a write
// through ringblk the bitmap is still in the image, consistent (auto, not
// in use), holds QEMU's dirty regions plus ours, and qemu-img check is
// clean.
func TestQcow2BitmapsKeptOnWrite(t *testing.T) {
	img := qemuBitmapImage(t)
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	if _, err := n.WriteAt(fill(0x5a, 4096), 8<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := n.WriteAt(fill(0x5b, 128<<10), 32<<20+4096); err != nil {
		t.Fatal(err)
	}
	n.Unref()
	info := mQemuInfo(t, img)
	if bm := info.FormatSpecific.Data.Bitmaps; len(bm) != 1 || bm[0].Name != "b0" {
		t.Fatalf("qemu-img info bitmaps after a ringblk write: %+v", bm)
	}
	qemuCheckClean(t, img)
	want := []extent{{0, 64 << 10}, {1 << 20, 64 << 10}, {8 << 20, 64 << 10}, {32 << 20, 192 << 10}}
	if got := qemuDirty(t, img, "b0"); !slices.Equal(got, want) {
		t.Fatalf("QEMU's dirty extents %v, want %v", got, want)
	}
	h, err := format.ParseHeader(headerCluster(t, img))
	if err != nil || h.AutoclearFeatures&format.AutoclearBitmaps == 0 {
		t.Fatalf("autoclear bit 0 after close: %+v, %v", h, err)
	}
}

// TestQcow2BitmapsLoadedFromQemu: ringblk sees exactly the dirty regions
// QEMU's writes left, with the bitmap's name, granularity and state, on a
// read-only open that changes nothing.
func TestQcow2BitmapsLoadedFromQemu(t *testing.T) {
	img := qemuBitmapImage(t)
	qemuImg(t, "bitmap", "--add", "-g", "512", "--disable", img, "b1")
	qemuIO(t, img, "write 2M 1k")
	before := headerCluster(t, img)
	e := newTestEnv(t)
	n := e.mustOpen(img, true)
	defer n.Unref()
	b0, b1 := n.Bitmap("b0"), n.Bitmap("b1")
	if b0 == nil || b1 == nil || !b0.Persistent || !b0.Enabled() || b1.Enabled() || b0.Granularity() != 64<<10 || b1.Granularity() != 512 {
		t.Fatalf("bitmaps on the node: %v %v", b0, b1)
	}
	if got, want := ourDirty(b0), []extent{{0, 64 << 10}, {1 << 20, 64 << 10}, {2 << 20, 64 << 10}}; !slices.Equal(got, want) {
		t.Fatalf("b0 extents %v, want %v", got, want)
	}
	if got := ourDirty(b1); len(got) != 0 {
		t.Fatalf("disabled b1 has extents %v", got)
	}
	if got, want := ourDirty(b0), qemuDirty(t, img, "b0"); !slices.Equal(got, want) {
		t.Fatalf("ours %v, QEMU's %v", got, want)
	}
	d := n.Driver().(*Driver)
	if bi := d.PersistentBitmaps(); len(bi) != 2 || bi[0].Name != "b0" || !bi[0].Auto || bi[1].Auto || bi[1].InUse {
		t.Fatalf("PersistentBitmaps %+v", bi)
	}
	if after := headerCluster(t, img); string(after) != string(before) {
		t.Fatal("read-only open changed the header")
	}
}

// TestQcow2BitmapsCreatedByUs: a persistent bitmap added on the node and
// dirtied by our writes is stored at close; qemu-img info lists it,
// qemu-nbd exports the same extents, qemu-img bitmap --merge can use it and
// check stays clean.
func TestQcow2BitmapsCreatedByUs(t *testing.T) {
	needQemu(t)
	img := filepath.Join(t.TempDir(), "ours.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", img, "64M")
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	b, err := n.AddBitmap("mine", 4096)
	if err != nil {
		t.Fatal(err)
	}
	b.Persistent = true
	for _, off := range []int64{0, 5 << 20, 63 << 20} {
		if _, err := n.WriteAt(fill(0x11, 8192), off); err != nil {
			t.Fatal(err)
		}
	}
	n.Unref()
	if bm := mQemuInfo(t, img).FormatSpecific.Data.Bitmaps; len(bm) != 1 || bm[0].Name != "mine" {
		t.Fatalf("qemu-img info bitmaps %+v", bm)
	}
	qemuCheckClean(t, img)
	want := []extent{{0, 8192}, {5 << 20, 8192}, {63 << 20, 8192}}
	if got := qemuDirty(t, img, "mine"); !slices.Equal(got, want) {
		t.Fatalf("QEMU reads %v, want %v", got, want)
	}
	qemuImg(t, "bitmap", "--add", img, "copy")
	qemuImg(t, "bitmap", "--merge", "mine", img, "copy")
	if got := qemuDirty(t, img, "copy"); !slices.Equal(got, []extent{{0, 64 << 10}, {5 << 20, 64 << 10}, {63 << 20, 64 << 10}}) {
		t.Fatalf("merged copy reads %v", got)
	}
	qemuCheckClean(t, img)
	// QEMU tracks its own writes in our bitmap (auto flag).
	qemuIO(t, img, "write 40M 4k")
	want = []extent{{0, 8192}, {5 << 20, 8192}, {40 << 20, 4096}, {63 << 20, 8192}}
	if got := qemuDirty(t, img, "mine"); !slices.Equal(got, want) {
		t.Fatalf("after a qemu-io write QEMU reads %v, want %v", got, want)
	}
	// And back: we load QEMU's rewrite of our bitmap.
	n = e.mustOpen(img, true)
	defer n.Unref()
	if got := ourDirty(n.Bitmap("mine")); !slices.Equal(got, want) {
		t.Fatalf("after QEMU's rewrite we read %v", got)
	}
}

// TestQcow2BitmapsInUseWhileOpen: after the first write and before close
// the bitmap is in_use on disk (qemu-img info says so); a bitmap found
// in_use at open is not loaded, is listed as in use, and can be removed,
// leaving qemu-img check clean.
func TestQcow2BitmapsInUseWhileOpen(t *testing.T) {
	img := qemuBitmapImage(t)
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	if _, err := n.WriteAt(fill(1, 512), 0); err != nil {
		t.Fatal(err)
	}
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	// The state a kill -9 now would leave.
	crash := filepath.Join(t.TempDir(), "crash.qcow2")
	copyFile(t, img, crash)
	n.Unref()
	out := string(qemuImg(t, "info", crash))
	if !containsAll(out, "in-use", "auto", "b0") {
		t.Fatalf("qemu-img info of the crashed image:\n%s", out)
	}
	qemuCheckClean(t, crash)
	n = e.mustOpen(crash, false)
	d := n.Driver().(*Driver)
	if n.Bitmap("b0") != nil {
		t.Fatal("in-use bitmap was loaded for tracking")
	}
	if bi := d.PersistentBitmaps(); len(bi) != 1 || !bi[0].InUse {
		t.Fatalf("PersistentBitmaps %+v", bi)
	}
	if err := d.CheckNewPersistentBitmap("b0", 65536); err == nil {
		t.Fatal("a new bitmap may take the in-use bitmap's name")
	}
	if _, err := n.WriteAt(fill(2, 512), 0); err != nil {
		t.Fatal(err)
	}
	if err := d.RemovePersistentBitmap("b0"); err != nil {
		t.Fatal(err)
	}
	n.Unref()
	if bm := mQemuInfo(t, crash).FormatSpecific.Data.Bitmaps; len(bm) != 0 {
		t.Fatalf("bitmaps after removal %+v", bm)
	}
	qemuCheckClean(t, crash)
	compareCheck(t, crash)
}

func containsAll(s string, words ...string) bool {
	for _, w := range words {
		if !strings.Contains(s, w) {
			return false
		}
	}
	return true
}

// TestQcow2BitmapsDirtyLazyImageRepaired: a lazy-refcounts image with a
// persistent bitmap, left dirty and the bitmap in use by a killed qemu-io,
// opens read-write (the automatic repair counts the bitmap's clusters),
// takes writes, and ends qemu-img check clean with the bitmap still
// listed as in use.
func TestQcow2BitmapsDirtyLazyImageRepaired(t *testing.T) {
	needQemu(t)
	img := filepath.Join(t.TempDir(), "lazy.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", img, "64M")
	qemuImg(t, "bitmap", "--add", img, "b0")
	exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 7 0 1M", "-c", "abort", img).Run() // dirty, b0 in use
	if out := string(qemuImg(t, "info", img)); !strings.Contains(out, "in-use") {
		t.Fatalf("setup: b0 not in use:\n%s", out)
	}
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	if _, err := n.WriteAt(fill(9, 65536), 8<<20); err != nil {
		t.Fatal(err)
	}
	n.Unref()
	qemuCheckClean(t, img)
	if out := string(qemuImg(t, "info", img)); !strings.Contains(out, "in-use") || !strings.Contains(out, "b0") {
		t.Fatalf("after repair and write:\n%s", out)
	}
	qemuIO(t, img, "read -P 7 0 1M", "read -P 9 8M 64k")
}

// TestQcow2BitmapsInactivateActivate (migration handoff): Inactivate
// stores the bitmap consistent (QEMU may open the image and sees our
// writes in it), QEMU's writes while we are inactive are tracked by QEMU
// in the same bitmap, and Activate loads them: at close the bitmap holds
// both sides' writes.
func TestQcow2BitmapsInactivateActivate(t *testing.T) {
	img := qemuBitmapImage(t) // dirty: [0,64k), [1M,1M+64k)
	e := blocktest.NewEnv(t, 0)
	n := openQcow2File(t, e, img)
	mustWrite(t, n, 1, 4<<20, 4096)
	if err := n.Inactivate(); err != nil {
		t.Fatalf("Inactivate: %v", err)
	}
	if out := string(qemuImg(t, "info", img)); strings.Contains(out, "in-use") {
		t.Fatalf("bitmap still in use after Inactivate:\n%s", out)
	}
	qemuIO(t, img, "write 6M 4k")
	if err := n.Activate(); err != nil {
		t.Fatalf("Activate: %v", err)
	}
	want := []extent{{0, 64 << 10}, {1 << 20, 64 << 10}, {4 << 20, 64 << 10}, {6 << 20, 64 << 10}}
	if got := ourDirty(n.Bitmap("b0")); !slices.Equal(got, want) {
		t.Fatalf("after Activate: %v, want %v", got, want)
	}
	mustWrite(t, n, 2, 8<<20, 4096)
	if err := n.Unref(); err != nil {
		t.Fatalf("close: %v", err)
	}
	qemuCheckClean(t, img)
	want = append(want, extent{8 << 20, 64 << 10})
	if got := qemuDirty(t, img, "b0"); !slices.Equal(got, want) {
		t.Fatalf("QEMU reads %v, want %v", got, want)
	}
}

// TestCheckNewPersistentBitmapAtSizeLimit: a bitmap whose bits take
// exactly the in-memory limit (2 TiB at 512-byte granularity: 2^32 bits,
// 512 MiB) is allowed, as in QEMU (iotest 190); one more granule of disk
// is not.
func TestCheckNewPersistentBitmapAtSizeLimit(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	e := newTestEnv(t)
	for _, c := range []struct {
		size string
		ok   bool
	}{{"2T", true}, {"2199023256064", false}} { // 2 TiB + 512
		img := filepath.Join(dir, c.size+".qcow2")
		qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "cluster_size=2M", img, c.size)
		n := e.mustOpen(img, false)
		err := n.Driver().(*Driver).CheckNewPersistentBitmap("b1", 512)
		n.Unref()
		if (err == nil) != c.ok {
			t.Errorf("%s at granularity 512: %v, want allowed=%v", c.size, err, c.ok)
		}
	}
}
