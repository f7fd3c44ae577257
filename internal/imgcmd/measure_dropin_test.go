package imgcmd

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// TestMeasureArgumentsAsQemu: measure's argument mistakes are reported
// in qemu-img's order and words, sizes read as qemu-img reads them (7E
// is a raw size, too large for qcow2's L1 table), and -l measures an
// internal snapshot (iotest 178).
func TestMeasureArgumentsAsQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img", "qemu-io")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "1G")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write 0 512k", "a.qcow2")
	clitest.MustQemu(t, "qemu-img", "snapshot", "-c", "snapshot1", "a.qcow2")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write 64M 64M", "a.qcow2")
	for _, args := range [][]string{
		{"measure", "a.qcow2", "b"},
		{"measure", "--image-opts"},
		{"measure", "-f", "qcow2"},
		{"measure", "-l", "snap1"},
		{"measure", "-o", ","},
		{"measure", "-l", "snapshot.foo=bar"},
		{"measure", "--output", "foo"},
		{"measure", "--size", "-1"},
		{"measure", "-O", "foo", "a.qcow2"},
		{"measure", "-O", "raw", "--size", "7E"},
		{"measure", "-O", "qcow2", "--size", "7E"},
		{"measure", "-O", "qcow2", "-f", "qcow2", "-l", "snapshot1", "a.qcow2"},
		{"measure", "-O", "qcow2", "-f", "qcow2", "-l", "snapshot.name=snapshot1", "a.qcow2"},
		{"measure", "-O", "qcow2", "-f", "qcow2", "-l", "snapshot.id=1,snapshot.name=snapshot1", "--output=json", "a.qcow2"},
		{"measure", "-O", "qcow2", "-f", "qcow2", "a.qcow2"},
	} {
		qemuAndOurs(t, args...)
	}
	var o, e bytes.Buffer
	if code := Measure([]string{"-l", "snapshot.foo=bar"}, &o, &e); code != 1 || !strings.Contains(e.String(), "'snapshot.foo'") ||
		strings.Count(e.String(), "\n") != 1 {
		t.Errorf("as ringblk: exit %d, %q", code, e.String())
	}
}

// TestConvertSnapshotAsQemu: convert -l copies an internal snapshot, not
// the active disk (iotest 178's converted size), with the same data as
// qemu-img's copy.
func TestConvertSnapshotAsQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img", "qemu-io")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "16M")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 1 0 512k", "a.qcow2")
	clitest.MustQemu(t, "qemu-img", "snapshot", "-c", "s1", "a.qcow2")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 2 256k 1M", "a.qcow2")
	clitest.MustQemu(t, "qemu-img", "convert", "-l", "s1", "-O", "raw", "a.qcow2", "theirs.raw")
	if o, e, code := runAsQemuImg(t, "convert", "-l", "s1", "-O", "raw", "a.qcow2", "ours.raw"); code != 0 {
		t.Fatalf("convert -l: exit %d %s%s", code, o, e)
	}
	a, _ := os.ReadFile("ours.raw")
	b, _ := os.ReadFile("theirs.raw")
	if !bytes.Equal(a, b) || len(a) != 16<<20 {
		t.Errorf("convert -l s1: %d bytes, differs from qemu-img's %d", len(a), len(b))
	}
	qemuAndOurs(t, "convert", "-l", "nosuch", "-O", "raw", "a.qcow2", "x.raw")
}
