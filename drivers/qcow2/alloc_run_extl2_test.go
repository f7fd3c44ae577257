package qcow2

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/ringblk/ringblk/block"
)

// TestExtL2WriteTakesFreeRunLikeQemu (iotest 271's "Zero + unmap 2"): on an
// extended-L2 image, a write whose clusters all need new host clusters
// gets them as the first run of that many free clusters, as qemu-io 7.2
// places them, not one first-free cluster each: the fallback write of a
// write-zeroes over two compressed clusters (after its head moved the
// compressed cluster before them away, whose freed host cluster completes
// a run), and a guest write over three. The image state before comes from
// qemu-io itself, with single free clusters between used ones.
func TestExtL2WriteTakesFreeRunLikeQemu(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	k := int64(1024)
	base := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(base, bytes.Repeat([]byte{0xff}, int(2083*k)), 0o644); err != nil {
		t.Fatal(err)
	}
	before := filepath.Join(dir, "before.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "-b", base, "-F", "raw", before, "2083k")
	cmds := []string{"write -P 1 576k 576k", "write -z -u 576k 192k", "write -z -u 800k 128k", "write -z -u 991k 128k"}
	for c := 18; c <= 28; c++ {
		cmds = append(cmds, "write -c -P "+strconv.Itoa(c)+" "+strconv.Itoa(c*64)+"k 64k")
	}
	cmds = append(cmds, "write -z -u 1152k 192k", "write -z -u 1376k 128k")
	for _, c := range cmds {
		qemuIO(t, before, c) // one qemu-io run each, as the iotest
	}
	img, err := os.ReadFile(before)
	if err != nil {
		t.Fatal(err)
	}
	off, n := 1567*k, 129*k
	for _, zero := range []bool{true, false} {
		theirs, ours := filepath.Join(dir, "theirs.qcow2"), filepath.Join(dir, "ours.qcow2")
		for _, p := range []string{theirs, ours} {
			if err := os.WriteFile(p, img, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		cmd := "write -P 7 "
		if zero {
			cmd = "write -z -u "
		}
		qemuIO(t, theirs, cmd+strconv.FormatInt(off, 10)+" "+strconv.FormatInt(n, 10))
		e := newTestEnv(t)
		nd := e.mustOpen(ours, false)
		if zero {
			err = nd.WriteZeroes(off, n, block.MayUnmap)
		} else {
			_, err = nd.WriteAt(bytes.Repeat([]byte{7}, int(n)), off)
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := nd.Unref(); err != nil {
			t.Fatal(err)
		}
		want, got := l2Entries(t, theirs, 33), l2Entries(t, ours, 33) // raw words
		for c := range want {
			if want[c] != got[c] {
				t.Errorf("zero %v: cluster %d: entry %#016x %016x, qemu-io's %#016x %016x", zero, c, got[c][0], got[c][1], want[c][0], want[c][1])
			}
		}
		if out, err := exec.Command("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", theirs, ours).CombinedOutput(); err != nil {
			t.Errorf("zero %v: content differs: %v\n%s", zero, err, out)
		}
		qemuImgCheckClean(t, ours)
	}
}
