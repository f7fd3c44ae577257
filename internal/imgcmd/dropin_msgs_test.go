package imgcmd

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// qemuAndOurs runs qemu-img and ringblk (as qemu-img: the same program
// name in messages) with the same arguments and compares stdout+stderr
// and the exit status.
func qemuAndOurs(t *testing.T, args ...string) {
	t.Helper()
	want, wcode := qemuImgAll(t, args...)
	o, e, code := runAsQemuImg(t, args...)
	if got := o + e; got != want || code != wcode {
		t.Errorf("%v: exit %d, output\n%s\nqemu-img: exit %d, output\n%s", args, code, got, wcode, want)
	}
}

// TestCreateMessagesMatchQemu: option values qemu-img's qcow2 driver
// checks are refused after the "Formatting" line (079, 112, 049); sizes
// read as qemu-img reads them (049); a backing file without a format is
// opened first, then refused (111); a backing loop in info (043).
func TestCreateMessagesMatchQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img")
	t.Chdir(t.TempDir())
	for _, args := range [][]string{
		{"create", "-f", "qcow2", "-o", "cluster_size=4M", "a.qcow2", "64M"},
		{"create", "-f", "qcow2", "-o", "refcount_bits=42", "a.qcow2", "64M"},
		{"create", "-f", "qcow2", "-o", "compat=0.10,refcount_bits=8", "a.qcow2", "64M"},
		{"create", "-f", "qcow2", "-o", "compat=0.42", "a.qcow2", "64M"},
		{"create", "-f", "qcow2", "-o", "preallocation=1234", "a.qcow2", "64M"},
		{"create", "-f", "qcow2", "a.qcow2", "1E"},
		{"create", "-f", "qcow2", "a.qcow2", "1.5k"},
		{"create", "-f", "qcow2", "a.qcow2", "1024.0"},
		{"create", "-f", "qcow2", "a.qcow2", "foo"},
		{"create", "-f", "qcow2", "-b", "missing.qcow2", "a.qcow2"},
		{"create", "-f", "raw", "b.raw", "1M"},
		{"create", "-f", "qcow2", "-b", "b.raw", "a.qcow2"},
		{"create", "-f", "qcow2", "file:c:d.qcow2", "1M"},
		{"create", "-f", "raw", "-o", "preallocation=off,extent_size_hint=0", "e.raw", "128K"},
		{"create", "-f", "raw", "-o", "extent_size_hint=1M", "e.raw", "128K"},
		{"create", "-f", "qcow2", "-o", "extent_size_hint=0", "a.qcow2", "128K"},
		{"create", "-f", "qcow2", "-o", "extent_size_hint=0,cluster_size=4M", "a.qcow2", "128K"},
		{"info", "file:c:d.qcow2"},
	} {
		os.Remove("a.qcow2")
		qemuAndOurs(t, args...)
	}
}

// TestConvertSeveralSourcesAndBackingOptions: sources concatenated in
// order (122); -o backing_file=/backing_fmt= as -B/-F (019, 122); -n
// with -B.
func TestConvertSeveralSourcesAndBackingOptions(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img", "qemu-io")
	t.Chdir(t.TempDir())
	for i, p := range []string{"1", "2", "3"} {
		name := "s" + p + ".qcow2"
		clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", name, []string{"1M", "192k", "4M"}[i])
		clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P "+p+" 64k 64k", name)
	}
	for _, c := range [][]string{
		{"-O", "qcow2", "s1.qcow2", "s2.qcow2", "s3.qcow2"},
		{"-O", "raw", "s1.qcow2", "s2.qcow2"},
		{"-O", "qcow2", "-B", "s1.qcow2", "s2.qcow2", "s3.qcow2"},
	} {
		ours := append(append([]string{"convert"}, c...), "ours.img")
		theirs := append(append([]string{"convert"}, c...), "theirs.img")
		qemuOut, qcode := qemuImgAll(t, theirs...)
		o, e, code := runAsQemuImg(t, ours...)
		if code != qcode || strings.ReplaceAll(o+e, "ours.img", "X") != strings.ReplaceAll(qemuOut, "theirs.img", "X") {
			t.Errorf("convert %v: exit %d %q, qemu-img exit %d %q", c, code, o+e, qcode, qemuOut)
			continue
		}
		if qcode != 0 {
			continue
		}
		if out, ccode := qemuImgAll(t, "compare", "ours.img", "theirs.img"); ccode != 0 {
			t.Errorf("convert %v: outputs differ: %s", c, out)
		}
	}
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "1M")
	qemuAndOurs(t, "convert", "-O", "qcow2", "-B", "base.qcow2", "s1.qcow2", "x.qcow2")
	for _, tgt := range []string{"ours.qcow2", "theirs.qcow2"} {
		os.Remove("x.qcow2")
		args := []string{"convert", "-O", "qcow2", "-B", "base.qcow2", "-o", "backing_fmt=qcow2", "s1.qcow2", tgt}
		var code int
		var out string
		if tgt == "ours.qcow2" {
			o, e, c := runAsQemuImg(t, args...)
			out, code = o+e, c
		} else {
			out, code = qemuImgAll(t, args...)
		}
		if code != 0 {
			t.Fatalf("convert -B -o backing_fmt= to %s: exit %d: %s", tgt, code, out)
		}
	}
	if out, code := qemuImgAll(t, "compare", "ours.qcow2", "theirs.qcow2"); code != 0 {
		t.Errorf("convert -B -o backing_fmt=: outputs differ: %s", out)
	}
	qemuAndOurs(t, "convert", "-O", "qcow2", "-n", "-B", "base.qcow2", "s1.qcow2", "ours.qcow2")
	qemuAndOurs(t, "convert", "-O", "qcow2", "-n", "-o", "preallocation=metadata", "s1.qcow2", "ours.qcow2")
}

// runAsQemuImg runs this test binary as ringblk named qemu-img (TestMain).
func runAsQemuImg(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), clitest.AsMainEnv+"=1", progEnv+"=qemu-img")
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

// TestLockConflictMessagesMatchQemu: an image another process holds open
// for writing (a running VM; here a lock taken as QEMU's file driver
// takes it) is refused in qemu-img's two lines, the sentence and then
// "Is another process using the image [PATH]?" on a line of its own —
// also when the locked image is a backing file, which qemu-img words
// without a "Could not open 'PATH'" of its own.
func TestLockConflictMessagesMatchQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "l.qcow2", "1M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "l.qcow2", "-F", "qcow2", "ov.qcow2")
	holdLock(t, "l.qcow2")
	for _, args := range [][]string{
		{"info", "l.qcow2"},
		{"check", "l.qcow2"},
		{"resize", "l.qcow2", "2M"},
		{"map", "ov.qcow2"},
		{"convert", "-O", "raw", "ov.qcow2", "x.raw"},
	} {
		qemuAndOurs(t, args...)
	}
}

// TestOpenFailureMessagesMatchQemu: a missing image whose format is
// probed is qemu-img's nested "Could not open 'X': Could not open 'X':
// No such file or directory" in every command (the probe's failure kept
// its path error, chain.ProbeError); a directory is the file driver's
// "'file' driver requires 'X' to be a regular file" when opened
// read-only and open(2)'s "Is a directory" when opened read-write; a
// target convert cannot create is "DST: error while converting FMT:
// cause", an unknown -o parameter alone.
func TestOpenFailureMessagesMatchQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "1M")
	if err := os.Mkdir("dir", 0o755); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"compare", "a.qcow2", "missing"},
		{"map", "missing"},
		{"convert", "missing", "x.raw"},
		{"dd", "if=missing", "of=x.raw"},
		{"map", "dir"},
		{"compare", "dir", "a.qcow2"},
		{"snapshot", "-c", "s", "dir"},
		{"check", "-r", "all", "dir"},
		{"convert", "-O", "qcow2", "a.qcow2", "missing/x.qcow2"},
		{"convert", "-O", "raw", "a.qcow2", "dir"},
		{"convert", "-O", "qcow2", "-o", "cluster_size=3k", "a.qcow2", "x.qcow2"},
		{"convert", "-O", "raw", "-o", "bogus=1", "a.qcow2", "x.raw"},
	} {
		qemuAndOurs(t, args...)
	}
}

// TestSnapshotRefusalsMatchQemu: what qemu-img snapshot prints where the
// driver refuses: -95 for -c on raw (after QEMU's warning for a probed
// raw image opened for writing) and on an image with an external data
// file; "Failed to load snapshot" with the load's errno for -a of a
// missing snapshot or on a data-file image.
func TestSnapshotRefusalsMatchQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "r.raw", "1M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file=d.raw", "df.qcow2", "1M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "s.qcow2", "1M")
	for _, args := range [][]string{
		{"snapshot", "-c", "s", "r.raw"},
		{"snapshot", "-c", "s", "df.qcow2"},
		{"snapshot", "-a", "s", "df.qcow2"},
		{"snapshot", "-a", "nonexist", "s.qcow2"},
	} {
		qemuAndOurs(t, args...)
	}
}

// holdLock takes QEMU's write locks on path, as a running qemu-io holds
// them, until the test ends.
func holdLock(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := raw.LockFile(f, path, raw.Options{}); err != nil {
		t.Fatal(err)
	}
}
