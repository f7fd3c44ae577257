package imgcmd

import (
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// Tests for convert beside qemu-img convert 7.2: the output must hold the
// source's data (qemu-img compare), be a consistent image (qemu-img
// check), and be as sparse as qemu-img's own output.

func TestConvertMatchesQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	imgs := makeMapImages(t)
	for _, src := range imgs {
		for _, opts := range [][]string{
			{"-O", "raw"},
			{"-O", "qcow2"},
			{"-O", "qcow2", "-o", "cluster_size=4k"},
			{"-O", "qcow2", "-o", "compat=0.10"},
			{"-O", "qcow2", "-S", "0"},
			{"-O", "raw", "-S", "0"},
			{"-O", "qcow2", "-W", "-m", "16"},
			{"-O", "qcow2", "-m", "1", "-S", "64k"},
			{"-O", "raw", "-t", "unsafe", "-T", "none"},
		} {
			outFmt := opts[1]
			ext := "." + outFmt
			args := append(append([]string{}, opts...), src, "ours"+ext)
			stdout, stderr, code := clitest.Ours(Convert, args...)
			if code != 0 || stdout != "" || stderr != "" {
				t.Errorf("convert %v: exit %d, stdout %q, stderr %q", args, code, stdout, stderr)
				continue
			}
			clitest.MustQemu(t, "qemu-img", append(append([]string{"convert"}, opts...), src, "theirs"+ext)...)
			if out, code := clitest.Qemu(t, "qemu-img", "compare", "-F", outFmt, src, "ours"+ext); code != 0 {
				t.Errorf("convert %v: qemu-img compare with the source: exit %d: %s", args, code, out)
			}
			if outFmt == "qcow2" {
				if out, code := clitest.Qemu(t, "qemu-img", "check", "ours.qcow2"); code != 0 {
					t.Errorf("convert %v: qemu-img check: exit %d: %s", args, code, out)
				}
				// Same allocation (data, zero, unallocated runs) as
				// qemu-img's output; host offsets may differ, and so may
				// file-level holes inside an allocated cluster (a cluster
				// the driver allocated past the end of the file gets only
				// the guest bytes written; the rest is a hole that
				// qemu-img map shows as data+zero).
				if got, want := clusterAllocation(t, "ours.qcow2"), clusterAllocation(t, "theirs.qcow2"); got != want {
					t.Errorf("convert %v: allocation differs from qemu-img's:\n got:\n%s\nwant:\n%s", args, got, want)
				}
			} else {
				checkRawSparse(t, args, "ours.raw", "theirs.raw")
			}
		}
	}
}

// checkRawSparse: every data range of our raw output is data in
// qemu-img's output too (qemu-img also allocates the first 4 KiB of
// every raw image it creates, so ours may have less data, never more).
func checkRawSparse(t *testing.T, args []string, ours, theirs string) {
	t.Helper()
	want := dataRanges(t, theirs)
	for _, r := range dataRanges(t, ours) {
		covered := false
		for _, w := range want {
			if w[0] <= r[0] && r[1] <= w[1] {
				covered = true
				break
			}
		}
		if !covered {
			t.Errorf("convert %v: [%d, %d) is allocated in our output, a hole in qemu-img's (%v)", args, r[0], r[1], want)
		}
	}
}

// TestConvertCompressedReadableByQemu: -c writes compressed clusters that
// QEMU reads back (compare) and accepts (check), and the clusters really
// are compressed (data without a host offset in qemu-img map).
func TestConvertCompressedReadableByQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	imgs := makeMapImages(t)
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "text.raw", "3M")
	clitest.MustQemu(t, "qemu-io", "-f", "raw", "-c", "write -P 0x41 0 1M", "-c", "write -P 0x42 2M 100k", "text.raw")
	// An image whose size is not a multiple of the cluster size: the
	// last cluster is partial.
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "tail.raw", "1000k")
	clitest.MustQemu(t, "qemu-io", "-f", "raw", "-c", "write -P 0x43 900k 100k", "tail.raw")
	for _, src := range append(imgs, "text.raw", "tail.raw") {
		for _, o := range []string{"cluster_size=64k", "cluster_size=4k"} {
			args := []string{"-c", "-O", "qcow2", "-o", o, src, "c.qcow2"}
			_, stderr, code := clitest.Ours(Convert, args...)
			if code != 0 {
				t.Errorf("convert %v: exit %d: %s", args, code, stderr)
				continue
			}
			if out, code := clitest.Qemu(t, "qemu-img", "compare", src, "c.qcow2"); code != 0 {
				t.Errorf("convert %v: qemu-img compare: exit %d: %s", args, code, out)
			}
			if out, code := clitest.Qemu(t, "qemu-img", "check", "c.qcow2"); code != 0 {
				t.Errorf("convert %v: qemu-img check: exit %d: %s", args, code, out)
			}
			if src == "text.raw" {
				compressed := 0
				for _, e := range parseMapJSON(t, clitest.MustQemu(t, "qemu-img", "map", "--output=json", "c.qcow2")) {
					if _, hasOff := e["offset"]; e["data"].(bool) && !hasOff {
						compressed++
					}
				}
				if compressed == 0 {
					t.Errorf("convert %v: no compressed clusters in the output", args)
				}
			}
		}
	}
}

// TestConvertExistingTarget: -n writes into an existing image, zeroing
// what the source has as zeroes, and refuses a smaller target.
func TestConvertExistingTarget(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	makeMapImages(t)
	for _, f := range []string{"qcow2", "raw"} {
		clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", f, "n."+f, "4M")
		clitest.MustQemu(t, "qemu-io", "-f", f, "-c", "write -P 0xee 0 4M", "n."+f)
		args := []string{"-n", "-O", f, "top.qcow2", "n." + f}
		if _, stderr, code := clitest.Ours(Convert, args...); code != 0 {
			t.Fatalf("convert %v: exit %d: %s", args, code, stderr)
		}
		if out, code := clitest.Qemu(t, "qemu-img", "compare", "-F", f, "top.qcow2", "n."+f); code != 0 {
			t.Errorf("convert %v: qemu-img compare: exit %d: %s", args, code, out)
		}
	}
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "small2.qcow2", "1M")
	args := []string{"-n", "-O", "qcow2", "top.qcow2", "small2.qcow2"}
	_, qcode := clitest.Qemu(t, "qemu-img", append([]string{"convert"}, args...)...)
	stdout, stderr, code := clitest.Ours(Convert, args...)
	checkOneLineError(t, "convert", args, stdout, stderr, code, qcode)
}

// TestConvertBackingFile: -B gives the output a backing file and copies
// only what the source's top image allocates, like qemu-img.
func TestConvertBackingFile(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	makeMapImages(t)
	args := []string{"-B", "base.qcow2", "-F", "qcow2", "-O", "qcow2", "top.qcow2", "ours.qcow2"}
	if _, stderr, code := clitest.Ours(Convert, args...); code != 0 {
		t.Fatalf("convert %v: exit %d: %s", args, code, stderr)
	}
	clitest.MustQemu(t, "qemu-img", "convert", "-B", "base.qcow2", "-F", "qcow2", "-O", "qcow2", "top.qcow2", "theirs.qcow2")
	if out, code := clitest.Qemu(t, "qemu-img", "compare", "top.qcow2", "ours.qcow2"); code != 0 {
		t.Errorf("qemu-img compare: exit %d: %s", code, out)
	}
	if got, want := allocation(t, "ours.qcow2"), allocation(t, "theirs.qcow2"); got != want {
		t.Errorf("allocation differs from qemu-img's:\n got:\n%s\nwant:\n%s", got, want)
	}
	info := clitest.ParseJSON(t, "info", clitest.MustQemu(t, "qemu-img", "info", "--output=json", "ours.qcow2"))
	if info["backing-filename"] != "base.qcow2" || info["backing-filename-format"] != "qcow2" {
		t.Errorf("backing file of the output: %v (%v)", info["backing-filename"], info["backing-filename-format"])
	}
}

// TestConvertProgress: -p prints qemu-img's "    (NN.NN/100%)\r" lines
// from 0.00 to 100.00 and a final newline; -q silences it.
func TestConvertProgress(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "p.raw", "40M")
	clitest.MustQemu(t, "qemu-io", "-f", "raw", "-c", "write -P 1 0 30M", "p.raw")
	stdout, stderr, code := clitest.Ours(Convert, "-p", "-O", "qcow2", "p.raw", "p.qcow2")
	if code != 0 {
		t.Fatalf("convert -p: exit %d: %s", code, stderr)
	}
	if !strings.HasPrefix(stdout, "    (0.00/100%)\r") || !strings.HasSuffix(stdout, "    (100.00/100%)\r\n") {
		t.Errorf("convert -p output %q: want 0.00 first and 100.00 and a newline last", stdout)
	}
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\r")
	re := regexp.MustCompile(`^    \(\d{1,3}\.\d\d/100%\)$`)
	for _, l := range lines[:len(lines)-1] {
		if !re.MatchString(l) {
			t.Errorf("convert -p: line %q is not qemu-img's progress format", l)
		}
	}
	if len(lines) < 4 {
		t.Errorf("convert -p of 30 MiB printed %d progress lines, want intermediate steps: %q", len(lines), stdout)
	}
	stdout, _, code = clitest.Ours(Convert, "-p", "-q", "-O", "qcow2", "p.raw", "q.qcow2")
	if code != 0 || stdout != "" {
		t.Errorf("convert -p -q: exit %d, stdout %q, want silence", code, stdout)
	}
}

func TestConvertBadArguments(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "r.raw", "1M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "b.qcow2", "1M")
	clitest.MustQemu(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 4k 64k", "r.raw")
	clitest.MustQemu(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", "r.raw", "r.copy")
	for _, args := range [][]string{
		{"--bogus", "r.raw", "x.raw"},
		{"-z", "r.raw", "x.raw"},
		{"r.raw"},
		{"-O", "foo", "r.raw", "x.raw"},
		{"-c", "-O", "raw", "r.raw", "x.raw"},
		{"-S", "1x", "r.raw", "x.raw"},
		{"-S", "1000", "r.raw", "x.raw"},
		{"-S", "32M", "r.raw", "x.raw"},
		{"-m", "20", "r.raw", "x.raw"},
		{"-t", "foo", "r.raw", "x.raw"},
		{"-T", "foo", "r.raw", "x.raw"},
		{"missing.raw", "x.raw"},
		{"-f", "qcow2", "r.raw", "x.raw"},
		{"-O", "qcow2", "-o", "cluster_size=3k", "r.raw", "x.qcow2"},
		{"-O", "qcow2", "-o", "bogus=1", "r.raw", "x.qcow2"},
		{"-B", "b.qcow2", "-O", "qcow2", "r.raw", "x.qcow2"},
		{"-B", "b.qcow2", "-F", "qcow2", "-O", "raw", "r.raw", "x.raw"},
		{"r.raw", "r.raw"}, // the target is the source
	} {
		_, qcode := clitest.Qemu(t, "qemu-img", append([]string{"convert"}, args...)...)
		stdout, stderr, code := clitest.Ours(Convert, args...)
		checkOneLineError(t, "convert", args, stdout, stderr, code, qcode)
	}
	if out, code := clitest.Qemu(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", "r.raw", "r.copy"); code != 0 {
		t.Errorf("a failed convert changed its source: %s", out)
	}
}

// clusterAllocation is allocation with allocated data runs merged whether
// or not the file reads as zero under them.
func clusterAllocation(t *testing.T, img string) string {
	t.Helper()
	var out []string
	for _, line := range strings.Split(allocation(t, img), "\n") {
		line = strings.Replace(line, "present=true zero=true data=true", "present=true zero=false data=true", 1)
		if n := len(out); n > 0 && line != "" && strings.HasSuffix(line, "present=true zero=false data=true") && strings.HasSuffix(out[n-1], "present=true zero=false data=true") {
			// Merge with the previous data run: sum the lengths.
			var s1, l1, s2, l2 float64
			var rest string
			fmt.Sscanf(strings.Fields(out[n-1])[0], "%g+%g", &s1, &l1)
			fmt.Sscanf(strings.Fields(line)[0], "%g+%g", &s2, &l2)
			if s1+l1 == s2 {
				rest = strings.Join(strings.Fields(line)[1:], " ")
				out[n-1] = fmt.Sprintf("%v+%v %s", s1, l1+l2, rest)
				continue
			}
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n")
}

// TestConvertCompressedFullyAllocated: convert -c -S 0 compresses every
// cluster, zero and unallocated ones included, as qemu-img 7.2 does (its
// map then shows one compressed data run and no zero cluster); with and
// without a backing file in the source chain (iotest 122).
func TestConvertCompressedFullyAllocated(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "s.qcow2", "8M")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x22 0 1M", "-c", "write -P 0 1M 1M", "s.qcow2")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "b.qcow2", "8M")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 4M", "b.qcow2")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "o.qcow2", "8M")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x22 0 1M", "o.qcow2")
	for _, src := range []string{"s.qcow2", "o.qcow2"} {
		clitest.MustQemu(t, "qemu-img", "convert", "-c", "-S", "0", "-O", "qcow2", src, "q.qcow2")
		if _, stderr, code := clitest.Ours(Convert, "-c", "-S", "0", "-O", "qcow2", src, "r.qcow2"); code != 0 {
			t.Fatalf("convert %s: exit %d: %s", src, code, stderr)
		}
		qm := clitest.MustQemu(t, "qemu-img", "map", "--output=json", "q.qcow2")
		rm := clitest.MustQemu(t, "qemu-img", "map", "--output=json", "r.qcow2")
		if qm != rm {
			t.Errorf("convert -c -S 0 %s: map\n%s\nqemu-img's:\n%s", src, rm, qm)
		}
		if out, code := clitest.Qemu(t, "qemu-img", "compare", src, "r.qcow2"); code != 0 {
			t.Errorf("compare %s: %s", src, out)
		}
	}
}

// TestConvertCompressedMisalignedConcat: convert -c of several sources
// that end inside a target cluster (1023 KiB images, 64 KiB clusters)
// works as qemu-img's: one compressed cluster takes the tail of one
// source and the head of the next, unallocated clusters stay so; same
// map and content as qemu-img's output (iotest 122).
func TestConvertCompressedMisalignedConcat(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	for _, img := range []string{"1.qcow2", "2.qcow2"} {
		clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=1024", img, "1023k")
	}
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 16k 16k", "-c", "write -P 0x22 130k 130k", "-c", "write -P 0x33 1022k 1k", "1.qcow2")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x44 0 1k", "2.qcow2")
	clitest.MustQemu(t, "qemu-img", "convert", "-c", "-O", "qcow2", "1.qcow2", "2.qcow2", "q.qcow2")
	if _, stderr, code := clitest.Ours(Convert, "-c", "-O", "qcow2", "1.qcow2", "2.qcow2", "r.qcow2"); code != 0 {
		t.Fatalf("convert: exit %d: %s", code, stderr)
	}
	qm := clitest.MustQemu(t, "qemu-img", "map", "--output=json", "q.qcow2")
	rm := clitest.MustQemu(t, "qemu-img", "map", "--output=json", "r.qcow2")
	if qm != rm {
		t.Errorf("map\n%s\nqemu-img's:\n%s", rm, qm)
	}
	if out, code := clitest.Qemu(t, "qemu-img", "compare", "q.qcow2", "r.qcow2"); code != 0 {
		t.Errorf("compare with qemu-img's output: %s", out)
	}
	if out, code := clitest.Qemu(t, "qemu-img", "check", "r.qcow2"); code != 0 {
		t.Errorf("check: %s", out)
	}
}

// TestConvertTargetIsZero: --target-is-zero (with -n) tells convert that
// the existing target reads as zeroes, so ranges the source reads as
// zeroes are not written. A target that is not zero (the user was wrong)
// keeps its old bytes there, exactly as qemu-img leaves them; without -n,
// or with a backing file, the option is refused in qemu-img's words.
func TestConvertTargetIsZero(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	makeMapImages(t)
	for _, f := range []string{"raw", "qcow2"} {
		for _, side := range []string{"ours", "theirs"} {
			clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", f, side+"."+f, "4M")
			clitest.MustQemu(t, "qemu-io", "-f", f, "-c", "write -P 0xee 0 4M", side+"."+f)
		}
		args := []string{"-n", "--target-is-zero", "-O", f, "top.qcow2"}
		if stdout, stderr, code := clitest.Ours(Convert, append(args, "ours."+f)...); code != 0 || stdout != "" || stderr != "" {
			t.Fatalf("convert %v: exit %d, stdout %q, stderr %q", args, code, stdout, stderr)
		}
		clitest.MustQemu(t, "qemu-img", append(append([]string{"convert"}, args...), "theirs."+f)...)
		if out, code := clitest.Qemu(t, "qemu-img", "compare", "-f", f, "-F", f, "ours."+f, "theirs."+f); code != 0 {
			t.Errorf("convert %v: the target differs from qemu-img's: %s", args, out)
		}
		// The zero ranges kept the target's 0xee: the copy differs from
		// the source.
		if _, code := clitest.Qemu(t, "qemu-img", "compare", "-F", f, "top.qcow2", "ours."+f); code != 1 {
			t.Errorf("convert %v: compare with the source exit %d, want 1 (zero ranges left alone)", args, code)
		}
	}
	args := []string{"--target-is-zero", "-O", "raw", "top.qcow2", "x.raw"}
	qerr := qemuStderr(t, append([]string{"convert"}, args...)...)
	_, qcode := clitest.Qemu(t, "qemu-img", append([]string{"convert"}, args...)...)
	stdout, stderr, code := clitest.Ours(Convert, args...)
	checkOneLineError(t, "convert", args, stdout, stderr, code, qcode)
	if got, want := strings.TrimPrefix(stderr, "ringblk: "), strings.TrimPrefix(qerr, "qemu-img: "); got != want {
		t.Errorf("convert %v: %q, want qemu-img's %q", args, got, want)
	}
	// With a backing file qemu-img 7.2 prints its error and exits 0
	// without writing; we exit 1 (docs/design/commands.md).
	args = []string{"-n", "--target-is-zero", "-B", "base.qcow2", "-F", "qcow2", "-O", "qcow2", "top.qcow2", "ours.qcow2"}
	qerr = qemuStderr(t, append([]string{"convert"}, args...)...)
	stdout, stderr, code = clitest.Ours(Convert, args...)
	checkOneLineError(t, "convert", args, stdout, stderr, code, 1)
	if got, want := strings.TrimPrefix(stderr, "ringblk: "), strings.TrimPrefix(qerr, "qemu-img: "); got != want {
		t.Errorf("convert %v: %q, want qemu-img's %q", args, got, want)
	}
}

// qemuStderr is what qemu-img prints on stderr for args.
func qemuStderr(t *testing.T, args ...string) string {
	t.Helper()
	var errb strings.Builder
	cmd := exec.Command("qemu-img", args...)
	cmd.Stderr = &errb
	_ = cmd.Run() // the exit status is the caller's to compare
	return errb.String()
}
