package qemuio

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ringblk/ringblk/internal/cli/clitest"
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
	sock := filepath.Join(dir, "q.sock")
	q := exec.Command("qemu-nbd", "-t", "-e", "0", "-f", "raw", "-k", sock, img)
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { q.Process.Kill(); q.Wait() }()
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", sock); err == nil { // listening, not just bound
			c.Close()
			break
		}
		if i == 200 {
			t.Fatal("qemu-nbd did not start")
		}
		time.Sleep(25 * time.Millisecond)
	}
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
