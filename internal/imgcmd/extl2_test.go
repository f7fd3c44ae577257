package imgcmd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
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

// TestMapUnallocatedSubclustersMatchQemu: with extended L2 an unallocated
// subcluster of a cluster that has a host offset (QEMU's
// UNALLOCATED_ALLOC) reads from the backing file or as zeros, yet QEMU's
// block status gives its host offset, so qemu-img map prints "offset"
// where its walk ends on it (the bottom image, directly or under an
// overlay) and does not merge it with plain unallocated clusters.
// compare -s sees the same status on both sides.
func TestMapUnallocatedSubclustersMatchQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "b.qcow2", "4M")
	clitest.MustQemu(t, "qemu-io", "-c", "write -P 1 0 4k", "-c", "write -z 8k 4k", "-c", "write -P 2 70k 2k", "-c", "write -P 3 1M 64k", "b.qcow2")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2")
	clitest.MustQemu(t, "qemu-io", "-c", "write -P 4 2k 2k", "-c", "write -z 68k 8k", "t.qcow2")
	for _, args := range [][]string{
		{"map", "--output=json", "b.qcow2"},
		{"map", "--output=json", "t.qcow2"},
		{"map", "--output=json", "--start-offset=6k", "--max-length=100k", "b.qcow2"},
		{"compare", "-s", "b.qcow2", "t.qcow2"},
	} {
		want, wcode := clitest.Qemu(t, "qemu-img", args...)
		got, errOut, code := clitest.Ours(map[string]func([]string, io.Writer, io.Writer) int{"map": Map, "compare": Compare}[args[0]], args[1:]...)
		if code != wcode || got != want {
			t.Errorf("%v: exit %d (qemu-img %d) %s\n got: %s\nwant: %s", args, code, wcode, errOut, got, want)
		}
	}
}
