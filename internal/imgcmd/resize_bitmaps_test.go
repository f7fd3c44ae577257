package imgcmd

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"strings"
	"testing"

	qfmt "github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// bitmapImage makes img: 1 MiB qcow2 with b0 (enabled, 64 KiB) and b1
// (disabled, 512 bytes), b0 dirty at 0 and 960k, b1 at 960k.
func bitmapImage(t *testing.T, img string) {
	t.Helper()
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "1M")
	clitest.MustQemu(t, "qemu-img", "bitmap", "--add", img, "b0")
	clitest.MustQemu(t, "qemu-img", "bitmap", "--add", "-g", "512", "--disable", img, "b1")
	if _, _, code := clitest.QemuIO(t, "-f", "qcow2", "-c", "write 0 64k", img); code != 0 {
		t.Fatal("qemu-io write")
	}
	clitest.MustQemu(t, "qemu-img", "bitmap", "--enable", img, "b1")
	if _, _, code := clitest.QemuIO(t, "-f", "qcow2", "-c", "write 960k 64k", img); code != 0 {
		t.Fatal("qemu-io write")
	}
	clitest.MustQemu(t, "qemu-img", "bitmap", "--disable", img, "b1")
}

// bitmapSection is qemu-img info's text from "bitmaps:" to the line after
// the list.
func bitmapSection(t *testing.T, img string) string {
	t.Helper()
	out, code := clitest.Qemu(t, "qemu-img", "info", img)
	i, j := strings.Index(out, "    bitmaps:"), strings.Index(out, "    refcount bits")
	if code != 0 || i < 0 || j < i {
		t.Fatalf("qemu-img info %s: exit %d\n%s", img, code, out)
	}
	return out[i:j]
}

// TestResizeBitmapsMatchQemuImg: resize of a qcow2 image with an enabled
// and a disabled persistent bitmap, growing (within one bitmap table
// cluster, and by 7G, which needs larger tables) and shrinking, does what
// qemu-img resize 7.2 does to the same image: same exit and output, same
// virtual size, the bitmaps listed alike, check clean, and QEMU opens the
// result read-write (it loads the bitmaps, whose tables it checks against
// the new size) and writes to it. The bits themselves are compared with
// qemu-storage-daemon's reading by drivers/qcow2's TestQcow2BitmapsResize.
// With a bitmap left in use by a crash both refuse, growing or shrinking,
// with the same two lines as a drop-in. Before, every resize here was
// refused ("a dirty bitmap does not cover the new size", "Cannot resize
// an image with persistent bitmaps").
func TestResizeBitmapsMatchQemuImg(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	for i, args := range [][]string{{"2M"}, {"--shrink", "960K"}, {"--shrink", "1000K"}, {"+7G"}} {
		a, b := "a"+string(rune('a'+i))+".qcow2", "b"+string(rune('a'+i))+".qcow2"
		bitmapImage(t, a)
		bitmapImage(t, b)
		file := func(img string) []string {
			if args[0] == "--shrink" {
				return []string{"--shrink", img, args[1]}
			}
			return []string{img, args[0]}
		}
		qout, qcode := clitest.Qemu(t, "qemu-img", append([]string{"resize"}, file(a)...)...)
		oout, oerr, ocode := clitest.Ours(Resize, file(b)...)
		if qcode != 0 || ocode != 0 || qout != oout {
			t.Fatalf("%v: exit %d stdout %q stderr %q; qemu-img: exit %d stdout %q", args, ocode, oout, oerr, qcode, qout)
		}
		if w, g := virtualSize(t, a), virtualSize(t, b); w != g {
			t.Errorf("%v: virtual size %v, qemu-img made %v", args, g, w)
		}
		if w, g := bitmapSection(t, a), bitmapSection(t, b); w != g {
			t.Errorf("%v: qemu-img info bitmaps\n%s\nqemu-img's image\n%s", args, g, w)
		}
		if out, code := clitest.Qemu(t, "qemu-img", "check", b); code != 0 {
			t.Errorf("%v: qemu-img check after our resize: exit %d\n%s", args, code, out)
		}
		// QEMU opens our image read-write (its bitmaps load, or the open
		// fails) and marks a write past the old end in b0.
		for _, img := range []string{a, b} {
			if out, _, code := clitest.QemuIO(t, "-f", "qcow2", "-c", "write 0 512", img); code != 0 {
				t.Fatalf("%v: qemu-io on %s:\n%s", args, img, out)
			}
		}
		if w, g := bitmapSection(t, a), bitmapSection(t, b); w != g {
			t.Errorf("%v: after a QEMU write, qemu-img info bitmaps\n%s\nqemu-img's image\n%s", args, g, w)
		}
	}

	// A bitmap left in use (what a kill -9 of a writer leaves): both
	// refuse, qemu-img's two lines word for word.
	bitmapImage(t, "u.qcow2")
	setInUse(t, "u.qcow2")
	for _, args := range [][]string{{"u.qcow2", "2M"}, {"--shrink", "u.qcow2", "512K"}} {
		cmd := exec.Command("qemu-img", append([]string{"resize"}, args...)...)
		var qerr bytes.Buffer
		cmd.Stderr = &qerr
		if err := cmd.Run(); err == nil {
			t.Fatalf("qemu-img resize %v with an in-use bitmap succeeded", args)
		}
		want := "qemu-img: Bitmap 'b0' is inconsistent and cannot be used\nTry block-dirty-bitmap-remove to delete this bitmap from disk\n"
		if qerr.String() != want {
			t.Fatalf("qemu-img resize %v: %q, this test expects %q", args, qerr.String(), want)
		}
		_, oerr, ocode := runAsQemuImg(t, append([]string{"resize"}, args...)...)
		if ocode != 1 || oerr != want {
			t.Errorf("drop-in resize %v: exit %d stderr %q, want 1 and %q", args, ocode, oerr, want)
		}
		_, oerr, ocode = clitest.Ours(Resize, args...)
		if ocode != 1 || !strings.Contains(oerr, "Bitmap 'b0' is inconsistent and cannot be used") || strings.Count(oerr, "\n") != 1 {
			t.Errorf("ringblk resize %v: exit %d stderr %q", args, ocode, oerr)
		}
	}
	if g := virtualSize(t, "u.qcow2"); g != 1<<20 {
		t.Errorf("virtual size %v after refused resizes", g)
	}
}

// setInUse sets the in_use flag of every entry of img's bitmap directory,
// as a writer killed while the image was open leaves it.
func setInUse(t *testing.T, img string) {
	t.Helper()
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	h, err := qfmt.ParseHeader(data[:64<<10])
	if err != nil || h.Bitmaps == nil {
		t.Fatalf("header: %v, bitmaps %v", err, h)
	}
	entries, err := qfmt.ReadBitmapDirectory(bytes.NewReader(data), h, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	p := h.Bitmaps.DirectoryOffset
	for i := range entries {
		e := &entries[i]
		binary.BigEndian.PutUint32(data[p+12:], e.Flags|qfmt.BitmapInUse)
		p += qfmt.BitmapDirectoryEntrySize(e)
	}
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
