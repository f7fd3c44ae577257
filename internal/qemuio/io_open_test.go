package qemuio

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/internal/cli"
	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// asMainEnv makes this test binary run as the io command (TestMain), for
// the tests that need a process of their own (sigraise, abort).
const asMainEnv = "RINGBLK_QEMUIO_TEST_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asMainEnv) == "1" {
		if p := os.Getenv(asProgEnv); p != "" {
			cli.Prog = p // drop-in mode (corruption_test.go)
		}
		os.Exit(Run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// compareIOArgs runs the arguments args(img) with qemu-io and with ours,
// each on its own fresh image of the format and size, and compares
// stdout, stderr (image names replaced by IMG) and the exit status; then
// the two images' contents.
func compareIOArgs(t *testing.T, name, format, size string, args func(img string) []string) {
	t.Helper()
	dir := t.TempDir()
	a, b := filepath.Join(dir, name+"-qemu."+format), filepath.Join(dir, name+"-ours."+format)
	for _, img := range []string{a, b} {
		clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", format, img, size)
	}
	qo, qe, qc := clitest.QemuIO(t, args(a)...)
	oo, oe, oc := ioRun("", args(b)...)
	norm := func(s, img string) []string {
		var out []string
		for _, l := range normIO(strings.ReplaceAll(s, img, "IMG")) {
			// The raw-probing warning is worded differently on purpose.
			if strings.Contains(l, "probing guessed raw") || strings.Contains(l, "Automatically detecting the format") ||
				strings.Contains(l, "Specify the 'raw' format explicitly") {
				continue
			}
			out = append(out, l)
		}
		return out
	}
	if qc != oc {
		t.Errorf("%s: exit status %d, qemu-io %d\nours:\n%s%s\nqemu-io:\n%s%s", name, oc, qc, oo, oe, qo, qe)
	}
	if w, g := norm(qo, a), norm(oo, b); !slices.Equal(w, g) {
		t.Errorf("%s: stdout differs\nours:\n%s\nqemu-io:\n%s", name, strings.Join(g, "\n"), strings.Join(w, "\n"))
	}
	if w, g := norm(qe, a), norm(oe, b); !slices.Equal(w, g) {
		t.Errorf("%s: stderr differs\nours:\n%s\nqemu-io:\n%s", name, strings.Join(g, "\n"), strings.Join(w, "\n"))
	}
	if out, code := clitest.Qemu(t, "qemu-img", "compare", "-q", "-f", format, "-F", format, a, b); code != 0 {
		t.Errorf("%s: images differ after the commands (qemu-img compare exit %d) %s", name, code, out)
	}
}

func cmds(c ...string) []string {
	var args []string
	for _, x := range c {
		args = append(args, "-c", x)
	}
	return args
}

// TestIOOpenMatchesQemuIO: qemu-io without an image, the open command
// and its options (072, 103, 107, 133, 226 of the iotests).
func TestIOOpenMatchesQemuIO(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io", "qemu-img")
	cases := []struct {
		name, format string
		args         func(img string) []string
	}{
		{"no-file", "raw", func(img string) []string {
			return cmds("read 0 1", "length", "close", "open", "open -r "+img, "read -P 0 0 4k", "write 0 1")
		}},
		{"open-o", "qcow2", func(img string) []string {
			return cmds("open -o driver=qcow2 "+img, "write -P 5 0 64k", "close",
				"open -o driver=raw "+img, "read -P 0 0x30000 512", "close",
				"open -o driver=qcow2,file.filename="+img, "read -P 5 0 64k", "open "+img)
		}},
		{"open-o-qcow2-cache", "qcow2", func(img string) []string {
			return cmds("open -o cache-size=1M,l2-cache-size=2M "+img, "open -o cache-size=1M,refcount-cache-size=2M "+img,
				"open -o cache-size=1M,l2-cache-size=512k,refcount-cache-size=512k "+img,
				"open -o l2-cache-entry-size=4242 "+img, "open -o l2-cache-size=0 "+img, "write -P 3 0 64k", "read -P 3 0 64k")
		}},
		{"open-json", "qcow2", func(img string) []string {
			return append(cmds("write -P 7 4k 4k", "info"), "json:{'driver': 'qcow2', 'file': {'driver': 'file', 'filename': '"+img+"'}}")
		}},
		{"open-o-json-merge", "qcow2", func(img string) []string {
			return cmds(`open -o driver=qcow2 json:{"file.filename":"`+img+`"}`, "info", "write -P 1 0 512", "read -P 1 0 512")
		}},
		{"reopen-o", "qcow2", func(img string) []string {
			return cmds("open -o node-name=foo "+img, "reopen -o node-name=foo", "reopen -o node-name=bar",
				"reopen -o driver=raw", "reopen -o driver=qcow2", "reopen -r -o read-only=on",
				"reopen -c none -o cache.direct=on", "reopen -o read-only=foo", "reopen -o read-only=on", "write 0 1")
		}},
		{"protocol-checks", "raw", func(img string) []string {
			return cmds("open -r -o driver=file,filename="+filepath.Dir(img), "open -o driver=file,filename="+filepath.Dir(img),
				"open -r -o driver=host_device,filename="+filepath.Dir(img), "open -o driver=file,filename="+img, "write -P 2 0 1k")
		}},
		{"alloc", "qcow2", func(img string) []string {
			return append(cmds("write 64k 4k", "alloc 0", "alloc 64k 128k", "alloc 0 2M", "a 1M", "alloc 1M 1", "alloc x", "alloc 1 2 3"), "-f", "qcow2", img)
		}},
		{"raw-window", "raw", func(img string) []string {
			j := `json:{"driver":"raw","offset":"4096","size":"8192","file":{"driver":"file","filename":"` + img + `"}}`
			return append(cmds("write -P 0xa 0 8k", "read -P 0xa 0 8k", "write 8191 1", "write 8191 2", "write 8k 1",
				"readv 7k 512 512", "read 8k 1", "length", "map", "reopen -o offset=1024,size=2048", "length", "write -P 0xb 0 2k",
				"reopen -o size=1M", "length"), j)
		}},
		{"image-opts", "qcow2", func(img string) []string {
			return append([]string{"--image-opts", "-c", "write -P 9 0 4k", "-c", "read -P 9 0 4k"}, "driver=qcow2,file.filename="+img)
		}},
	}
	for _, c := range cases {
		compareIOArgs(t, c.name, c.format, "1M", c.args)
	}
}

// TestIOSnapshotMode: -s and open -s write into a temporary overlay; the
// image is unchanged afterwards (052).
func TestIOSnapshotMode(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io", "qemu-img")
	for _, format := range []string{"raw", "qcow2"} {
		compareIOArgs(t, "snapshot-"+format, format, "1M", func(img string) []string {
			return append([]string{"-f", format, "-s"}, append(cmds("write -P 8 0 64k", "read -P 8 0 64k", "map"), img)...)
		})
		compareIOArgs(t, "open-s-"+format, format, "1M", func(img string) []string {
			return cmds("open -s "+img, "write -P 8 4k 4k", "read -P 8 4k 4k", "close", "open "+img, "read -P 0 0 64k")
		})
	}
	// And the image really is untouched (not just equal to qemu-io's).
	img := filepath.Join(t.TempDir(), "s.qcow2")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "1M")
	if _, e, code := ioRun("", "-s", "-f", "qcow2", "-c", "write -P 1 0 4k", img); code != 0 {
		t.Fatalf("-s write: exit %d: %s", code, e)
	}
	if o, _, code := ioRun("", "-f", "qcow2", "-c", "read -P 0 0 4k", img); code != 0 || strings.Contains(o, "failed") {
		t.Fatalf("the image changed under -s: %s", o)
	}
}

// TestIOCopyOnRead: -C copies what the reads touch into the top image
// (197), cluster by cluster; with -r it is refused.
func TestIOCopyOnRead(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io", "qemu-img")
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", base, "4M")
	clitest.MustQemu(t, "qemu-io", "-f", "raw", "-c", "write -P 0x55 3M 1k", base)
	compareIOArgs(t, "cor", "qcow2", "4M", func(img string) []string {
		clitest.MustQemu(t, "qemu-img", "rebase", "-u", "-f", "qcow2", "-b", base, "-F", "raw", img)
		return append([]string{"-f", "qcow2", "-C"}, append(cmds("read -P 0 1k 1M", "read -P 0x55 3M 1k", "map"), img)...)
	})
	compareIOArgs(t, "cor-readonly", "qcow2", "4M", func(img string) []string {
		return []string{"-f", "qcow2", "-C", "-r", img}
	})
}

// runAsProcess runs the io command in a process of its own and returns
// its output and how it ended.
func runAsProcess(t *testing.T, args ...string) (stdout, stderr string, ws syscall.WaitStatus) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), asMainEnv+"=1", "GOTRACEBACK=none")
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return o.String(), e.String(), cmd.ProcessState.Sys().(syscall.WaitStatus)
}

// TestIOSigraiseAbort: sigraise N dies of signal N without closing the
// image (039's crash), abort of SIGABRT; output before them is kept.
func TestIOSigraiseAbort(t *testing.T) {
	img := filepath.Join(t.TempDir(), "a.raw")
	if err := os.WriteFile(img, make([]byte, 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		cmd string
		sig syscall.Signal
	}{{"sigraise 9", syscall.SIGKILL}, {"sigraise 15", syscall.SIGTERM}, {"abort", syscall.SIGABRT}} {
		o, e, ws := runAsProcess(t, "-f", "raw", "-c", "write -P 1 0 512", "-c", c.cmd, "-c", "write -P 2 0 512", img)
		if !ws.Signaled() || ws.Signal() != c.sig {
			t.Errorf("%s: process ended with %v, want signal %v (stderr %q)", c.cmd, ws, c.sig, e)
		}
		if !strings.Contains(o, "wrote 512/512 bytes at offset 0") || strings.Count(o, "wrote") != 1 {
			t.Errorf("%s: stdout %q, want the first write's report only", c.cmd, o)
		}
	}
	// Without an image, and with a bad number.
	if o, _, code := ioRun("", "-c", "sigraise 99", "-c", "sigraise x"); code != 1 ||
		!strings.Contains(o, "signal argument '99' is too large to be a valid signal") {
		t.Errorf("sigraise 99: exit %d, %q", code, o)
	}
}

// TestOpenLockConflictMatchesQemuIO: qemu-io words a lock conflict in two
// lines, at start-up and in the open command alike (the question on a
// line of its own).
func TestOpenLockConflictMatchesQemuIO(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "l.qcow2", "1M")
	holdLock(t, "l.qcow2")
	sameStderrAsQemuIO(t, [][]string{
		{"-c", "read 0 512", "l.qcow2"},
		{"-c", "open -f qcow2 l.qcow2"},
	})
}

// sameStderrAsQemuIO runs each argument list through qemu-io and through
// ours in drop-in mode and wants the same exit status and stderr.
func sameStderrAsQemuIO(t *testing.T, runs [][]string) {
	t.Helper()
	saved := cli.Prog
	cli.Prog = "qemu-io"
	defer func() { cli.Prog = saved }()
	for _, args := range runs {
		_, qe, qc := clitest.QemuIO(t, args...)
		_, oe, oc := ioRun("", args...)
		if oe != qe || oc != qc {
			t.Errorf("%q: exit %d, stderr %q; qemu-io exit %d, stderr %q", args, oc, oe, qc, qe)
		}
	}
}

// TestOpenDirectoryMatchesQemuIO: a directory opened read-only is refused
// by QEMU's file driver ("'file' driver requires 'dir' to be a regular
// file"), read-write by open(2) ("Is a directory").
func TestOpenDirectoryMatchesQemuIO(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	if err := os.Mkdir("dir", 0o755); err != nil {
		t.Fatal(err)
	}
	sameStderrAsQemuIO(t, [][]string{
		{"-r", "-c", "read 0 512", "dir"},
		{"-c", "read 0 512", "dir"},
		{"-c", "open -r dir"},
	})
}

// TestProbedRawFirstSectorGuardMatchesQemuIO: on a raw image opened
// without a format (probed), qemu-io refuses a write that would make the
// image probe as qcow2 ("Operation not permitted"), and the image keeps
// its first sector; QEMU's three warning lines are printed in drop-in
// mode. Before, the header was written, and the next probing open read
// the image as qcow2 (whose backing file could be any host file).
func TestProbedRawFirstSectorGuardMatchesQemuIO(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	hdr := make([]byte, 512)
	copy(hdr, "QFI\xfb\x00\x00\x00\x03")
	if err := os.WriteFile("hdr.bin", hdr, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, img := range []string{"q.raw", "o.raw"} {
		clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", img, "1M")
	}
	saved := cli.Prog
	cli.Prog = "qemu-io"
	defer func() { cli.Prog = saved }()
	cmds := []string{"-c", "write -s hdr.bin 0 512", "-c", "write -P 0x51 100 10", "-c", "read -P 0x51 100 10"}
	qo, qe, qc := clitest.QemuIO(t, append(cmds, "q.raw")...)
	oo, oe, oc := ioRun("", append(cmds, "o.raw")...)
	if w, g := normIO(qo), normIO(oo); oc != qc || !slices.Equal(w, g) || strings.ReplaceAll(oe, "o.raw", "q.raw") != qe {
		t.Errorf("exit %d\n%s%s\nqemu-io: exit %d\n%s%s", oc, oo, oe, qc, qo, qe)
	}
	if out, code := clitest.Qemu(t, "qemu-img", "info", "o.raw"); code != 0 || !strings.Contains(out, "file format: raw") {
		t.Errorf("the image no longer probes as raw (exit %d):\n%s", code, out)
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
