package imgcmd

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// Tests for `ringblk resize` with qemu-img resize 7.2 as the oracle: the
// same arguments on two identical images, then the exit status, the
// output and qemu-img info's view of both images must agree.

func virtualSize(t *testing.T, img string) float64 {
	t.Helper()
	info := clitest.ParseJSON(t, img, clitest.MustQemu(t, "qemu-img", "info", "-U", "--output=json", img))
	return info["virtual-size"].(float64)
}

// TestResizeMatchesQemuImg: grow and shrink cases both tools handle.
func TestResizeMatchesQemuImg(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	cases := []struct {
		fmt, size string
		args      []string // before FILE; the size comes after it
		newSize   string
	}{
		{"raw", "1M", nil, "2M"},
		{"raw", "1M", []string{"-f", "raw"}, "+1M"},
		{"raw", "1M", []string{"-f", "raw"}, "+1"},
		{"raw", "2M", []string{"-f", "raw"}, "-1M"},
		{"raw", "2M", []string{"-f", "raw", "--shrink"}, "-1M"},
		{"raw", "2M", []string{"--shrink", "-f", "raw"}, "1000"},
		{"raw", "2M", []string{"-f", "raw"}, "1.5M"},
		{"raw", "1M", []string{"-f", "raw"}, "+0"},
		{"raw", "1M", []string{"-f", "raw"}, "0"},
		{"raw", "1M", []string{"-f", "raw", "--shrink"}, "-1M"},
		{"raw", "1M", []string{"-f", "raw"}, "1x"},
		{"raw", "1M", []string{"-q", "-f", "raw"}, "3M"},
		{"raw", "1M", []string{"--preallocation=falloc", "-f", "raw"}, "5M"},
		{"raw", "1M", []string{"--preallocation=full", "-f", "raw"}, "3M"},
		{"raw", "1M", []string{"--preallocation=off", "-f", "raw"}, "3M"},
		{"raw", "1M", []string{"--preallocation=bogus", "-f", "raw"}, "3M"},
		{"raw", "2M", []string{"--shrink", "--preallocation=full", "-f", "raw"}, "1M"},
		{"qcow2", "1M", []string{"-f", "qcow2"}, "+1M"},
		{"qcow2", "1M", nil, "3G"},
		{"qcow2", "1M", []string{"-f", "qcow2"}, "1M"},
		{"qcow2", "1M", []string{"-f", "qcow2"}, "-3M"},
		{"qcow2", "1M", []string{"-f", "qcow2"}, "1000"},
		{"qcow2", "1M", []string{"-f", "qcow2"}, "+1"},
		{"qcow2", "64M", []string{"-f", "qcow2", "-q"}, "+5T"},
	}
	for i, c := range cases {
		name := strings.Join(append(append([]string{c.fmt}, c.args...), c.newSize), "_")
		t.Run(name, func(t *testing.T) {
			a, b := "a"+string(rune('a'+i))+"."+c.fmt, "b"+string(rune('a'+i))+"."+c.fmt
			for _, img := range []string{a, b} {
				clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", c.fmt, img, c.size)
				// Data to keep: written at the start by qemu-io.
				if _, _, code := clitest.QemuIO(t, "-f", c.fmt, "-c", "write -P 0x77 0 64k", img); code != 0 {
					t.Fatal("qemu-io: cannot write the test data")
				}
			}
			qout, qcode := clitest.Qemu(t, "qemu-img", append(append([]string{"resize"}, c.args...), a, c.newSize)...)
			oout, oerr, ocode := clitest.Ours(Resize, append(append([]string{}, c.args...), b, c.newSize)...)
			if qcode != ocode || qout != oout {
				t.Fatalf("exit %d stdout %q stderr %q; qemu-img: exit %d stdout %q", ocode, oout, oerr, qcode, qout)
			}
			if ocode != 0 && (strings.Count(oerr, "\n") != 1 || !strings.HasPrefix(oerr, "ringblk: ")) {
				t.Errorf("error is not one 'ringblk: ' line: %q", oerr)
			}
			if w, g := virtualSize(t, a), virtualSize(t, b); w != g {
				t.Errorf("virtual size %v, qemu-img made %v", g, w)
			}
			if c.fmt == "raw" {
				sa, _ := os.Stat(a)
				sb, _ := os.Stat(b)
				if sa.Size() != sb.Size() {
					t.Errorf("file size %d, qemu-img made %d", sb.Size(), sa.Size())
				}
			} else if out, code := clitest.Qemu(t, "qemu-img", "check", b); code != 0 {
				t.Errorf("qemu-img check after our resize: exit %d\n%s", code, out)
			}
			// The data survives, and what the resize added reads as zeroes.
			size := int64(virtualSize(t, b))
			if st, err := os.Stat(b); err == nil && c.fmt == "raw" {
				size = st.Size() // qemu rounds a raw image's size up to 512
			}
			cmds := []string{"-f", c.fmt, "-c", "read -P 0x77 0 " + resizeItoa(min(size, 65536))}
			if size > 65536 {
				cmds = append(cmds, "-c", "read -P 0 "+resizeItoa(size-min(size-65536, 1<<20))+" "+resizeItoa(min(size-65536, 1<<20)))
			}
			if out, _, code := clitest.QemuIO(t, append(cmds, b)...); code != 0 {
				t.Errorf("data after the resize:\n%s", out)
			}
		})
	}
}

func resizeItoa(v int64) string { return strconv.FormatInt(v, 10) }

// TestResizeQcow2Shrink: resize --shrink of a qcow2 image does what
// qemu-img 7.2's does to the same image: same content and map, a
// check-clean image, the file cut after its last used cluster and the
// clusters freed in its middle given back to the file system (the du of
// both files is the same). A data cluster written first (low in the file)
// for a guest range past the new end makes the middle hole.
func TestResizeQcow2Shrink(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	for _, img := range []string{"q.qcow2", "o.qcow2"} {
		clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "4M")
		if _, _, code := clitest.QemuIO(t, "-f", "qcow2", "-c", "write -P 5 3M 1M", "-c", "write -P 6 0 1M", "-c", "write -P 7 1M 512k", img); code != 0 {
			t.Fatal("qemu-io: cannot write the test data")
		}
	}
	qout, qcode := clitest.Qemu(t, "qemu-img", "resize", "--shrink", "q.qcow2", "1280k")
	oout, oerr, ocode := clitest.Ours(Resize, "-f", "qcow2", "--shrink", "o.qcow2", "-2816k")
	if qcode != 0 || ocode != 0 || qout != oout {
		t.Fatalf("exit %d stdout %q stderr %q; qemu-img: exit %d stdout %q", ocode, oout, oerr, qcode, qout)
	}
	if out, code := clitest.Qemu(t, "qemu-img", "check", "o.qcow2"); code != 0 {
		t.Errorf("qemu-img check after our shrink: exit %d\n%s", code, out)
	}
	if out, code := clitest.Qemu(t, "qemu-img", "compare", "q.qcow2", "o.qcow2"); code != 0 {
		t.Errorf("qemu-img compare with qemu-img's shrink: exit %d\n%s", code, out)
	}
	if w, g := virtualSize(t, "q.qcow2"), virtualSize(t, "o.qcow2"); w != g || g != 1280<<10 {
		t.Errorf("virtual size %v, qemu-img made %v", g, w)
	}
	qm, _ := clitest.Qemu(t, "qemu-img", "map", "--output=json", "q.qcow2")
	om, _ := clitest.Qemu(t, "qemu-img", "map", "--output=json", "o.qcow2")
	if qm != om {
		t.Errorf("map after our shrink:\n%s\nqemu-img's:\n%s", om, qm)
	}
	var sq, so syscall.Stat_t
	if err := syscall.Stat("q.qcow2", &sq); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat("o.qcow2", &so); err != nil {
		t.Fatal(err)
	}
	// Blocks: ext4 may spend one block of its own on an extent tree
	// depending on how the file's extents were split (st_blocks counts
	// 512-byte units, 8 per 4 KiB block), so one block of slack; what the
	// test holds is that the shrink gave the freed clusters back.
	if so.Size != sq.Size || so.Blocks > sq.Blocks+8 {
		t.Errorf("file size %d, %d blocks; qemu-img's shrink left %d, %d blocks", so.Size, so.Blocks, sq.Size, sq.Blocks)
	}
}

// TestResizeRawPreallocation: falloc and full back the new range with
// blocks, off leaves it sparse, and every mode reads zeroes there.
func TestResizeRawPreallocation(t *testing.T) {
	t.Chdir(t.TempDir())
	blocks := func(p string) int64 {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return st.Sys().(*syscall.Stat_t).Blocks * 512
	}
	for _, mode := range []string{"off", "falloc", "full"} {
		p := mode + ".raw"
		if _, errs, code := clitest.Ours(Create, "-q", "-f", "raw", p, "64k"); code != 0 {
			t.Fatalf("create: %s", errs)
		}
		if out, errs, code := clitest.Ours(Resize, "--preallocation="+mode, "-f", "raw", p, "+8M"); code != 0 || out != "Image resized.\n" {
			t.Fatalf("%s: exit %d %q %q", mode, code, out, errs)
		}
		got := blocks(p)
		if mode == "off" && got >= 8<<20 {
			t.Errorf("off: %d bytes allocated, want a sparse file", got)
		}
		if mode != "off" && got < 8<<20 {
			t.Errorf("%s: %d bytes allocated, want at least the 8 MiB added", mode, got)
		}
		data, err := os.ReadFile(p)
		if err != nil || int64(len(data)) != 64<<10+8<<20 || !isZero(data) {
			t.Errorf("%s: %d bytes, err %v; want 8 MiB + 64 KiB of zeroes", mode, len(data), err)
		}
	}
}

// TestResizeBadArguments: one line on stderr, exit status 1.
func TestResizeBadArguments(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := os.WriteFile("r.raw", make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, args := range map[string][]string{
		"no arguments":    {},
		"no size":         {"r.raw"},
		"no file":         {"-f", "raw", "1M"},
		"extra":           {"-f", "raw", "r.raw", "x", "1M"},
		"unknown option":  {"-x", "r.raw", "1M"},
		"bad suffix":      {"-f", "raw", "r.raw", "1Q"},
		"missing file":    {"-f", "raw", "nonexist", "2M"},
		"wrong format":    {"-f", "qcow2", "r.raw", "2M"},
		"unknown format":  {"-f", "vmdk", "r.raw", "2M"},
		"bad prealloc":    {"--preallocation=lots", "-f", "raw", "r.raw", "2M"},
		"shrink no flag":  {"-f", "raw", "r.raw", "-512k"},
		"not positive":    {"-f", "raw", "--shrink", "r.raw", "-1M"},
		"qcow2 prealloc":  {"--preallocation=full", "-f", "qcow2", "r.raw", "2M"},
		"option no value": {"-f"},
	} {
		out, errs, code := clitest.Ours(Resize, args...)
		if code != 1 || out != "" || strings.Count(errs, "\n") != 1 || !strings.HasPrefix(errs, "ringblk: ") ||
			strings.Contains(errs, "goroutine") {
			t.Errorf("%s %v: exit %d stdout %q stderr %q", name, args, code, out, errs)
		}
	}
	if st, err := os.Stat("r.raw"); err != nil || st.Size() != 1<<20 {
		t.Errorf("a refused resize changed r.raw (%v)", err)
	}
	if _, errs, _ := clitest.Ours(Resize, "-f", "raw", "nonexist", "2M"); !strings.Contains(errs, "'nonexist'") ||
		!strings.Contains(errs, "No such file or directory") {
		t.Errorf("missing file: %q does not name the file and the cause", errs)
	}
}

// TestResizeHelp: --help prints the usage with exit status 0.
func TestResizeHelp(t *testing.T) {
	out, errs, code := clitest.Ours(Resize, "--help")
	if code != 0 || errs != "" || !strings.HasPrefix(out, "usage: ringblk resize ") || !strings.Contains(out, "--shrink") {
		t.Errorf("resize --help: exit %d stderr %q stdout %q", code, errs, out)
	}
}

// TestResizeQcow2HidesBacking (issue 14 item 4): growing an overlay over a
// backing file longer than the old size must not expose the backing
// file's bytes in the new area. Raw base of 0xff, 512k overlay, resize to
// 1M: qemu-io must read zeros past 512k, as after qemu-img resize.
func TestResizeQcow2HidesBacking(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "base.raw", "1M")
	if _, _, code := clitest.QemuIO(t, "-f", "raw", "-c", "write -P 0xff 0 1M", "base.raw"); code != 0 {
		t.Fatal("qemu-io: cannot fill the base")
	}
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "ov.qcow2", "512k")
	if out, errs, code := clitest.Ours(Resize, "ov.qcow2", "1M"); code != 0 {
		t.Fatalf("resize: exit %d %q %q", code, out, errs)
	}
	if out, _, code := clitest.QemuIO(t, "-f", "qcow2", "-c", "read -P 0 512k 512k", "-c", "read -P 0xff 0 512k", "ov.qcow2"); code != 0 || strings.Contains(out, "failed") {
		t.Errorf("after resize:\n%s", out)
	}
	clitest.MustQemu(t, "qemu-img", "check", "-q", "ov.qcow2")
}
