package imgcmd

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// Tests for `ringblk bitmap` with qemu-img bitmap 7.2 as the oracle: the
// same command lines on two copies of one image give the same exit code,
// the same message, and the same bitmaps (qemu-img info --output=json), and
// both images stay qemu-img check clean.

// qemuOutErr runs qemu-img and returns its combined output and exit code.
func qemuOutErr(args ...string) (string, int) {
	out, err := exec.Command("qemu-img", args...).CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
	}
	return string(out), code
}

// bitmapsJSON is the "bitmaps" part of qemu-img info --output=json.
func bitmapsJSON(t *testing.T, img string) string {
	t.Helper()
	out := clitest.MustQemu(t, "qemu-img", "info", "--output=json", img)
	i := strings.Index(out, `"bitmaps"`)
	if i < 0 {
		return ""
	}
	j := strings.Index(out[i:], "]\n")
	k := strings.Index(out[i+j+2:], "]")
	return out[i : i+j+2+k+1]
}

func TestBitmapMatchesQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	dir := t.TempDir()
	seed := filepath.Join(dir, "seed.qcow2")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", seed, "64M")
	clitest.MustQemu(t, "qemu-img", "bitmap", "--add", seed, "base")
	clitest.MustQemu(t, "qemu-img", "bitmap", "--add", "-g", "4k", "--disable", seed, "off")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write 0 4k", "-c", "write 5M 1M", seed)
	other := filepath.Join(dir, "other.qcow2")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", other, "64M")
	clitest.MustQemu(t, "qemu-img", "bitmap", "--add", other, "ext")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write 9M 64k", other)
	seedBytes, err := os.ReadFile(seed)
	if err != nil {
		t.Fatal(err)
	}
	steps := [][]string{
		{"--add", "IMG", "new"},
		{"--add", "-g", "512", "IMG", "fine"},
		{"--add", "--granularity", "1M", "--disable", "IMG", "coarse"},
		{"--add", "IMG", "base"},            // exists
		{"--add", "-g", "1000", "IMG", "x"}, // not a power of two
		{"--add", "-g", "4G", "IMG", "x"},
		{"--add", "-g", "1000", "IMG", "base"}, // the granularity first, as QEMU
		{"--add", "IMG", ""},                   // no name, in QEMU's words
		{"--add", "-g", "1000", "IMG", ""},
		{"--merge", "base", "IMG", "new"},
		{"--merge", "base", "IMG", "coarse"},
		{"--merge", "ext", "-b", "OTHER", "-F", "qcow2", "IMG", "fine"},
		{"--merge", "nope", "IMG", "new"},
		{"--merge", "base", "IMG", "nope"},
		{"--clear", "IMG", "base"},
		{"--enable", "IMG", "off"},
		{"--disable", "IMG", "new"},
		{"--remove", "IMG", "nope"},
		{"--remove", "IMG", "off"},
		{"--clear", "--remove", "IMG", "coarse"},
		{"IMG", "base"},
		{"--remove", "-g", "4096", "IMG", "new"},
		{"--remove", "-b", "OTHER", "IMG", "new"},
		{"--merge", "base", "-F", "qcow2", "IMG", "new"},
		{"--remove", "IMG"},
	}
	ours := filepath.Join(dir, "ours.qcow2")
	theirs := filepath.Join(dir, "theirs.qcow2")
	for _, p := range []string{ours, theirs} {
		if err := os.WriteFile(p, seedBytes, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sub := func(args []string, img string) []string {
		out := make([]string, len(args))
		for i, a := range args {
			out[i] = strings.NewReplacer("IMG", img, "OTHER", other).Replace(a)
		}
		return out
	}
	for _, st := range steps {
		_, errs, code := clitest.Ours(Bitmap, sub(st, ours)...)
		qout, qcode := qemuOutErr(append([]string{"bitmap"}, sub(st, theirs)...)...)
		msg := strings.ReplaceAll(strings.TrimPrefix(strings.TrimSpace(errs), "ringblk: "), ours, "IMG")
		qmsg := strings.ReplaceAll(strings.ReplaceAll(strings.TrimPrefix(strings.TrimSpace(qout), "qemu-img: "), theirs, "IMG"), "\n", " ")
		if code != qcode || msg != qmsg {
			t.Errorf("bitmap %q: ours exit %d %q, qemu-img exit %d %q", st, code, msg, qcode, qmsg)
		}
		if a, b := bitmapsJSON(t, ours), bitmapsJSON(t, theirs); a != b {
			t.Fatalf("after %q: bitmaps differ\nours:\n%s\nqemu-img:\n%s", st, a, b)
		}
		for _, p := range []string{ours, theirs} {
			if out, code := qemuOutErr("check", p); code != 0 {
				t.Fatalf("after %q: qemu-img check %s: exit %d\n%s", st, p, code, out)
			}
		}
	}
	// The dirty bits agree too, as qemu-nbd exports them.
	if _, err := exec.LookPath("nbdinfo"); err != nil {
		t.Skip("nbdinfo not installed: bit contents not compared")
	}
	maps := func(img, name string) string {
		out, err := exec.Command("nbdinfo", "--map=qemu:dirty-bitmap:"+name, "--",
			"[", "qemu-nbd", "-r", "-f", "qcow2", "-B", name, img, "]").CombinedOutput()
		if err != nil {
			t.Fatalf("nbdinfo %s %s: %v\n%s", img, name, err, out)
		}
		return string(out)
	}
	for _, name := range []string{"base", "new", "fine"} {
		a, b := maps(ours, name), maps(theirs, name)
		if a != b || !strings.Contains(a, "dirty") && name != "base" {
			t.Errorf("bitmap %s: ours\n%s\nqemu-img's\n%s", name, a, b)
		}
	}
}

// TestInfoBitmapsMatchQemu: `ringblk info` prints the bitmaps exactly as
// qemu-img info does, human and JSON: flags (none, auto, in-use and
// auto), names, granularities; and none when autoclear bit 0 is clear.
func TestInfoBitmapsMatchQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	dir := t.TempDir()
	img := filepath.Join(dir, "i.qcow2")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "64M")
	clitest.MustQemu(t, "qemu-img", "bitmap", "--add", "-g", "4k", "--disable", img, "off")
	clitest.MustQemu(t, "qemu-img", "bitmap", "--add", img, "on")
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	h, err := format.ParseHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	inUse := append([]byte(nil), b...)
	// Second directory entry's flags: entry 0 is 24 bytes plus "off"
	// padded to 32.
	inUse[h.Bitmaps.DirectoryOffset+32+15] |= 1
	noBit := append([]byte(nil), b...)
	noBit[88+7] &^= 1
	for name, data := range map[string][]byte{"plain": b, "in-use": inUse, "autoclear-clear": noBit} {
		p := filepath.Join(dir, name+".qcow2")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{p}, {"--output=json", p}} {
			ours, errs, code := clitest.Ours(Info, args...)
			want, qcode := clitest.Qemu(t, "qemu-img", append([]string{"info"}, args...)...)
			if name == "in-use" && !strings.Contains(ours, "in-use") || name == "autoclear-clear" && strings.Contains(ours, "bitmaps") {
				t.Errorf("%s %v: bitmaps not shown as expected:\n%s", name, args, ours)
			}
			if code != 0 || qcode != 0 || ours != want {
				t.Errorf("%s %v: exit %d %s\nours:\n%s\nqemu-img:\n%s", name, args, code, errs, ours, want)
			}
		}
	}
}

// TestBitmapMergeFromOverlayAndImageOpts: as qemu-img bitmap (the
// sequence of qemu-iotests qemu-img-bitmaps): a merge whose source (-b)
// is the overlay of the image being changed opens that source sharing
// writes, so its backing chain does not collide with the target's lock;
// and --image-opts names the image by options. Before, the first failed
// with 'Failed to get shared "write" lock' and the second took the
// options for a file name.
func TestBitmapMergeFromOverlayAndImageOpts(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	for _, side := range []string{"ours", "qemu-img"} {
		dir := t.TempDir()
		base, top := filepath.Join(dir, "t.qcow2.base"), filepath.Join(dir, "t.qcow2")
		clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "10M")
		clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
		clitest.MustQemu(t, "qemu-img", "bitmap", "--add", top, "b2")
		clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write 2M 1M", top)
		run := func(args ...string) {
			t.Helper()
			if side == "ours" {
				if _, errs, code := clitest.Ours(Bitmap, args...); code != 0 {
					t.Fatalf("ours: bitmap %q: exit %d %s", args, code, errs)
				}
			} else if out, code := qemuOutErr(append([]string{"bitmap"}, args...)...); code != 0 {
				t.Fatalf("qemu-img bitmap %q: exit %d %s", args, code, out)
			}
		}
		run("--add", "--merge", "b2", "-b", top, "-F", "qcow2", "-f", "qcow2", base, "b3")
		run("--add", "-f", "qcow2", top, "tmp")
		run("--remove", "--image-opts", "driver=qcow2,file.driver=file,file.filename="+top, "tmp")
		if b, tp := bitmapNames(t, base), bitmapNames(t, top); b != "b3" || tp != "b2" {
			t.Errorf("%s: bitmaps afterwards: base %q, top %q; want b3 and b2", side, b, tp)
		}
	}
}

// bitmapNames lists img's bitmaps by name, as qemu-img info reports them.
func bitmapNames(t *testing.T, img string) string {
	t.Helper()
	var info struct {
		FormatSpecific struct {
			Data struct {
				Bitmaps []struct{ Name string }
			}
		} `json:"format-specific"`
	}
	if err := json.Unmarshal([]byte(clitest.MustQemu(t, "qemu-img", "info", "-U", "--output=json", img)), &info); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, b := range info.FormatSpecific.Data.Bitmaps {
		names = append(names, b.Name)
	}
	return strings.Join(names, " ")
}
