package bench

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/nbdtest"
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
	sock := nbdtest.StartQemuNbd(t, "-t", "-e", "0", "-f", "raw", file)
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
