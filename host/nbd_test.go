package host_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/ringblk/ringblk/host"

	"github.com/ringblk/ringblk/internal/nbdtest"
)

// TestOpenNBD: host.OpenDevice takes an nbd+unix:// URI (served by
// qemu-nbd): a host goroutine writes and reads the export through the
// device, and the data lands in the served image.
func TestOpenNBD(t *testing.T) {
	if _, err := exec.LookPath("qemu-nbd"); err != nil {
		t.Skip("qemu-nbd not installed (scripts/deps.sh installs it)")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "a.raw")
	os.WriteFile(img, nil, 0o644)
	os.Truncate(img, 4<<20)
	sock := nbdtest.StartQemuNbd(t, "-t", "-e", "0", "-f", "raw", img)
	h := newHost(t, host.Options{})
	d, err := h.OpenDevice("nbd+unix:///?socket="+sock, host.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w := pattern(make([]byte, 192<<10), 5)
	if _, err := d.WriteAt(w, 1<<20); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(w))
	if _, err := d.ReadAt(got, 1<<20); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "read back through NBD", got, w)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	f, _ := os.ReadFile(img)
	mustEqual(t, "served image", f[1<<20:1<<20+len(w)], w)
}
