package imgcmd

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestDataFileCommands: qemu-img create -o data_file=...,data_file_raw=on,
// info, amend, map and convert -O qcow2 -o data_file= as ringblk's drop-in
// qemu-img: the "Formatting" line and the info lines are qemu-img 7.2's,
// amend refuses what qemu-img refuses, map names the data file, and real
// qemu-img reads each result identically (compare) with a clean check.
func TestDataFileCommands(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (make test installs qemu-utils)")
	}
	t.Chdir(t.TempDir())
	ours := func(args ...string) (string, string) {
		t.Helper()
		o, e, code := runAsQemuImg(t, args...)
		if code != 0 {
			t.Fatalf("qemu-img %v: exit %d\n%s%s", args, code, o, e)
		}
		return o, e
	}
	o, _ := ours("create", "-f", "qcow2", "-o", "data_file=t.data,data_file_raw=on", "t.qcow2", "4M")
	if want := "Formatting 't.qcow2', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib size=4194304 data_file=t.data data_file_raw=on lazy_refcounts=off refcount_bits=16\n"; o != want {
		t.Errorf("create printed\n%q, want\n%q", o, want)
	}
	o, _ = ours("info", "t.qcow2")
	if !strings.Contains(o, "    refcount bits: 16\n    data file: t.data\n    data file raw: true\n    corrupt: false\n") {
		t.Errorf("info:\n%s", o)
	}
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x3c 64k 1M", "t.qcow2").CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	// data_file_raw: the data file is the disk.
	if out, err := exec.Command("qemu-img", "compare", "-f", "qcow2", "-F", "raw", "t.qcow2", "t.data").CombinedOutput(); err != nil {
		t.Fatalf("compare with the raw data file: %v\n%s", err, out)
	}
	for _, c := range []struct{ opt, want string }{
		{"data_file_raw=on", ""},
		{"data_file_raw=off", ""},
		{"data_file_raw=on", "data-file-raw cannot be set on existing images"},
		{"compat=0.10", "Cannot downgrade an image with a data file"},
	} {
		_, e, code := runAsQemuImg(t, "amend", "-o", c.opt, "t.qcow2")
		if (c.want == "") != (code == 0) || !strings.Contains(e, c.want) {
			t.Errorf("amend -o %s: exit %d, %q; want %q", c.opt, code, e, c.want)
		}
	}
	o, _ = ours("map", "t.qcow2")
	if !strings.Contains(o, "0               0x400000        0               t.data\n") {
		t.Errorf("map:\n%s", o)
	}
	// convert into a new image with a data file, read by qemu-img.
	ours("convert", "-O", "qcow2", "-o", "data_file=c.data", "t.qcow2", "c.qcow2")
	for _, args := range [][]string{{"check", "c.qcow2"}, {"compare", "t.qcow2", "c.qcow2"}} {
		if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
		}
	}
	if b, _ := os.ReadFile("c.data"); len(b) < 2<<20 || b[64<<10] != 0x3c || !bytes.Equal(b[:64<<10], make([]byte, 64<<10)) {
		t.Errorf("converted data file does not hold the data at its guest offsets")
	}
	// A plain image has no data file to rename.
	ours("create", "-f", "qcow2", "p.qcow2", "1M")
	if _, e, code := runAsQemuImg(t, "amend", "-o", "data_file=x", "p.qcow2"); code == 0 || !strings.Contains(e, "data-file can only be set for images that use an external data file") {
		t.Errorf("amend data_file on a plain image: exit %d %q", code, e)
	}
}
