package qemuio

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli"
	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// TestInactiveL2CheckMatchesQemuIO (iotest 080, "Invalid snapshot L1
// table offset/size"): with overlap-check.inactive-l2=on, a write whose
// copy-on-write must write refcount blocks meets the snapshot's invalid
// L1 table and fails, as in qemu-io, with the same errno; the close's
// write-back fails the same way, and what is left on disk (qemu-img
// check's report) is what qemu-io leaves. Without the option the write
// succeeds on both sides.
func TestInactiveL2CheckMatchesQemuIO(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	cases := []struct {
		name   string
		poke   func(snapTable int64) (off int64, b []byte)
		option bool
	}{
		{"unaligned-l1-offset", func(st int64) (int64, []byte) {
			return st, binary.BigEndian.AppendUint64(nil, 0x400200)
		}, true},
		{"l1-too-large", func(st int64) (int64, []byte) {
			return st + 8, binary.BigEndian.AppendUint32(nil, 0x10000000)
		}, true},
		{"option-off", func(st int64) (int64, []byte) {
			return st, binary.BigEndian.AppendUint64(nil, 0x400200)
		}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, b := c.name+"-qemu.qcow2", c.name+"-ours.qcow2"
			for _, img := range []string{a, b} {
				off, p := c.poke(snapshottedImage(t, img))
				pokeFile(t, img, off, p)
			}
			open := "open "
			if c.option {
				open += "-o overlap-check.inactive-l2=on "
			}
			qo, qe, qc := clitest.QemuIO(t, "-c", open+a, "-c", "write 0 4k")
			oo, oe, oc := ioRun("", "-c", open+b, "-c", "write 0 4k")
			if qc != oc {
				t.Errorf("exit status %d, qemu-io %d\nours:\n%s%s\nqemu-io:\n%s%s", oc, qc, oo, oe, qo, qe)
			}
			if w, g := normIO(qo), normIO(oo); !slices.Equal(w, g) {
				t.Errorf("stdout differs\nours:\n%s\nqemu-io:\n%s", strings.Join(g, "\n"), strings.Join(w, "\n"))
			}
			we, ge := normIO(qe), normIO(oe)
			slices.Sort(we)
			slices.Sort(ge)
			if !slices.Equal(we, ge) {
				t.Errorf("stderr differs\nours:\n%s\nqemu-io:\n%s", oe, qe)
			}
			// What reached the disk: qemu-img check of both images.
			qcheck, _ := clitest.Qemu(t, "qemu-img", "check", a)
			ocheck, _ := clitest.Qemu(t, "qemu-img", "check", b)
			if w, g := strings.ReplaceAll(qcheck, a, "IMG"), strings.ReplaceAll(ocheck, b, "IMG"); w != g {
				t.Errorf("qemu-img check differs\nours:\n%s\nqemu-io's:\n%s", g, w)
			}
		})
	}
}

// TestQemuIODropInStdoutOrder: as the qemu-io drop-in with -c commands,
// stdout is buffered like qemu-io's (a pipe, not a terminal), so the
// close's error line comes before the commands' output in one combined
// stream, as in qemu-io's `2>&1` output (iotest 080).
func TestQemuIODropInStdoutOrder(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	for _, img := range []string{"a.qcow2", "b.qcow2"} {
		pokeFile(t, img, snapshottedImage(t, img), binary.BigEndian.AppendUint64(nil, 0x400200))
	}
	args := func(img string) []string {
		return []string{"-c", "open -o overlap-check.inactive-l2=on " + img, "-c", "write 0 4k", "-c", "read 0 4k"}
	}
	want, _ := exec.Command("qemu-io", args("a.qcow2")...).CombinedOutput()
	saved := cli.Prog
	cli.Prog = "qemu-io"
	defer func() { cli.Prog = saved }()
	var both bytes.Buffer
	Run(args("b.qcow2"), strings.NewReader(""), &both, &both)
	if w, g := normIO(string(want)), normIO(both.String()); !slices.Equal(w, g) {
		t.Errorf("combined output differs\nours:\n%s\nqemu-io:\n%s", strings.Join(g, "\n"), strings.Join(w, "\n"))
	}
}

// snapshottedImage makes img with qemu-img: 64 MiB, 512 bytes written, one
// snapshot "test"; it returns the header's snapshot table offset.
func snapshottedImage(t *testing.T, img string) int64 {
	t.Helper()
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "64M")
	if _, _, code := clitest.QemuIO(t, "-c", "write 0 512", img); code != 0 {
		t.Fatalf("qemu-io write: exit %d", code)
	}
	clitest.MustQemu(t, "qemu-img", "snapshot", "-c", "test", img)
	h, err := os.ReadFile(img)
	if err != nil || len(h) < 72 {
		t.Fatalf("reading %s's header: %v", img, err)
	}
	return int64(binary.BigEndian.Uint64(h[64:72]))
}

// pokeFile writes p at off in the file img.
func pokeFile(t *testing.T, img string, off int64, p []byte) {
	t.Helper()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
}
