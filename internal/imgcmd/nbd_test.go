package imgcmd

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"

	"github.com/ringblk/ringblk/internal/nbdtest"
)

// TestImageCommandsOnNBD: info, map, convert (both ways), compare and check
// accept nbd+unix:// URIs, and say what qemu-img says about the same URI
// (served by qemu-nbd from a qcow2 image).
func TestImageCommandsOnNBD(t *testing.T) {
	for _, tool := range []string{"qemu-nbd", "qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (scripts/deps.sh installs it)", tool)
		}
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "a.qcow2")
	qrun := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	qrun("qemu-img", "create", "-q", "-f", "qcow2", img, "32M")
	qrun("qemu-io", "-f", "qcow2", "-c", "write -P 0x61 2M 1M", "-c", "write -P 0x62 17M 3M", img)
	sock := nbdtest.StartQemuNbd(t, "-t", "-e", "0", "-f", "qcow2", "-x", "vm", img)
	uri := "nbd+unix:///vm?socket=" + sock
	ring := func(args ...string) string {
		t.Helper()
		out, stderr, code := clitest.RunRingblk(t, nil, args...)
		if code != 0 {
			t.Fatalf("ringblk %v: exit %d: %s", args, code, stderr)
		}
		return out
	}
	for _, args := range [][]string{
		{"info", uri}, {"info", "--output=json", uri},
		{"map", "--output=json", uri}, {"map", uri},
	} {
		if ours, theirs := ring(args...), qrun("qemu-img", args...); ours != theirs {
			t.Errorf("%v:\nringblk:\n%s\nqemu-img:\n%s", args, ours, theirs)
		}
	}
	out := filepath.Join(dir, "out.raw")
	ring("convert", "-O", "raw", uri, out)
	qrun("qemu-img", "compare", "-f", "raw", "-F", "qcow2", "-U", out, img)
	ring("compare", "-f", "raw", "-F", "raw", uri, out)
	// Into the export: new data, then the export equals the source.
	src := filepath.Join(dir, "src.raw")
	data := bytes.Repeat([]byte{0x7e}, 5<<20)
	f, _ := os.Create(src)
	f.Truncate(32 << 20)
	f.WriteAt(data, 8<<20)
	f.Close()
	ring("convert", "-n", "-f", "raw", "-O", "raw", src, uri)
	qrun("qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri)
	// Without -n the target is "created" as qemu-img does on NBD: the
	// export must be large enough; its first sector is zeroed.
	ring("convert", "-f", "raw", "-O", "raw", out, uri)
	qrun("qemu-img", "compare", "-f", "raw", "-F", "raw", out, uri)
	if o := ring("create", "-f", "raw", uri, "32M"); o != "Formatting '"+uri+"', fmt=raw size=33554432\n" {
		t.Errorf("create on NBD printed %q", o)
	}
	if _, stderr, code := clitest.RunRingblk(t, nil, "create", "-f", "raw", uri, "64M"); code != 1 || !strings.Contains(stderr, "cannot grow") {
		t.Errorf("create larger than the export: exit %d, %q", code, stderr)
	}
	if _, stderr, code := clitest.RunRingblk(t, nil, "check", uri); code != 63 {
		t.Errorf("check on an NBD export: exit %d (%s), want 63 as qemu-img", code, stderr)
	}
	if _, stderr, code := clitest.RunRingblk(t, nil, "info", "nbd+unix:///vm?socket="+filepath.Join(dir, "none")); code != 1 || stderr == "" {
		t.Errorf("info on a missing socket: exit %d, stderr %q", code, stderr)
	}
}
