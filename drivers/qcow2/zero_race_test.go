package qcow2

// Regression tests for bugs the crash harnesses (killtest_test.go,
// crash_test.go) found.

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// TestQcow2PartialZeroWaitsForAllocatingWrite: a write-zeroes of the tail
// of a cluster, submitted while a write to the head of the same cluster is
// allocating it, must leave the write's data in place. zeroPartial used to
// peek at the L2 entry without waiting for the in-flight allocation, see
// Unallocated ("reads as zero already"), and call zeroCluster for the
// whole cluster, which then waited for the allocation, found the newly
// linked Normal|COPIED entry and turned it into ZERO_ALLOC: the
// acknowledged write was lost (also after a flush). Found by TestQcow2KillNine (c4k: op 8 wrote 88576+11264, op 19
// zeroed 99840+7168 while op 8 was in flight).
func TestQcow2PartialZeroWaitsForAllocatingWrite(t *testing.T) {
	needQemu(t)
	e := newTestEnv(t)
	img := filepath.Join(t.TempDir(), "x.qcow2")
	if err := e.create(img, 1<<20, format.CreateOptions{ClusterSize: 4096}); err != nil {
		t.Fatal(err)
	}
	n := e.mustOpen(img, false)
	data := bytes.Repeat([]byte{7}, 1536)
	cd := &countDone{}
	e.main.Run(func() {
		pool := e.g.Pool(e.main)
		w := pool.Get()
		w.Op, w.Off = block.OpWrite, 8192 // head of cluster 2
		w.SetBuf(data)
		z := pool.Get()
		z.Op, z.Off, z.Len = block.OpWriteZeroes, 8192+1536, 4096-1536 // its tail
		n.Submit(w, cd)
		n.Submit(z, cd)
		e.main.WaitWhile(func() bool { return cd.n < 2 })
	})
	if len(cd.errs) > 0 {
		t.Fatal(cd.errs[0])
	}
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := n.ReadAt(got, 8192); err != nil {
		t.Fatal(err)
	}
	n.Unref()
	if !bytes.Equal(got, data) {
		t.Errorf("ringblk reads %02x at byte %d of the written range, want 07", got[firstDiff(got, data)], firstDiff(got, data))
	}
	var m []qemuMapEntry
	if err := json.Unmarshal(qemuImg(t, "map", "--output=json", img), &m); err != nil {
		t.Fatal(err)
	}
	for _, x := range m {
		if x.Start <= 8192 && 8192 < x.Start+x.Length && !x.Data {
			t.Errorf("qemu-img map: cluster 2 is present=%v zero=%v data=%v, want data", x.Present, x.Zero, x.Data)
		}
	}
}
