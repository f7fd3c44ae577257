package imgcmd

import (
	"bytes"
	"encoding/binary"
	"os"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// pokeFile writes b at off in the file name.
func pokeFile(t *testing.T, name string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(name, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// withFeatureTable replaces the header extensions of a fresh qcow2 image
// (header length 112, no backing file) with a feature name table holding
// data.
func withFeatureTable(t *testing.T, name string, data []byte) {
	t.Helper()
	ext := append(append(be32(0x6803f857), be32(uint32(len(data)))...), data...)
	for len(ext)%8 != 0 {
		ext = append(ext, 0)
	}
	ext = append(ext, make([]byte, 8)...) // end of extensions
	pokeFile(t, name, 112, append(ext, make([]byte, 4096)...))
}

// TestUnknownFeaturesWordedAsQemu: an image with incompatible feature
// bits ringblk does not know is refused in qemu-img's words, naming the
// bits from the image's feature table (iotest 036); as ringblk the
// message names the field and the bits.
func TestUnknownFeaturesWordedAsQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img")
	t.Chdir(t.TempDir())
	name := func(bit byte, s string) []byte {
		e := make([]byte, 48)
		e[1] = bit
		copy(e[2:], s)
		return e
	}
	for _, c := range []struct {
		bits  uint64
		table []byte
	}{
		{1 << 63, nil},
		{1 << 63, []byte("\x00\x3fTest feature")},
		{7 << 61, []byte("\x00\x3dTest feature")},
		{7 << 61, append(name(61, "test1"), name(62, "test2")...)},
	} {
		clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "64M")
		withFeatureTable(t, "a.qcow2", c.table)
		pokeFile(t, "a.qcow2", 72, be64(c.bits))
		qemuAndOurs(t, "info", "a.qcow2")
	}
	var o, e bytes.Buffer
	if code := Info([]string{"a.qcow2"}, &o, &e); code == 0 || !strings.Contains(e.String(), "incompatible_features") ||
		!strings.Contains(e.String(), `bit 61 "test1"`) {
		t.Errorf("as ringblk: exit %d, %q", code, e.String())
	}
}

// TestCheckRepairClearsUnknownAutoclear: check -r all leaves no autoclear
// bit ringblk does not know, as qemu-img's read-write open clears them
// (iotest 036); known bits stay.
func TestCheckRepairClearsUnknownAutoclear(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "64M")
	pokeFile(t, "a.qcow2", 88, be64(1<<63|1<<40))
	o, e, code := runAsQemuImg(t, "check", "-r", "all", "a.qcow2")
	if code != 0 {
		t.Fatalf("check -r all: exit %d %s%s", code, o, e)
	}
	b, err := os.ReadFile("a.qcow2")
	if err != nil {
		t.Fatal(err)
	}
	if got := binary.BigEndian.Uint64(b[88:]); got != 0 {
		t.Errorf("autoclear_features after check -r all: %#x, want 0", got)
	}
}

// TestOptionSizeMessagesAsQemu: an option value that is not a size is
// refused in qemu-img's three lines (iotest 049), for size= and the other
// size options, in create and amend; lazy_refcounts on a compat=0.10
// image is refused after the "Formatting" line.
func TestOptionSizeMessagesAsQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img")
	t.Chdir(t.TempDir())
	for _, args := range [][]string{
		{"create", "-f", "qcow2", "-o", "size=-1024", "a.qcow2"},
		{"create", "-f", "qcow2", "-o", "size=1kilobyte", "a.qcow2"},
		{"create", "-f", "qcow2", "-o", "cluster_size=64kB", "a.qcow2", "1M"},
		{"create", "-f", "qcow2", "-o", "compat=0.10,lazy_refcounts=on", "a.qcow2", "64M"},
	} {
		os.Remove("a.qcow2")
		qemuAndOurs(t, args...)
	}
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "b.qcow2", "1M")
	qemuAndOurs(t, "amend", "-o", "size=foo", "b.qcow2")
	var o, e bytes.Buffer
	if code := Create([]string{"-f", "qcow2", "-o", "size=foo", "c.qcow2"}, &o, &e); code != 1 || strings.Count(e.String(), "\n") != 1 ||
		!strings.Contains(e.String(), "'size'") {
		t.Errorf("as ringblk: exit %d, %q", code, e.String())
	}
}

// TestRefcountBitsNumberAsQemu: refcount_bits is read as strtoull reads
// it, so "-1" is a number out of range, refused after the Formatting
// line, and "foo" is not a number (iotest 112).
func TestRefcountBitsNumberAsQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img")
	t.Chdir(t.TempDir())
	for _, v := range []string{"-1", "foo", "0x10", "+16", "1_6"} {
		os.Remove("a.qcow2")
		qemuAndOurs(t, "create", "-f", "qcow2", "-o", "refcount_bits="+v, "a.qcow2", "64M")
	}
}
