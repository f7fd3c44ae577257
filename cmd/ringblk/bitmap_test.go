package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

func needTools(t *testing.T, names ...string) {
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Skipf("%s not installed (scripts/deps.sh installs it)", n)
		}
	}
}

func mustTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// bitmapImage: a 64 MiB qcow2 image with persistent bitmap b0 added by
// qemu-img and dirtied by qemu-io at [0, 4k) and [3M, 3M+64k).
func bitmapImage(t *testing.T) string {
	needTools(t, "qemu-img", "qemu-io", "qemu-nbd", "nbdinfo")
	img := filepath.Join(t.TempDir(), "bm.qcow2")
	mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "64M")
	mustTool(t, "qemu-img", "bitmap", "--add", img, "b0")
	mustTool(t, "qemu-io", "-f", "qcow2", "-c", "write 0 4k", "-c", "write 3M 64k", img)
	return img
}

// startRingblkNbd runs "ringblk nbd -k sock args…" in the background.
func startRingblkNbd(t *testing.T, sock string, args ...string) *exec.Cmd {
	t.Helper()
	exe, _ := os.Executable()
	cmd := exec.Command(exe, append([]string{"nbd", "-k", sock}, args...)...)
	cmd.Env = append(os.Environ(), clitest.AsMainEnv+"=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			return cmd
		}
		if i == 200 {
			t.Fatalf("ringblk nbd did not create its socket: %s", stderr.String())
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// TestBitmapKill9: a ringblk nbd process writing to an image with a
// persistent bitmap is killed (SIGKILL): qemu-img check is clean, and the
// bitmap is reported in use by qemu-img info and ringblk info; qemu-nbd
// and ringblk nbd both refuse to export it; ringblk bitmap --remove
// removes it and check stays clean.
func TestBitmapKill9(t *testing.T) {
	img := bitmapImage(t)
	sock := filepath.Join(t.TempDir(), "s")
	cmd := startRingblkNbd(t, sock, "-f", "qcow2", "-t", img)
	mustTool(t, "qemu-io", "-f", "raw", "-c", "write -P 7 8M 1M", "-c", "flush", "-c", "write 20M 64k", "nbd+unix:///?socket="+sock)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	time.Sleep(50 * time.Millisecond)
	mustTool(t, "qemu-img", "check", img)
	if out := mustTool(t, "qemu-img", "info", img); !strings.Contains(out, "[0]: in-use") {
		t.Fatalf("qemu-img info after kill -9:\n%s", out)
	}
	if out, _, code := clitest.RunRingblk(t, nil, "info", img); code != 0 || !strings.Contains(out, "[0]: in-use") {
		t.Fatalf("ringblk info after kill -9 (exit %d):\n%s", code, out)
	}
	if _, stderr, code := clitest.RunRingblk(t, nil, "check", img); code != 0 {
		t.Fatalf("ringblk check: exit %d %s", code, stderr)
	}
	if _, stderr, code := clitest.RunRingblk(t, nil, "nbd", "-r", "-k", sock+"2", "-B", "b0", img); code != 1 || !strings.Contains(stderr, "inconsistent") {
		t.Fatalf("ringblk nbd -B of an in-use bitmap: exit %d %s", code, stderr)
	}
	mustTool(t, "qemu-io", "-f", "qcow2", "-c", "read -P 7 8M 1M", img)
	if _, stderr, code := clitest.RunRingblk(t, nil, "bitmap", "--clear", img, "b0"); code != 1 || !strings.Contains(stderr, "inconsistent") {
		t.Fatalf("bitmap --clear of an in-use bitmap: exit %d %s", code, stderr)
	}
	if _, stderr, code := clitest.RunRingblk(t, nil, "bitmap", "--remove", img, "b0"); code != 0 {
		t.Fatalf("bitmap --remove: exit %d %s", code, stderr)
	}
	mustTool(t, "qemu-img", "check", img)
	if out := mustTool(t, "qemu-img", "info", img); strings.Contains(out, "bitmaps:") {
		t.Fatalf("bitmap still listed:\n%s", out)
	}
}
