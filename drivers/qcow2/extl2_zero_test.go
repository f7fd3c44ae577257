package qcow2

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// l2Bitmaps returns the subcluster bitmaps of the first n clusters of the
// extended-L2 image at path.
func l2Bitmaps(t *testing.T, path string, n int64) []uint64 {
	t.Helper()
	im, err := openFile(t, path, format.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cs := im.Geometry.ClusterSize()
	out := make([]uint64, n)
	for c := range n {
		le, err := im.Lookup(c * cs)
		if err != nil {
			t.Fatalf("cluster %d: %v", c, err)
		}
		out[c] = le.Bitmap
	}
	return out
}

// TestQcow2ExtL2ZeroesLikeQemu (iotest 271's zero sections): the same
// write-zeroes on twin extended-L2 images, one through qemu-io 7.2 and one
// through this driver, leave the same subcluster bitmaps in every cluster
// and the same content. Covered: a request whose pieces cover part of a
// compressed cluster (written as zeros: allocated, not zero bits), an
// unaligned head over a backing file (copy-on-write of that subcluster),
// the last cluster of an image ending inside it (zero bits only up to the
// end), with and without unmapping.
func TestQcow2ExtL2ZeroesLikeQemu(t *testing.T) {
	needQemu(t)
	for _, backing := range []bool{false, true} {
		dir := t.TempDir()
		base := filepath.Join(dir, "base.raw")
		const size = 2083 << 10
		mk := func(name string) string {
			p := filepath.Join(dir, name)
			args := []string{"create", "-q", "-f", "qcow2", "-o", "extended_l2=on"}
			if backing {
				args = append(args, "-b", base, "-F", "raw")
			}
			qemuImg(t, append(args, p, "2083k")...)
			var cmds []string
			for c := 18; c <= 28; c++ {
				cmds = append(cmds, "write -c -P 0x5a "+strconv.FormatInt(int64(c)*64<<10, 10)+" 64k")
			}
			cmds = append(cmds, "write -P 0x33 576k 576k")
			qemuIO(t, p, cmds...)
			return p
		}
		if backing {
			if out, err := exec.Command("qemu-img", "create", "-q", "-f", "raw", base, "2083k").CombinedOutput(); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0xff 0 2083k", base).CombinedOutput(); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
		}
		theirs, ours := mk("theirs.qcow2"), mk("ours.qcow2")
		type zero struct {
			off, n int64
			unmap  bool
		}
		k := int64(1024)
		zeros := []zero{
			{0, 192 * k, false},              // whole unallocated clusters
			{3*64*k + 32*k, 128 * k, false},  // subcluster aligned
			{6*64*k + 31*k, 128 * k, false},  // unaligned head and tail
			{12*64*k + 32*k, 128 * k, false}, // over allocated clusters
			{15*64*k + 31*k, 128 * k, true},  // unaligned, unmapping
			{18 * 64 * k, 192 * k, false},    // whole compressed clusters
			{21*64*k + 32*k, 128 * k, false}, // part of compressed clusters
			{24*64*k + 31*k, 129 * k, true},  // unaligned over compressed
			{27*64*k + 31*k, 128 * k, false}, // compressed head, plain tail
			{30*64*k + 31*k, 8 * k, false},   // inside one cluster
			{32 * 64 * k, 35 * k, false},     // the last, partial cluster
		}
		for _, z := range zeros {
			cmd := "write -z "
			if z.unmap {
				cmd = "write -z -u "
			}
			qemuIO(t, theirs, cmd+strconv.FormatInt(z.off, 10)+" "+strconv.FormatInt(z.n, 10))
		}
		e := newTestEnv(t)
		n := e.mustOpen(ours, false)
		for _, z := range zeros {
			var flags block.Flags
			if z.unmap {
				flags = block.MayUnmap
			}
			if err := n.WriteZeroes(z.off, z.n, flags); err != nil {
				t.Fatalf("write-zeroes %d+%d: %v", z.off, z.n, err)
			}
		}
		if err := n.Unref(); err != nil {
			t.Fatal(err)
		}
		want, got := l2Bitmaps(t, theirs, 33), l2Bitmaps(t, ours, 33)
		for c := range want {
			if want[c] != got[c] {
				t.Errorf("backing %v: cluster %d bitmap %#016x, qemu-io left %#016x", backing, c, got[c], want[c])
			}
		}
		if out, err := exec.Command("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", theirs, ours).CombinedOutput(); err != nil {
			t.Errorf("backing %v: content differs: %v\n%s", backing, err, out)
		}
		qemuImgCheckClean(t, ours)
		os.Remove(theirs)
	}
}
