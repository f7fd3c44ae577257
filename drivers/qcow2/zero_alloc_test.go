package qcow2

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/ringblk/ringblk/block"
)

// TestQcow2WriteReusesPreallocatedZeroClusters: a write over preallocated
// zero clusters (ZERO_ALLOC with COPIED, here made by QEMU's write -z)
// writes into those host clusters, as QEMU does (iotest 066), also for the
// whole clusters in the middle of the write that planRun batches: the
// qemu-img map before and after is the same, and nothing leaks.
func TestQcow2WriteReusesPreallocatedZeroClusters(t *testing.T) {
	needQemu(t)
	img := filepath.Join(t.TempDir(), "z.qcow2")
	qemuCreate(t, img, "", 64<<20)
	qemuIO(t, img, "write -P 42 1M 256k")
	before := string(qemuImg(t, "map", "--output=json", img))
	qemuIO(t, img, "write -z 1M 256k")
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	data := bytes.Repeat([]byte{23}, 192<<10)
	if _, err := n.WriteAt(data, 1<<20+32<<10); err != nil {
		t.Fatal(err)
	}
	if err := n.Unref(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, img)
	qemuIO(t, img, "read -P 0 1M 32k", "read -P 23 1056k 192k", "read -P 0 1248k 32k")
	if after := string(qemuImg(t, "map", "--output=json", img)); after != before {
		t.Errorf("the write moved the preallocated clusters:\nbefore %s\nafter  %s", before, after)
	}
}

// writeZeroes runs one write-zeroes request on n.
func writeZeroes(t *testing.T, e *testEnv, n *block.Node, off, length int64) {
	t.Helper()
	cd := &countDone{}
	e.main.Run(func() {
		z := e.g.Pool(e.main).Get()
		z.Op, z.Off, z.Len = block.OpWriteZeroes, off, length
		n.Submit(z, cd)
		e.main.WaitWhile(func() bool { return cd.n < 1 })
	})
	if len(cd.errs) > 0 {
		t.Fatalf("write-zeroes %d+%d: %v", off, length, cd.errs[0])
	}
}

// TestQcow2PartialZeroOverBackingMakesZeroCluster: a write-zeroes of part
// of an unallocated cluster of an overlay makes the whole cluster a zero
// cluster when the rest of it reads as zero from the backing file
// (unallocated there), as QEMU does (iotest 154); when the backing file
// has data in the rest of the cluster, the cluster gets that data and
// zeros (allocated, not a zero cluster).
func TestQcow2PartialZeroOverBackingMakesZeroCluster(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	qemuCreate(t, base, "cluster_size=512", 1<<20)
	qemuIO(t, base, "write -P 0x11 32k 1k")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "base.qcow2", "-F", "qcow2", top, "1M")
	e := newTestEnv(t)
	n := e.mustOpen(top, false)
	writeZeroes(t, e, n, 0, 2048)       // head of cluster 0; the base is empty there
	writeZeroes(t, e, n, 27<<10, 2<<10) // across clusters 6 and 7
	writeZeroes(t, e, n, 34<<10, 1<<10) // cluster 8: the base has data at its start
	if err := n.Unref(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, top)
	qemuIO(t, top, "read -P 0 0 32k", "read -P 0x11 32k 1k", "read -P 0 33k 3k")
	want := map[int64]string{0: "zero", 24 << 10: "zero", 28 << 10: "zero", 32 << 10: "data"}
	for _, x := range parseQemuMap(t, qemuImg(t, "map", "--output=json", top)) {
		for off, kind := range want {
			if x.Start > off || off >= x.Start+x.Length {
				continue
			}
			got := "data"
			if !x.Data {
				got = "zero"
			}
			if x.Depth != 0 || got != kind {
				t.Errorf("cluster at %d: depth %d, %s; want depth 0, %s", off, x.Depth, got, kind)
			}
		}
	}
}
