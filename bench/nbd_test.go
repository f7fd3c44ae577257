package bench

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRingblkEngineOnNBD: ioengine=ringblk takes an nbd+unix:// URI as its
// filename (colons and all): a write job with verify=crc32c writes through
// the NBD client driver to qemu-nbd and reads every block back verified,
// and the region is the export's size.
func TestRingblkEngineOnNBD(t *testing.T) {
	if _, err := exec.LookPath("qemu-nbd"); err != nil {
		t.Skip("qemu-nbd not installed (scripts/deps.sh installs it)")
	}
	dir := benchDir(t)
	file := filepath.Join(dir, "e.raw")
	f, _ := os.Create(file)
	f.Truncate(8 << 20)
	f.Close()
	sock := filepath.Join(dir, "q.sock")
	q := exec.Command("qemu-nbd", "-t", "-e", "0", "-f", "raw", "-k", sock, file)
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { q.Process.Kill(); q.Wait() }()
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i == 200 {
			t.Fatal("qemu-nbd did not start")
		}
		time.Sleep(25 * time.Millisecond)
	}
	uri := "nbd+unix:///?socket=" + sock
	code, out, stderr := runMain(t, "--name=w", "--ioengine=ringblk", "--filename="+uri, "--rw=randwrite",
		"--bs=16k", "--iodepth=16", "--verify=crc32c")
	if code != 0 {
		t.Fatalf("bench on %s: exit %d: %s", uri, code, stderr)
	}
	if !strings.Contains(out, "IOPS=") || !strings.Contains(out, "8192KiB") {
		t.Fatalf("bench output (want 8 MiB written, the export's size):\n%s", out)
	}
}
