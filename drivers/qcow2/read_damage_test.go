package qcow2

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestReadInvalidL2EntryLikeQemu (iotest 271's corrupted L2 entry read
// sections, 060's unaligned entry): a read that meets an extended-L2 entry
// with an invalid bitmap, or a data cluster at an unaligned offset, fails
// and reports the corruption in qemu-io 7.2's words; a writable image is
// marked corrupt byte for byte as qemu-io leaves it, a read-only one is
// left alone and reported as non-fatal, once.
func TestReadInvalidL2EntryLikeQemu(t *testing.T) {
	needQemu(t)
	type tc struct {
		name, opts, setup string
		poke              int64
		val               []byte
		off, n            int64
	}
	cases := []tc{
		{"allocated and zero", "extended_l2=on", "write -q 32k 128k", 0x40000 + 24, []byte{0, 0, 0, 1}, 0, 192 << 10},
		{"allocated in unallocated cluster", "extended_l2=on", "write -q 256k 1k", 0x40000 + 15, []byte{1}, 0, 1 << 10},
		{"unaligned data cluster", "", "write -q 0 64k", 0x40000 + 6, []byte{0x2a}, 0, 64 << 10},
	}
	for _, c := range cases {
		for _, ro := range []bool{false, true} {
			dir := t.TempDir()
			theirs := filepath.Join(dir, "theirs.qcow2")
			args := []string{"create", "-q", "-f", "qcow2"}
			if c.opts != "" {
				args = append(args, "-o", c.opts)
			}
			qemuImg(t, append(args, theirs, "1M")...)
			qemuIO(t, theirs, c.setup)
			f, err := os.OpenFile(theirs, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(c.val, c.poke); err != nil {
				t.Fatal(err)
			}
			f.Close()
			img, _ := os.ReadFile(theirs)
			ours := filepath.Join(dir, "ours.qcow2")
			if err := os.WriteFile(ours, img, 0o644); err != nil {
				t.Fatal(err)
			}

			qargs := []string{"-f", "qcow2"}
			if ro {
				qargs = append(qargs, "-r")
			}
			read := "read -q " + strconv.FormatInt(c.off, 10) + " " + strconv.FormatInt(c.n, 10)
			var stderr bytes.Buffer
			cmd := exec.Command("qemu-io", append(qargs, "-c", read, "-c", read, theirs)...)
			cmd.Stderr = &stderr
			out, _ := cmd.Output()
			want := strings.SplitN(stderr.String(), "\n", 2)[0]
			if !strings.Contains(string(out), "read failed") || !strings.HasPrefix(want, "qcow2: ") {
				t.Fatalf("%s: qemu-io gave %q, stderr %q", c.name, out, stderr.String())
			}

			var reports []string
			CorruptionReport = func(msg string) { reports = append(reports, msg) }
			e := newTestEnv(t)
			n := e.mustOpen(ours, ro)
			buf := make([]byte, c.n)
			_, err1 := n.ReadAt(buf, c.off)
			_, err2 := n.ReadAt(buf, c.off)
			n.Unref()
			CorruptionReport = nil
			if err1 == nil || err2 == nil {
				t.Errorf("%s ro=%v: reads returned %v, %v; want errors", c.name, ro, err1, err2)
			}
			if len(reports) != 1 || reports[0] != want {
				t.Errorf("%s ro=%v: reported %q, qemu-io %q", c.name, ro, reports, want)
			}
			a, _ := os.ReadFile(theirs)
			b, _ := os.ReadFile(ours)
			if !bytes.Equal(a, b) {
				t.Errorf("%s ro=%v: the image differs from the one qemu-io left", c.name, ro)
			}
		}
	}
}
