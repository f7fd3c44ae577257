package qemuio

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDataFileOpenWordedAsQemuIO: the open failures of external data
// files in qemu-io 7.2's words (iotests 061, 244): a data file given that
// does not exist, an image with the data file bit but no name, a data
// file given for an image without one; and a read through a data file
// given on the command line works.
func TestDataFileOpenWordedAsQemuIO(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (make test installs qemu-utils)")
	}
	t.Chdir(t.TempDir())
	for _, args := range [][]string{
		{"create", "-q", "-f", "qcow2", "-o", "data_file=t.data", "t.qcow2", "1M"},
		{"create", "-q", "-f", "qcow2", "p.qcow2", "1M"},
	} {
		if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
		}
	}
	out, _ := runAsQemuIO(t, "-c", "open -o data-file.filename=inexistent t.qcow2", "-c", "read 0 4k")
	if want := "qemu-io: can't open device t.qcow2: Could not open 'inexistent': No such file or directory\n"; !strings.Contains(out, want) {
		t.Errorf("missing data file:\n%s\nwant %q", out, want)
	}
	out, _ = runAsQemuIO(t, "-c", "open -o data-file.filename=t.data p.qcow2", "-c", "read 0 4k")
	if want := "qemu-io: can't open device p.qcow2: 'data-file' can only be set for images with an external data file\n"; !strings.Contains(out, want) {
		t.Errorf("data file for a plain image:\n%s\nwant %q", out, want)
	}
	if out, err := exec.Command("qemu-img", "amend", "-o", "data_file=", "t.qcow2").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img amend: %v\n%s", err, out)
	}
	out, code := runAsQemuIO(t, "-c", "read 0 4k", "t.qcow2")
	if want := "qemu-io: can't open device t.qcow2: 'data-file' is required for this image\n"; code == 0 || !strings.Contains(out, want) {
		t.Errorf("no data file name: exit %d\n%s\nwant %q", code, out, want)
	}
	out, code = runAsQemuIO(t, "-c", "open -o data-file.filename=t.data t.qcow2", "-c", "read -P 0 0 4k")
	if code != 0 || !strings.Contains(out, "read 4096/4096 bytes at offset 0") {
		t.Errorf("data file given: exit %d\n%s", code, out)
	}
}
