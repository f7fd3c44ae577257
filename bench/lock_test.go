package bench

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ringblk/ringblk/drivers/raw"
)

// runMain runs ringblk bench's Main and returns its exit status and stderr.
func runMain(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = Main(args, &o, &e)
	return code, o.String(), e.String()
}

// holdQemuIO keeps img open read-write in a background qemu-io until the
// test ends, and returns once qemu-io has written to it (so its locks are
// taken).
func holdQemuIO(t *testing.T, img string) {
	t.Helper()
	cmd := exec.Command("qemu-io", "-f", "qcow2", img)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Wait() })
	io.WriteString(stdin, "write -P 5 0 512\n")
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- s
		io.Copy(io.Discard, stdout)
	}()
	select {
	case s := <-line:
		if !strings.Contains(s, "wrote 512/512") {
			t.Fatalf("qemu-io said %q", s)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("qemu-io did not answer")
	}
}

// TestRingblkEngineTakesLocks: ioengine=ringblk opens images with the
// locks "ringblk io" takes. An image another user holds is refused with
// QEMU's lock sentence and a non-zero exit, untouched; share_rw=1 (reads
// beside a writer) and locking=off are the explicit ways round it; jobs of
// one run on one file share the open (issue 14, item 2).
func TestRingblkEngineTakesLocks(t *testing.T) {
	dir := benchDir(t)
	file := filepath.Join(dir, "held.raw")
	if err := os.WriteFile(file, bytes.Repeat([]byte{0xa5}, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	job := func(rw string, extra ...string) []string {
		return append([]string{"--name=j", "--ioengine=ringblk", "--format=raw", "--filename=" + file,
			"--rw=" + rw, "--bs=4k", "--size=1m", "--iodepth=4"}, extra...)
	}
	before, _ := os.ReadFile(file)

	holder, err := raw.Open(file, raw.Options{Locking: raw.LockingOn})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		rw, want string
	}{
		{"randwrite", `Failed to get "write" lock`},
		{"randread", `Failed to get shared "write" lock`},
	} {
		code, _, stderr := runMain(t, job(c.rw)...)
		if code == 0 || !strings.Contains(stderr, c.want) || !strings.Contains(stderr, "["+file+"]") || strings.Contains(stderr, "block:") {
			t.Errorf("rw=%s on an image another open holds read-write: exit %d, stderr %q; want non-zero and %q naming the file", c.rw, code, stderr, c.want)
		}
	}
	if after, _ := os.ReadFile(file); !bytes.Equal(before, after) {
		t.Fatal("a refused write job changed the held image")
	}
	// The explicit ways round it.
	if code, _, stderr := runMain(t, job("randread", "--share_rw=1")...); code != 0 {
		t.Errorf("share_rw=1 read beside a writer: exit %d: %s", code, stderr)
	}
	if code, _, stderr := runMain(t, job("randread", "--locking=off")...); code != 0 {
		t.Errorf("locking=off: exit %d: %s", code, stderr)
	}
	holder.Release()

	// Two jobs of one run on one file, a writer and a reader at once:
	// one open, no conflict with ourselves.
	two := []string{"--ioengine=ringblk", "--format=raw", "--filename=" + file, "--bs=4k", "--size=1m",
		"--runtime=100ms", "--time_based",
		"--name=w", "--rw=randwrite", "--name=r", "--rw=randread"}
	if code, _, stderr := runMain(t, two...); code != 0 {
		t.Errorf("a writer and a reader on one file: exit %d: %s", code, stderr)
	}

	// Jobs that run together must agree on how the image is opened.
	mixed := append(two[:len(two):len(two)], "--direct=1")
	if code, _, stderr := runMain(t, mixed...); code == 0 || !strings.Contains(stderr, "another job of this group") {
		t.Errorf("a buffered and a direct job on one file: exit %d: %s; want them told to agree", code, stderr)
	}

	t.Run("qemu-io", func(t *testing.T) {
		if _, err := exec.LookPath("qemu-io"); err != nil {
			t.Skip("qemu-io not installed")
		}
		img := filepath.Join(dir, "q.qcow2")
		if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", img, "4M").CombinedOutput(); err != nil {
			t.Fatalf("qemu-img create: %v: %s", err, out)
		}
		holdQemuIO(t, img)
		before, _ := os.ReadFile(img)
		code, _, stderr := runMain(t, "--name=j", "--ioengine=ringblk", "--filename="+img, "--rw=randwrite",
			"--bs=64k", "--size=4m", "--iodepth=4")
		if code == 0 || !strings.Contains(stderr, `Failed to get "write" lock`) {
			t.Errorf("write job on a qcow2 qemu-io holds: exit %d, stderr %q; want a lock refusal", code, stderr)
		}
		if after, _ := os.ReadFile(img); !bytes.Equal(before, after) {
			t.Error("the refused job changed the image qemu-io holds")
		}
		code, _, stderr = runMain(t, "--name=j", "--ioengine=ringblk", "--filename="+img, "--rw=randread",
			"--bs=64k", "--size=4m")
		if code == 0 || !strings.Contains(stderr, `Failed to get shared "write" lock`) {
			t.Errorf("read job on a qcow2 qemu-io writes: exit %d, stderr %q; want a lock refusal", code, stderr)
		}
	})
}
