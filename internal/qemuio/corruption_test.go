package qemuio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// asProgEnv names the program the test binary run as main calls itself.
const asProgEnv = "RINGBLK_QEMUIO_TEST_PROG"

// runAsQemuIO runs this test binary as ringblk's qemu-io (drop-in mode) and
// returns stdout followed by stderr, and the exit status.
func runAsQemuIO(t *testing.T, args ...string) (string, int) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), asMainEnv+"=1", asProgEnv+"=qemu-io")
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	var ee *exec.ExitError
	code := 0
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return o.String() + e.String(), code
}

// TestCorruptionEventAsQemuIO: a write whose allocation needs a refcount
// block through an unaligned refcount table entry marks the image corrupt
// with QEMU's event line, fails with EIO, and closing reports nothing
// more (iotest 305).
func TestCorruptionEventAsQemuIO(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io", "qemu-img")
	dir := t.TempDir()
	var outs [2]string
	var codes [2]int
	for i := range outs {
		img := filepath.Join(dir, []string{"q.qcow2", "o.qcow2"}[i])
		clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "refcount_bits=64,cluster_size=1k", img, "1M")
		clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write 0 124k", "-c", "discard 121k 1k", "-c", "discard 123k 1k", img)
		b, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		rt := binary.BigEndian.Uint64(b[48:])
		b[rt+14] = 0x06 // refcount_table[1] no longer cluster aligned
		if err := os.WriteFile(img, b, 0o644); err != nil {
			t.Fatal(err)
		}
		args := []string{"-f", "qcow2", "-c", "write 121k 3k", img}
		if i == 0 {
			o, e, code := clitest.QemuIO(t, args...)
			outs[i], codes[i] = o+e, code
		} else {
			outs[i], codes[i] = runAsQemuIO(t, args...)
		}
		outs[i] = strings.ReplaceAll(outs[i], img, "IMG")
	}
	if outs[0] != outs[1] || codes[0] != codes[1] {
		t.Errorf("ours (exit %d):\n%s\nqemu-io (exit %d):\n%s", codes[1], outs[1], codes[0], outs[0])
	}
}
