package imgcmd

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// TestCreateExtL2SmallClusterAfterLine: extended_l2=on with clusters
// below 16 KiB (or a v2 image) is refused by the qcow2 driver, so
// qemu-img prints its "Formatting" line first (iotest 271).
func TestCreateExtL2SmallClusterAfterLine(t *testing.T) {
	clitest.NeedQemu(t)
	t.Chdir(t.TempDir())
	for _, o := range []string{"extended_l2=on,cluster_size=8k", "extended_l2=on,compat=0.10"} {
		want, wcode := clitest.Qemu(t, "qemu-img", "create", "-f", "qcow2", "-o", o, "t.qcow2", "1M")
		got, stderr, code := clitest.Ours(Create, "-f", "qcow2", "-o", o, "t.qcow2", "1M")
		if code != wcode || got != want || !strings.Contains(stderr, "Extended L2 entries are only supported") {
			t.Errorf("%s: exit %d (qemu-img %d), stdout %q (qemu-img %q), stderr %q", o, code, wcode, got, want, stderr)
		}
	}
}

// TestCheckRepairUnalignedEntriesLikeQemu (iotest 271's "Detect and
// repair unaligned clusters"): check -r all over an L2 entry with an
// unaligned host offset prints qemu-img's lines in qemu-img's order (its
// stdout, a C stream into a pipe, comes after the second check's
// messages) and leaves the same metadata. A preallocated cluster (no
// data: an extended entry without allocated subclusters, a standard
// zero entry) is dropped and its cluster freed; a data cluster cannot be
// repaired (its two clusters stay referenced, the refcount structure is
// rebuilt around them).
func TestCheckRepairUnalignedEntriesLikeQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "base.raw", "128k")
	clitest.MustQemu(t, "qemu-io", "-f", "raw", "-c", "write -q -P 0xff 0 128k", "base.raw")
	cases := []struct {
		name, opts string
		writes     []string
	}{
		{"extended, allocated subcluster", "extended_l2=on", []string{"write -q -P 1 4k 2k"}},
		{"extended, no allocated subcluster", "extended_l2=on", []string{"write -q -P 1 4k 2k", "write -q -z 4k 2k"}},
		{"standard, data cluster", "extended_l2=off", []string{"write -q -P 1 0 64k"}},
		{"standard, preallocated zero cluster", "extended_l2=off", []string{"write -q -P 1 0 64k", "write -q -z 0 64k"}},
	}
	for _, c := range cases {
		var imgs [2][]byte
		var outs [2]string
		var codes [2]int
		for side, name := range []string{"theirs.qcow2", "ours.qcow2"} {
			clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", c.opts, "-F", "raw", "-b", "base.raw", name)
			args := []string{"-f", "qcow2"}
			for _, w := range c.writes {
				args = append(args, "-c", w)
			}
			clitest.MustQemu(t, "qemu-io", append(args, name)...)
			f, err := os.OpenFile(name, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt([]byte{2}, 0x40000+6) // the host offset 0x50200
			f.Close()
			if side == 0 {
				cmd := exec.Command("qemu-img", "check", "-r", "all", name)
				var b bytes.Buffer
				cmd.Stdout, cmd.Stderr = &b, &b
				err := cmd.Run()
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					codes[0] = ee.ExitCode()
				} else if err != nil {
					t.Fatal(err)
				}
				outs[0] = b.String()
			} else {
				var b bytes.Buffer
				codes[1] = Check([]string{"-r", "all", name}, &b, &b)
				outs[1] = b.String()
			}
			imgs[side], _ = os.ReadFile(name)
		}
		if outs[0] != outs[1] || codes[0] != codes[1] {
			t.Errorf("%s: exit %d, output\n%s\nqemu-img: exit %d, output\n%s", c.name, codes[1], outs[1], codes[0], outs[0])
		}
		// Every cluster in use after qemu-img's repair must be equal;
		// freed clusters differ only in content (QEMU punches them,
		// ringblk leaves the bytes: drivers/qcow2/repair.go).
		if d := usedClustersDiffer(t, imgs[0], imgs[1]); d != "" {
			t.Errorf("%s: %s", c.name, d)
		}
	}
}

// usedClustersDiffer compares two qcow2 files: the same size, and the
// same bytes in every cluster the first one's refcounts say is in use.
func usedClustersDiffer(t *testing.T, want, got []byte) string {
	t.Helper()
	if len(want) != len(got) {
		return fmt.Sprintf("file size %d, qemu-img's %d", len(got), len(want))
	}
	im, err := format.ReadImage(bytes.NewReader(want), int64(len(want)), format.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cs := im.Geometry.ClusterSize()
	for off := int64(0); off < int64(len(want)); off += cs {
		rc, err := im.Refcount(off)
		if err != nil {
			t.Fatal(err)
		}
		end := min(off+cs, int64(len(want)))
		if rc > 0 && !bytes.Equal(want[off:end], got[off:end]) {
			return fmt.Sprintf("cluster at %#x (in use) differs from qemu-img's", off)
		}
	}
	return ""
}
