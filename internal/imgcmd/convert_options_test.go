package imgcmd

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// Tests of the convert options qemu-img 7.2 has beside the copy itself:
// -r, -C, --salvage, --bitmaps (--skip-broken-bitmaps) and
// --target-image-opts, side by side with qemu-img.

// TestConvertOptionRefusalsMatchQemu: every combination qemu-img refuses
// is refused with its message and exit status, and -r reads its value
// as qemu-img does (suffixes, fractions, hex, the range).
func TestConvertOptionRefusalsMatchQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "s.qcow2", "1M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "s.raw", "1M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "e.raw", "1M")
	for _, args := range [][]string{
		{"-C", "-c", "-O", "qcow2", "s.qcow2", "t.img"},
		{"-C", "-S", "4k", "s.qcow2", "t.img"},
		{"-C", "--salvage", "s.qcow2", "t.img"},
		{"--skip-broken-bitmaps", "s.qcow2", "t.img"},
		{"--skip-broken-bitmaps", "-C", "-c", "s.qcow2", "t.img"},
		{"--target-image-opts", "s.qcow2", "t.img"},
		{"--target-image-opts", "-O", "raw", "-n", "s.qcow2", "driver=raw,file.filename=e.raw"},
		{"-c", "--target-image-opts", "-n", "s.qcow2", "driver=raw,file.filename=e.raw"},
		{"--target-image-opts", "-n", "s.qcow2", "driver=qcow2,file.filename=nope.qcow2"},
		{"--target-image-opts", "-n", "s.qcow2", "driver=qcow2,file.filename=e.raw"},
		{"--bitmaps", "s.qcow2", "t.img"},
		{"--bitmaps", "-f", "raw", "-O", "qcow2", "s.raw", "t.img"},
		{"--bitmaps", "-O", "qcow2", "s.qcow2", "s.qcow2", "t.img"},
		{"--bitmaps", "-n", "--target-image-opts", "s.qcow2", "driver=raw,file.filename=e.raw"},
		{"-c", "-O", "raw", "s.qcow2", "t.img"},
		{"--rate-limit", "1M", "s.qcow2", "t.img"},
		{"--s", "s.qcow2", "t.img"},
		{"-r", "1x", "s.qcow2", "t.img"},
		{"-r", "-1", "s.qcow2", "t.img"},
		{"-r", "", "s.qcow2", "t.img"},
		{"-r", "1.5", "s.qcow2", "t.img"},
		{"-r", "1.5b", "s.qcow2", "t.img"},
		{"-r", "0x", "s.qcow2", "t.img"},
		{"-r", "99999999999999999999", "s.qcow2", "t.img"},
		{"-r", "0xffffffffffffffffff", "s.qcow2", "t.img"},
		{"-r", "8E", "s.qcow2", "t.img"},
		{"-r", "7E", "s.qcow2", "t.img"},
		{"-r", "1.5k", "s.qcow2", "t.img"},
		{"-r", "0x10", "s.qcow2", "t.img"},
		{"-r", "1.0", "s.qcow2", "t.img"},
		{"-r", "0", "s.qcow2", "t.img"},
	} {
		os.Remove("t.img")
		qemuAndOurs(t, append([]string{"convert"}, args...)...)
	}
}

// TestConvertSalvageMatchesQemu: with --salvage a source whose reads
// fail in places (blkdebug failing three host sectors of a qcow2 image)
// is copied with those sectors as zeroes, one warning per failed sector
// as qemu-img prints them, and exit 0; -q keeps the warnings quiet;
// without --salvage the convert fails.
func TestConvertSalvageMatchesQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "q.qcow2", "4M")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x41 0 4M", "q.qcow2")
	m := parseMapJSON(t, clitest.MustQemu(t, "qemu-img", "map", "--output=json", "q.qcow2"))
	if len(m) != 1 {
		t.Fatalf("q.qcow2 is not one contiguous extent: %v", m)
	}
	host := int64(m[0]["offset"].(float64)) // guest 0 is here in the file
	// Host sectors 1 MiB and 1 MiB + 512 of guest data, and one at 3 MiB.
	failed := []int64{1 << 20, 1<<20 + 512, 3 << 20}
	var conf strings.Builder
	for _, g := range failed {
		conf.WriteString("[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\nsector = \"" + strconv.FormatInt((host+g)/512, 10) + "\"\n")
	}
	if err := os.WriteFile("bd.conf", []byte(conf.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	src := "blkdebug:bd.conf:q.qcow2"
	for _, extra := range [][]string{nil, {"-q"}} {
		args := append(append([]string{"convert", "--salvage"}, extra...), "-O", "raw", src, "out.raw")
		want, wcode := qemuImgAll(t, args...)
		if err := os.Rename("out.raw", "theirs.raw"); err != nil {
			t.Fatal(err)
		}
		o, e, code := runAsQemuImg(t, args...)
		// The warnings come from parallel reads: their order is the
		// tools' scheduling, not part of the behaviour.
		if got := sortedLines(o + e); got != sortedLines(want) || code != wcode || code != 0 {
			t.Errorf("%v: exit %d, output\n%s\nqemu-img: exit %d, output\n%s", args, code, got, wcode, want)
		}
		if n := strings.Count(e, "warning: error while reading offset"); extra == nil && n != len(failed) {
			t.Errorf("%v: %d warnings, want one per failed sector (%d):\n%s", args, n, len(failed), e)
		}
		ours, err := os.ReadFile("out.raw")
		if err != nil {
			t.Fatal(err)
		}
		theirs, err := os.ReadFile("theirs.raw")
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ours, theirs) {
			t.Errorf("%v: output differs from qemu-img's", args)
		}
		for _, g := range failed {
			if !isZero(ours[g:g+512]) || ours[g-1] != 0x41 && g-1 != failed[0]+511 {
				t.Errorf("%v: failed sector at %d not zero, or its neighbour not data", args, g)
			}
		}
		if len(ours) != 4<<20 || ours[0] != 0x41 || ours[2<<20] != 0x41 {
			t.Errorf("%v: the readable data was not copied", args)
		}
	}
	args := []string{"convert", "-O", "raw", src, "out.raw"}
	if _, code := qemuImgAll(t, args...); code != 1 {
		t.Fatalf("qemu-img %v: exit %d, want 1", args, code)
	}
	if _, e, code := runAsQemuImg(t, args...); code != 1 || !strings.Contains(e, "Input/output error") {
		t.Errorf("%v without --salvage: exit %d, stderr %q; want the read error", args, code, e)
	}
}

func sortedLines(s string) string {
	l := strings.Split(s, "\n")
	slices.Sort(l)
	return strings.Join(l, "\n")
}

// TestConvertRateLimit: -r 2M writes 6 MiB in about two seconds (the
// first 2 MiB request goes at once, each later one waits for the bucket
// to drain, as in qemu-img, whose run takes 2.0 s here); an unlimited
// convert takes a fraction of that. Progress still runs from 0 to 100.
func TestConvertRateLimit(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "d.raw", "6M")
	clitest.MustQemu(t, "qemu-io", "-f", "raw", "-c", "write -P 7 0 6M", "d.raw")
	start := time.Now()
	stdout, stderr, code := clitest.Ours(Convert, "-r", "2M", "-p", "-O", "qcow2", "d.raw", "r.qcow2")
	el := time.Since(start)
	if code != 0 {
		t.Fatalf("convert -r 2M: exit %d: %s", code, stderr)
	}
	// 4 MiB must drain at 2 MiB/s before the last request: at least
	// 1.5 s even with timer slack; a generous ceiling for a busy machine.
	if el < 1500*time.Millisecond || el > 30*time.Second {
		t.Errorf("convert -r 2M of 6 MiB took %v, want about 2 s", el)
	}
	if !strings.HasPrefix(stdout, "    (0.00/100%)\r") || !strings.HasSuffix(stdout, "    (100.00/100%)\r\n") || !strings.Contains(stdout, "(33.33/100%)") {
		t.Errorf("convert -r -p: progress %q", stdout)
	}
	if out, code := clitest.Qemu(t, "qemu-img", "compare", "d.raw", "r.qcow2"); code != 0 {
		t.Errorf("qemu-img compare: exit %d: %s", code, out)
	}
}

// TestConvertCopyOffload: -C between raw files copies the data ranges
// with copy_file_range (counted), keeps holes, and produces the source's
// contents; to a qcow2 target it falls back to reading and writing.
func TestConvertCopyOffload(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "s.raw", "8M")
	clitest.MustQemu(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", "-c", "write -P 0x6b 5M 3M", "s.raw")
	before := copyRangeBytes.Load()
	if _, stderr, code := clitest.Ours(Convert, "-C", "-f", "raw", "-O", "raw", "s.raw", "c.raw"); code != 0 {
		t.Fatalf("convert -C: exit %d: %s", code, stderr)
	}
	if got := copyRangeBytes.Load() - before; got != 4<<20 {
		t.Errorf("convert -C raw to raw offloaded %d bytes, want the 4 MiB of data", got)
	}
	a, _ := os.ReadFile("s.raw")
	b, _ := os.ReadFile("c.raw")
	if !bytes.Equal(a, b) {
		t.Errorf("convert -C: the copy differs from the source")
	}
	clitest.MustQemu(t, "qemu-img", "convert", "-C", "-f", "raw", "-O", "raw", "s.raw", "theirs.raw")
	checkRawSparse(t, []string{"-C"}, "c.raw", "theirs.raw")
	before = copyRangeBytes.Load()
	if _, stderr, code := clitest.Ours(Convert, "-C", "-f", "raw", "-O", "qcow2", "s.raw", "c.qcow2"); code != 0 {
		t.Fatalf("convert -C -O qcow2: exit %d: %s", code, stderr)
	}
	if got := copyRangeBytes.Load() - before; got != 0 {
		t.Errorf("convert -C to qcow2 offloaded %d bytes to a raw file call", got)
	}
	if out, code := clitest.Qemu(t, "qemu-img", "compare", "s.raw", "c.qcow2"); code != 0 {
		t.Errorf("convert -C -O qcow2: qemu-img compare: exit %d: %s", code, out)
	}
}

// bitmapSource makes a qcow2 image with persistent bitmaps of several
// granularities, one disabled, with dirty bits from writes.
func bitmapSource(t *testing.T, name string) {
	t.Helper()
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", name, "16M")
	clitest.MustQemu(t, "qemu-img", "bitmap", "--add", name, "aa")
	clitest.MustQemu(t, "qemu-img", "bitmap", "--add", "-g", "4k", "--disable", name, "bb")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 1 0 64k", name)
	clitest.MustQemu(t, "qemu-img", "bitmap", "--enable", name, "bb")
	clitest.MustQemu(t, "qemu-img", "bitmap", "--add", "-g", "512", name, "cc")
	clitest.MustQemu(t, "qemu-img", "bitmap", "--add", "-g", "1M", "--disable", name, "dd")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 2 3M 5k", "-c", "write -P 3 9M 1M", name)
	clitest.MustQemu(t, "qemu-img", "bitmap", "--disable", name, "bb")
}

// markInUse sets the in_use flag of the directory entries named.
func markInUse(t *testing.T, img string, names ...string) {
	t.Helper()
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	h, err := format.ParseHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	p := int64(h.Bitmaps.DirectoryOffset)
	for range h.Bitmaps.Count {
		nameLen := int64(b[p+18])<<8 | int64(b[p+19])
		extra := int64(b[p+20])<<24 | int64(b[p+21])<<16 | int64(b[p+22])<<8 | int64(b[p+23])
		for _, n := range names {
			if string(b[p+24+extra:p+24+extra+nameLen]) == n {
				b[p+15] |= 1
			}
		}
		p += (24 + extra + nameLen + 7) &^ 7
	}
	if err := os.WriteFile(img, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestConvertBitmapsMatchQemu: --bitmaps gives the target the source's
// persistent bitmaps as qemu-img convert --bitmaps does (qemu-img info's
// names, flags and granularities; the dirty bits as qemu-nbd exports
// them; a clean check), refuses inconsistent ones unless
// --skip-broken-bitmaps (then skipped with qemu-img's warnings), and an
// existing target's bitmap of the same name with qemu-img's message.
func TestConvertBitmapsMatchQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	bitmapSource(t, "src.qcow2")
	for _, extra := range [][]string{nil, {"-c"}, {"-O", "qcow2", "-o", "cluster_size=4k"}} {
		os.Remove("ours.qcow2")
		args := append(append([]string{"--bitmaps", "-O", "qcow2"}, extra...), "src.qcow2")
		if _, stderr, code := clitest.Ours(Convert, append(args, "ours.qcow2")...); code != 0 {
			t.Fatalf("convert %v: exit %d: %s", args, code, stderr)
		}
		clitest.MustQemu(t, "qemu-img", append(append([]string{"convert"}, args...), "theirs.qcow2")...)
		if a, b := infoNoPaths(t, "ours.qcow2"), infoNoPaths(t, "theirs.qcow2"); a != b || !strings.Contains(a, `"dd"`) {
			t.Errorf("convert %v: bitmaps\nours:\n%s\nqemu-img's:\n%s", args, a, b)
		}
		if out, code := clitest.Qemu(t, "qemu-img", "check", "ours.qcow2"); code != 0 {
			t.Errorf("convert %v: qemu-img check: exit %d: %s", args, code, out)
		}
		if out, code := clitest.Qemu(t, "qemu-img", "compare", "src.qcow2", "ours.qcow2"); code != 0 {
			t.Errorf("convert %v: qemu-img compare: exit %d: %s", args, code, out)
		}
		if _, err := exec.LookPath("nbdinfo"); err != nil {
			continue
		}
		for _, name := range []string{"aa", "bb", "cc", "dd"} {
			a, b := nbdDirty(t, "ours.qcow2", name), nbdDirty(t, "theirs.qcow2", name)
			if a != b || !strings.Contains(a, "dirty") && name != "dd" {
				t.Errorf("convert %v: bitmap %s: ours\n%s\nqemu-img's\n%s", args, name, a, b)
			}
		}
		os.Remove("theirs.qcow2")
	}

	// Inconsistent bitmaps, and a target that has the names already.
	data, err := os.ReadFile("src.qcow2")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("inuse.qcow2", data, 0o644); err != nil {
		t.Fatal(err)
	}
	markInUse(t, "inuse.qcow2", "bb", "dd")
	for _, args := range [][]string{
		{"convert", "--bitmaps", "-O", "qcow2", "inuse.qcow2", "t.qcow2"},
		{"convert", "--bitmaps", "--skip-broken-bitmaps", "-O", "qcow2", "inuse.qcow2", "t.qcow2"},
		{"convert", "--bitmaps", "-n", "-O", "qcow2", "src.qcow2", "t.qcow2"},
	} {
		want, wcode := qemuImgAll(t, args...)
		wantBitmaps := infoNoPaths(t, "t.qcow2")
		os.Remove("t.qcow2")
		if args[2] == "-n" {
			clitest.MustQemu(t, "qemu-img", "convert", "--bitmaps", "--skip-broken-bitmaps", "-O", "qcow2", "inuse.qcow2", "t.qcow2")
		}
		o, e, code := runAsQemuImg(t, args...)
		if got := o + e; got != want || code != wcode {
			t.Errorf("%v: exit %d, output\n%s\nqemu-img: exit %d, output\n%s", args, code, got, wcode, want)
		}
		if got := infoNoPaths(t, "t.qcow2"); got != wantBitmaps {
			t.Errorf("%v: bitmaps\nours:\n%s\nqemu-img's:\n%s", args, got, wantBitmaps)
		}
	}
}

// infoNoPaths is qemu-img info --output=json of img without the lines
// that name files or count their bytes ("" when img does not exist).
func infoNoPaths(t *testing.T, img string) string {
	t.Helper()
	if _, err := os.Stat(img); err != nil {
		return ""
	}
	var keep []string
	for _, l := range strings.Split(clitest.MustQemu(t, "qemu-img", "info", "--output=json", img), "\n") {
		if !strings.Contains(l, "filename") && !strings.Contains(l, "actual-size") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// nbdDirty is bitmap name of img as qemu-nbd exports it (nbdinfo --map).
func nbdDirty(t *testing.T, img, name string) string {
	t.Helper()
	out, err := exec.Command("nbdinfo", "--map=qemu:dirty-bitmap:"+name, "--",
		"[", "qemu-nbd", "-r", "-f", "qcow2", "-B", name, img, "]").CombinedOutput()
	if err != nil {
		t.Fatalf("nbdinfo %s %s: %v\n%s", img, name, err, out)
	}
	return string(out)
}

// TestConvertTargetImageOpts: with --target-image-opts (and -n) the
// target is named by its options: the data lands in the file they name,
// in the format they name.
func TestConvertTargetImageOpts(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	makeMapImages(t)
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "t.qcow2", "4M")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xee 0 4M", "t.qcow2")
	dir, _ := os.Getwd()
	for _, opts := range []string{
		"driver=qcow2,file.filename=t.qcow2",
		"driver=qcow2,file.driver=file,file.filename=" + filepath.Join(dir, "t.qcow2"),
	} {
		args := []string{"-n", "--target-image-opts", "top.qcow2", opts}
		if _, stderr, code := clitest.Ours(Convert, args...); code != 0 {
			t.Fatalf("convert %v: exit %d: %s", args, code, stderr)
		}
		if out, code := clitest.Qemu(t, "qemu-img", "compare", "-F", "qcow2", "top.qcow2", "t.qcow2"); code != 0 {
			t.Errorf("convert %v: qemu-img compare: exit %d: %s", args, code, out)
		}
		clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xee 0 4M", "t.qcow2")
	}
	_, stderr, code := clitest.Ours(Convert, "--target-image-opts", "top.qcow2", "driver=qcow2,file.filename=t.qcow2")
	if code != 1 || !regexp.MustCompile(`^ringblk: --target-image-opts requires use of -n flag\n$`).MatchString(stderr) {
		t.Errorf("--target-image-opts without -n: exit %d, %q", code, stderr)
	}
}
