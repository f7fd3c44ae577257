package main

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ringblk/ringblk/internal/cli/clitest"
	"github.com/ringblk/ringblk/internal/imgcmd"
)

// holdReadWrite opens img read-write in another ringblk process ("ringblk
// io" reading commands from a pipe) and returns once the process has
// written to it, so its locks are certainly taken. The process ends (and
// the locks go) at cleanup.
func holdReadWrite(t *testing.T, img string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "io", "-f", "qcow2", img)
	cmd.Env = append(os.Environ(), clitest.AsMainEnv+"=1")
	holdWith(t, cmd)
}

// holdWith starts cmd, a qemu-io style tool reading commands from its
// standard input with img open read-write, writes one sector through it
// and returns once the tool said it wrote it.
func holdWith(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("the holding %s: %v (stderr %q)", cmd.Path, err, stderr.String())
		}
	})
	if _, err := io.WriteString(stdin, "write -P 5 0 512\n"); err != nil {
		t.Fatal(err)
	}
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- s
		io.Copy(io.Discard, stdout)
	}()
	select {
	case s := <-line:
		// qemu-io prints its prompt before the answer even on a pipe.
		if !strings.HasPrefix(strings.TrimPrefix(s, "qemu-io> "), "wrote 512/512 bytes at offset 0") {
			t.Fatalf("the holding %s said %q (stderr %q)", cmd.Path, s, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the holding %s did not answer", cmd.Path)
	}
}

const sharedWriteLock = `Failed to get shared "write" lock`

// TestForceShare: while another process has an image open read-write,
// every command that only reads it and accepts -U refuses the image
// without -U, with QEMU's lock error naming the file, and works with -U.
func TestForceShare(t *testing.T) {
	t.Chdir(t.TempDir())
	if _, stderr, code := clitest.Ours(imgcmd.Create, "-q", "-f", "qcow2", "held.qcow2", "1M"); code != 0 {
		t.Fatalf("create: exit %d: %s", code, stderr)
	}
	if _, stderr, code := clitest.Ours(imgcmd.Create, "-q", "-f", "qcow2", "other.qcow2", "1M"); code != 0 {
		t.Fatalf("create: exit %d: %s", code, stderr)
	}
	holdReadWrite(t, "held.qcow2")

	cases := []struct {
		cmd      string
		args     []string // the image is last unless a command needs more
		failCode int
	}{
		{"info", []string{"held.qcow2"}, 1},
		{"info", []string{"--backing-chain", "--output=json", "held.qcow2"}, 1},
		{"check", []string{"held.qcow2"}, 1},
		{"map", []string{"--output=json", "held.qcow2"}, 1},
		{"compare", []string{"other.qcow2", "held.qcow2"}, 2},
		{"convert", []string{"-O", "raw", "held.qcow2", "out.raw"}, 1},
		{"snapshot", []string{"-l", "held.qcow2"}, 1},
		{"measure", []string{"-O", "qcow2", "held.qcow2"}, 1},
		{"io", []string{"-r", "-c", "read 0 512", "held.qcow2"}, 1},
	}
	for _, c := range cases {
		args := append([]string{c.cmd}, c.args...)
		what := "ringblk " + strings.Join(args, " ")
		_, stderr, code := clitest.RunRingblk(t, nil, args...)
		if code != c.failCode {
			t.Errorf("%s while held read-write: exit %d, want %d (stderr %q)", what, code, c.failCode, stderr)
		}
		if !strings.Contains(stderr, sharedWriteLock) || !strings.Contains(stderr, "held.qcow2") ||
			strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "ringblk: ") {
			t.Errorf("%s while held read-write: want one line with %q naming held.qcow2, got %q", what, sharedWriteLock, stderr)
		}
		os.Remove("out.raw")

		args = append([]string{c.cmd, "-U"}, c.args...)
		what = "ringblk " + strings.Join(args, " ")
		if _, stderr, code := clitest.RunRingblk(t, nil, args...); code != 0 {
			t.Errorf("%s while held read-write: exit %d, want 0 (stderr %q)", what, code, stderr)
		}
		os.Remove("out.raw")
	}

	// Our locks are QEMU's: qemu-img info is refused the same way.
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed: the cross-check with QEMU's locks is skipped")
	}
	cmd := exec.Command("qemu-img", "info", "held.qcow2")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), sharedWriteLock) || !strings.Contains(string(out), "held.qcow2") {
		t.Errorf("qemu-img info on an image ringblk holds read-write: err %v, output %q; want %q", err, out, sharedWriteLock)
	}
	if out, err := exec.Command("qemu-img", "info", "-U", "held.qcow2").CombinedOutput(); err != nil {
		t.Errorf("qemu-img info -U on an image ringblk holds read-write: %v: %s", err, out)
	}
}

// TestLocksHonourQemu: an image qemu-io holds read-write is refused by our
// read-only commands in the same words, and read with -U.
func TestLocksHonourQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "q.qcow2", "1M")
	holdWith(t, exec.Command("qemu-io", "-f", "qcow2", "q.qcow2"))
	for _, cmd := range []string{"info", "check", "map", "snapshot -l"} {
		args := append(strings.Fields(cmd), "q.qcow2")
		_, stderr, code := clitest.RunRingblk(t, nil, args...)
		if code != 1 || !strings.Contains(stderr, sharedWriteLock) || !strings.Contains(stderr, "q.qcow2") {
			t.Errorf("ringblk %s on an image qemu-io holds: exit %d, stderr %q; want exit 1 and %q", cmd, code, stderr, sharedWriteLock)
		}
		args = append(strings.Fields(cmd), "-U", "q.qcow2")
		if _, stderr, code := clitest.RunRingblk(t, nil, args...); code != 0 {
			t.Errorf("ringblk %s -U on an image qemu-io holds: exit %d (%s)", cmd, code, stderr)
		}
	}
}

// TestForceShareRejectedForWrites: -U only goes with read-only use, as in
// qemu-img (check -r, snapshot -c, io without -r).
func TestForceShareRejectedForWrites(t *testing.T) {
	t.Chdir(t.TempDir())
	if _, stderr, code := clitest.Ours(imgcmd.Create, "-q", "-f", "qcow2", "a.qcow2", "1M"); code != 0 {
		t.Fatalf("create: exit %d: %s", code, stderr)
	}
	for _, args := range [][]string{
		{"check", "-U", "-r", "leaks", "a.qcow2"},
		{"snapshot", "-U", "-c", "s1", "a.qcow2"},
		{"io", "-U", "-c", "write 0 512", "a.qcow2"},
	} {
		_, stderr, code := clitest.RunRingblk(t, nil, args...)
		if code != 1 || !strings.Contains(stderr, "force-share") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("ringblk %v: exit %d, stderr %q; want exit 1 and one line about force-share", args, code, stderr)
		}
	}
}
