package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/internal/cli/clitest"
	"github.com/ringblk/ringblk/internal/imgcmd"
)

const writeLock = `Failed to get "write" lock`

// refuseHeld runs create and convert onto target, an image someone holds,
// and checks each is refused as qemu-img refuses it (exit 1, one line
// naming the file and the lock) with every byte of the file unchanged.
func refuseHeld(t *testing.T, holder, target string) {
	t.Helper()
	before, err := os.ReadFile(target)
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"create", "-f", "qcow2", target, "1M"},
		{"create", "-f", "raw", target, "1M"},
		{"create", "-f", "raw", "-o", "preallocation=full", target, "1M"},
		{"convert", "-f", "raw", "-O", "raw", "src.raw", target},
		{"convert", "-f", "raw", "-O", "qcow2", "src.raw", target},
	} {
		what := "ringblk " + strings.Join(args, " ") + " while " + holder + " holds it"
		_, stderr, code := clitest.RunRingblk(t, nil, args...)
		if code != 1 {
			t.Errorf("%s: exit %d, want 1 (stderr %q)", what, code, stderr)
		}
		if !strings.HasPrefix(stderr, "ringblk: "+target+": ") || !strings.Contains(stderr, "lock") ||
			!strings.Contains(stderr, "["+target+"]") || strings.Count(stderr, "\n") != 1 ||
			strings.Contains(stderr, "block:") {
			t.Errorf("%s: stderr %q; want one line 'ringblk: %s: … lock … [%s]?' without the block layer's context", what, stderr, target, target)
		}
		if args[0] == "convert" && !strings.Contains(stderr, "error while converting "+args[4]+": ") {
			t.Errorf("%s: stderr %q; want qemu-img's 'error while converting %s:'", what, stderr, args[4])
		}
		after, err := os.ReadFile(target)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(before, after) {
			t.Fatalf("%s: the held image changed (%d bytes before, %d after)", what, len(before), len(after))
		}
	}
}

// TestCreateConvertRefuseHeldImage: create and convert take the image
// locks before they truncate, so an image held by qemu-io, by another
// ringblk process or by a second open in this process is refused and left
// byte for byte as it was (issue 14, item 1).
func TestCreateConvertRefuseHeldImage(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := os.WriteFile("src.raw", bytes.Repeat([]byte{0x5a}, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, img := range []string{"ours.qcow2", "self.qcow2", "q.qcow2"} {
		if _, stderr, code := clitest.Ours(imgcmd.Create, "-q", "-f", "qcow2", img, "1M"); code != 0 {
			t.Fatalf("create %s: exit %d: %s", img, code, stderr)
		}
	}

	t.Run("ringblk-process", func(t *testing.T) {
		holdReadWrite(t, "ours.qcow2")
		refuseHeld(t, "ringblk io", "ours.qcow2")
	})

	t.Run("second-open", func(t *testing.T) {
		// A read-only open of this process: the child processes of
		// refuseHeld see its locks as another user's.
		d, err := raw.Open("self.qcow2", raw.Options{ReadOnly: true, Locking: raw.LockingOn})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Release()
		refuseHeld(t, "a read-only raw.Open", "self.qcow2")
		// And in-process: raw.Create itself refuses before truncating.
		before, _ := os.ReadFile("self.qcow2")
		err = raw.Create("self.qcow2", 4096, raw.PreallocOff)
		if err == nil || !strings.Contains(err.Error(), writeLock) {
			t.Errorf("raw.Create on a held file: %v, want %q", err, writeLock)
		}
		if after, _ := os.ReadFile("self.qcow2"); !bytes.Equal(before, after) {
			t.Errorf("raw.Create on a held file changed it")
		}
	})

	t.Run("qemu-io", func(t *testing.T) {
		if _, err := exec.LookPath("qemu-io"); err != nil {
			t.Skip("qemu-io not installed")
		}
		holdWith(t, exec.Command("qemu-io", "-f", "qcow2", "q.qcow2"))
		refuseHeld(t, "qemu-io", "q.qcow2")
		// qemu-img agrees: the same refusal, exit 1.
		if _, err := exec.LookPath("qemu-img"); err != nil {
			t.Skip("qemu-img not installed")
		}
		before, _ := os.ReadFile("q.qcow2")
		out, err := exec.Command("qemu-img", "create", "-f", "qcow2", "q.qcow2", "1M").CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), writeLock) {
			t.Errorf("qemu-img create on the held image: %v %q; want exit 1 and %q", err, out, writeLock)
		}
		if after, _ := os.ReadFile("q.qcow2"); !bytes.Equal(before, after) {
			t.Errorf("qemu-img create changed the held image")
		}
	})

	t.Run("qemu-io-raw", func(t *testing.T) {
		// A raw qemu-io takes only the write permission's lock (byte
		// 101) and refuses nothing; qemu-img create -f raw would truncate
		// the image under it. We refuse: it is in use for writing.
		if _, err := exec.LookPath("qemu-io"); err != nil {
			t.Skip("qemu-io not installed")
		}
		if err := os.WriteFile("r.raw", bytes.Repeat([]byte{0xa5}, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
		holdWith(t, exec.Command("qemu-io", "-f", "raw", "r.raw"))
		refuseHeld(t, "a raw qemu-io", "r.raw")
	})

	// Once nobody holds them, the same commands work.
	for _, img := range []string{"ours.qcow2", "self.qcow2", "q.qcow2"} {
		if _, stderr, code := clitest.RunRingblk(t, nil, "convert", "-f", "raw", "-O", "qcow2", "src.raw", img); code != 0 {
			t.Errorf("convert onto %s after release: exit %d: %s", img, code, stderr)
		}
	}
}

// TestPartialSectorMatchesQemu: a raw file of 1000 bytes is what QEMU
// makes of it: info says 1024 bytes, the tail reads as zeroes, a write in
// the last sector extends the file to 1024 bytes, a write past that fails
// with EIO — qemu-img and qemu-io on a copy of the same file agree
// (issue 14, item 10).
func TestPartialSectorMatchesQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	data := bytes.Repeat([]byte{0x5a}, 1000)
	for _, f := range []string{"ours.raw", "qemu.raw"} {
		if err := os.WriteFile(f, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ourInfo, _, code := clitest.Ours(imgcmd.Info, "-f", "raw", "--output=json", "ours.raw")
	qemuInfo := clitest.MustQemu(t, "qemu-img", "info", "-f", "raw", "--output=json", "qemu.raw")
	if code != 0 {
		t.Fatalf("info: exit %d", code)
	}
	if g, w := clitest.ParseJSON(t, "ours", ourInfo)["virtual-size"], clitest.ParseJSON(t, "qemu", qemuInfo)["virtual-size"]; g != w {
		t.Errorf("virtual-size %v, qemu-img says %v", g, w)
	}
	for _, cmd := range []string{"read -P 0 1000 24", "read -P 0x5a 512 488", "write -P 0xab 512 512", "read -P 0xab 512 512", "write -P 0xcd 1024 512"} {
		_, stderr, code := clitest.RunRingblk(t, nil, "io", "-f", "raw", "-c", cmd, "ours.raw")
		qout, qcode := clitest.Qemu(t, "qemu-io", "-f", "raw", "-c", cmd, "qemu.raw")
		ourFailed := code != 0 || strings.Contains(stderr, "failed")
		qemuFailed := qcode != 0 || strings.Contains(qout, "failed")
		if ourFailed != qemuFailed {
			t.Errorf("io -c %q: ours failed=%v (%q), qemu-io failed=%v (%q)", cmd, ourFailed, stderr, qemuFailed, qout)
		}
		a, _ := os.ReadFile("ours.raw")
		b, _ := os.ReadFile("qemu.raw")
		if !bytes.Equal(a, b) {
			t.Errorf("after %q: our file has %d bytes, qemu-io's %d (or they differ)", cmd, len(a), len(b))
		}
	}
}

// TestCloseErrorExitStatus: when the metadata write-back at close fails
// (a full file system), ringblk io exits 1 with one line naming the image
// and the errno, without the block layer's context.
func TestCloseErrorExitStatus(t *testing.T) {
	dir := t.TempDir()
	// Room for 100 data clusters, not for the 100 L2 tables written back
	// on close.
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=600k"); err != nil {
		t.Skipf("cannot mount a small tmpfs to fill (needs root): %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, 0) })
	img := filepath.Join(dir, "q.qcow2")
	if _, stderr, code := clitest.Ours(imgcmd.Create, "-q", "-f", "qcow2", "-o", "cluster_size=4k", img, "256M"); code != 0 {
		t.Fatalf("create: exit %d: %s", code, stderr)
	}
	args := []string{"io"}
	for i := 0; i < 100; i++ {
		args = append(args, "-c", fmt.Sprintf("write %dM 4k", 2*i))
	}
	_, stderr, code := clitest.RunRingblk(t, nil, append(args, img)...)
	if code != 1 || stderr != "ringblk: closing '"+img+"': No space left on device\n" {
		t.Errorf("io with a failing close: exit %d, stderr %q; want 1 and one line naming the image and ENOSPC", code, stderr)
	}
}

// qemuStderr runs a qemu tool and returns its exit code and its stderr
// without the "tool: " prefix, on one line.
func qemuStderr(t *testing.T, tool string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(tool, args...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, strings.TrimPrefix(strings.TrimSpace(errb.String()), tool+": ")
}

// TestMessagesMatchQemu: where qemu-img and qemu-io refuse, ringblk
// refuses with their exit status and their words after "ringblk: ": sizes
// given twice and an empty backing name to create; an overlay whose
// backing file is missing names that file; a corrupt image's error has no
// block-layer context or node names.
func TestMessagesMatchQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "1M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "ov.qcow2")
	if err := os.Rename("base.qcow2", "moved.qcow2"); err != nil {
		t.Fatal(err)
	}
	for _, c := range [][]string{
		{"qemu-img", "create", "-f", "qcow2", "-o", "size=10M", "c.qcow2", "20M"},
		{"qemu-img", "create", "-f", "qcow2", "-o", "size=10M", "c.qcow2", "10M"},
		{"qemu-img", "create", "-f", "raw", "-o", "size=1M", "c.raw", "1M"},
		{"qemu-img", "create", "-f", "qcow2", "-b", "", "c.qcow2", "10M"},
		{"qemu-img", "create", "-f", "qcow2", "-b", "", "-F", "qcow2", "c.qcow2", "10M"},
		{"qemu-img", "map", "ov.qcow2"},
		{"qemu-img", "convert", "-O", "raw", "ov.qcow2", "out.raw"},
		{"qemu-img", "compare", "ov.qcow2", "moved.qcow2"},
		{"qemu-io", "-c", "read 0 512", "ov.qcow2"},
	} {
		qcode, qmsg := qemuStderr(t, c[0], c[1:]...)
		_, stderr, code := clitest.RunRingblk(t, nil, append([]string{map[string]string{"qemu-img": c[1], "qemu-io": "io"}[c[0]]}, c[map[string]int{"qemu-img": 2, "qemu-io": 1}[c[0]]:]...)...)
		if code != qcode || stderr != "ringblk: "+qmsg+"\n" {
			t.Errorf("%v: ours exit %d %q; %s exit %d %q", c, code, stderr, c[0], qcode, qmsg)
		}
		for _, f := range []string{"c.qcow2", "c.raw", "out.raw"} {
			if _, err := os.Stat(f); err == nil {
				t.Errorf("%v: %s was created", c, f)
				os.Remove(f)
			}
		}
	}

	// A corrupt image: the cause, in the user's terms.
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "bad.qcow2", "1M")
	f, err := os.OpenFile("bad.qcow2", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0}, 40) // l1_table_offset
	f.Close()
	for _, args := range [][]string{{"map", "bad.qcow2"}, {"convert", "-O", "raw", "bad.qcow2", "out.raw"}, {"io", "-c", "read 0 512", "bad.qcow2"}} {
		_, stderr, code := clitest.RunRingblk(t, nil, args...)
		if code != 1 || strings.Contains(stderr, "block:") || strings.Contains(stderr, "img1") ||
			!strings.Contains(stderr, "Could not open 'bad.qcow2': ") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%v on a corrupt image: exit %d, %q; want one line 'Could not open 'bad.qcow2': cause' without block-layer context", args, code, stderr)
		}
	}
}

// TestReadmeBenchExamples runs the README's bench examples as written,
// shortened: the image path is a temporary one, sizes are 8m and runs
// 300ms, optional [..] parts are left out, --compare runs one repeat.
// Each must exit 0 on a machine where the file does not exist yet.
func TestReadmeBenchExamples(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("/var/tmp", "readme-")
	if err != nil {
		dir = t.TempDir()
	} else {
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	img := filepath.Join(dir, "disk.img")
	shorten := strings.NewReplacer("/var/tmp/disk.img", img, "size=1g", "size=8m", "runtime=10", "runtime=300ms",
		"runtime=5", "runtime=300ms", "> job.fio", "> "+filepath.Join(dir, "job.fio"), " job.fio", " "+filepath.Join(dir, "job.fio"))
	optional := regexp.MustCompile(`\s*\[[^\]]*\]`)
	text := strings.ReplaceAll(string(readme), "\\\n", " ")
	ran := 0
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "bin/ringblk bench") && !strings.HasPrefix(line, "printf ") {
			continue
		}
		if strings.Contains(line, "rbd:") {
			continue // needs a Ceph cluster and -tags rbd: TestRBDCommands runs bench on one
		}
		if strings.HasPrefix(line, "bin/") {
			line = optional.ReplaceAllString(line, "")
		}
		line = shorten.Replace(line)
		if strings.HasPrefix(line, "printf ") {
			if out, err := exec.Command("sh", "-c", line).CombinedOutput(); err != nil {
				t.Fatalf("%s: %v: %s", line, err, out)
			}
			continue
		}
		args := strings.Fields(strings.TrimPrefix(line, "bin/ringblk "))
		if slicesContains(args, "--compare") {
			args = append(args, "--repeats=1")
		}
		ran++
		if _, stderr, code := clitest.RunRingblk(t, nil, args...); code != 0 {
			t.Errorf("README example %q: exit %d: %s", line, code, stderr)
		}
	}
	if ran < 4 {
		t.Errorf("found %d bench examples in README.md, want at least 4", ran)
	}
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestTopLevelCommandLine: --version names the release, the commit and
// Go; bench --version adds it to fio's format line; an unknown command or
// none is one "ringblk: …" line and exit 1, as the README promises.
func TestTopLevelCommandLine(t *testing.T) {
	out, stderr, code := clitest.RunRingblk(t, nil, "--version")
	if code != 0 || !regexp.MustCompile(`^ringblk version \S+ \(commit \S+, go\S+\)\n$`).MatchString(out) {
		t.Errorf("--version: exit %d, %q %q", code, out, stderr)
	}
	bout, _, code := clitest.RunRingblk(t, nil, "bench", "--version")
	if code != 0 || !strings.Contains(bout, "fio-3.33") || !strings.Contains(bout, out) {
		t.Errorf("bench --version: exit %d, %q; want fio's format and %q", code, bout, out)
	}
	for _, args := range [][]string{{"frobnicate"}, {}} {
		_, stderr, code := clitest.RunRingblk(t, nil, args...)
		if code != 1 || !strings.HasPrefix(stderr, "ringblk: ") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("ringblk %v: exit %d, stderr %q; want one line and exit 1", args, code, stderr)
		}
	}
}
