package nbdcmd

import (
	"os/exec"
	"path/filepath"
	"testing"
)

func run(t *testing.T, name string, args ...string) string {
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
	needCmd(t, "qemu-img", "qemu-io", "qemu-nbd", "nbdinfo")
	img := filepath.Join(t.TempDir(), "bm.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "64M")
	run(t, "qemu-img", "bitmap", "--add", img, "b0")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write 0 4k", "-c", "write 3M 64k", img)
	return img
}

// TestNbdCmdPersistentBitmap: ringblk nbd -B exports a persistent qcow2
// bitmap as qemu:dirty-bitmap:b0, and nbdinfo --map reads exactly what it
// reads from qemu-nbd -B on the same image: the regions qemu-io dirtied.
func TestNbdCmdPersistentBitmap(t *testing.T) {
	img := bitmapImage(t)
	sock := filepath.Join(t.TempDir(), "s")
	startNbd(t, sock, "-r", "-f", "qcow2", "-B", "b0", img)
	ours := run(t, "nbdinfo", "--map=qemu:dirty-bitmap:b0", "nbd+unix:///?socket="+sock)
	theirs := run(t, "nbdinfo", "--map=qemu:dirty-bitmap:b0", "--", "[", "qemu-nbd", "-r", "-f", "qcow2", "-B", "b0", img, "]")
	want := "         0       65536    1  dirty\n" +
		"     65536     3080192    0  clean\n" +
		"   3145728       65536    1  dirty\n" +
		"   3211264    63897600    0  clean\n"
	if ours != want || theirs != want {
		t.Fatalf("ringblk nbd map:\n%s\nqemu-nbd map:\n%s\nwant:\n%s", ours, theirs, want)
	}
}
