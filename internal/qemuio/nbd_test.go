package qemuio

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"

	"github.com/ringblk/ringblk/internal/nbdtest"
)

// TestIOOnNBD: `ringblk io` opens an nbd+unix:// URI (served by qemu-nbd)
// and its writes, reads with pattern checks and write-zeroes agree with
// qemu-io's on the same export.
func TestIOOnNBD(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	if _, err := exec.LookPath("qemu-nbd"); err != nil {
		t.Skip("qemu-nbd not installed (scripts/deps.sh installs it)")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "a.raw")
	os.WriteFile(img, nil, 0o644)
	os.Truncate(img, 8<<20)
	sock := nbdtest.StartQemuNbd(t, "-t", "-e", "0", "-f", "raw", img)
	uri := "nbd+unix:///?socket=" + sock
	args := []string{"-f", "raw", "-c", "write -P 0x5c 1M 96k", "-c", "write -z 1040k 8k", "-c", "flush",
		"-c", "read -P 0x5c 1M 16k", "-c", "read -P 0 1040k 8k", "-c", "read -v 1048570 12", uri}
	ours, stderr, code := ioRun("", args...)
	if code != 0 || strings.Contains(ours, "fail") {
		t.Fatalf("ringblk io on %s: exit %d %s\n%s", uri, code, stderr, ours)
	}
	theirs, _, qcode := clitest.QemuIO(t, args...)
	if qcode != 0 {
		t.Fatalf("qemu-io on %s: exit %d\n%s", uri, qcode, theirs)
	}
	a, b := normIO(ours), normIO(theirs)
	if strings.Join(a, "\n") != strings.Join(b, "\n") {
		t.Fatalf("ringblk io:\n%s\nqemu-io:\n%s", strings.Join(a, "\n"), strings.Join(b, "\n"))
	}
}
