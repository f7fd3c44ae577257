package qemuio

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// addBackingFormatExt appends a backing format extension naming f after
// an image's existing extensions (a second one, as iotest 114's qcow2.py
// does) and moves the backing file name behind the new end marker.
func addBackingFormatExt(t *testing.T, img, f string) {
	t.Helper()
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	nameOff, nameLen := be.Uint64(b[8:]), be.Uint32(b[16:])
	name := append([]byte(nil), b[nameOff:nameOff+uint64(nameLen)]...)
	p := uint64(be.Uint32(b[100:])) // header_length
	for be.Uint32(b[p:]) != 0 {
		p += 8 + (uint64(be.Uint32(b[p+4:]))+7)&^7
	}
	ext := be.AppendUint32(nil, 0xe2792aca)
	ext = be.AppendUint32(ext, uint32(len(f)))
	ext = append(ext, f...)
	for len(ext)%8 != 0 {
		ext = append(ext, 0)
	}
	ext = append(ext, make([]byte, 8)...) // end of extensions
	copy(b[p:], ext)
	p += uint64(len(ext))
	copy(b[p:], name)
	be.PutUint64(b[8:], p)
	if err := os.WriteFile(img, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestBackingFormatOverrideAsQemuIO: a second backing format extension
// replaces the first; a format no driver has fails the open of the
// backing file in qemu-io's words, and the open option backing.driver
// overrides the recorded format (iotest 114).
func TestBackingFormatOverrideAsQemuIO(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io", "qemu-img")
	dir := t.TempDir()
	base := filepath.Join(dir, "b.qcow2")
	img := filepath.Join(dir, "t.qcow2")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "1M")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 7 0 64k", base)
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", img, "1M")
	addBackingFormatExt(t, img, "foo")
	if out := clitest.MustQemu(t, "qemu-img", "info", img); !strings.Contains(out, "backing file format: foo") {
		t.Fatalf("qemu-img does not read the second extension:\n%s", out)
	}
	for _, args := range [][]string{
		{"-c", "open " + img, "-c", "read -P 7 0 4k"},
		{"-c", "open -o backing.driver=qcow2 " + img, "-c", "read -P 7 0 4k"},
		{"-c", "open -o backing.driver=raw " + img, "-c", "read -P 0 0 4k"},
	} {
		qo, qe, qc := clitest.QemuIO(t, args...)
		oo, oc := runAsQemuIO(t, args...)
		if w, g := strings.Join(normIO(qo+qe), "\n"), strings.Join(normIO(oo), "\n"); w != g || qc != oc {
			t.Errorf("%v: exit %d\n%s\nqemu-io: exit %d\n%s", args, oc, g, qc, w)
		}
	}
}
