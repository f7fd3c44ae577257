package job_test

import (
	"bytes"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/job"
)

// TestRebaseJob: [JOB] the rebase job (ringblk rebase's copy) keeps T's
// content when T's backing changes from M (over B) to a new backing: an
// unrelated image N, B itself (in the old chain: Prefix), or none. Only
// what differs is written: a cluster N holds exactly as T read it, and
// with Prefix a cluster no layer above B allocates, stay unallocated in T.
func TestRebaseJob(t *testing.T) {
	const size = 1 << 20
	for _, mode := range []string{"unrelated", "prefix", "none"} {
		t.Run(mode, func(t *testing.T) {
			e := blocktest.NewEnv(t, 0)
			db := newCow(size, nil)
			fillRandom(db, 1)
			b := e.Open(db, block.Options{Name: "B"})
			dm := newCow(size, db)
			fillRandom(dm, 2)
			mid := e.Open(dm, block.Options{Name: "M"})
			e.Attach(mid, b, "backing", block.RoleBacking)
			dt := newCow(size, dm)
			fillRandom(dt, 3)
			top := e.Open(dt, block.Options{Name: "T"})
			e.Attach(top, mid, "backing", block.RoleBacking)
			orig := dt.view()
			before := dt.allocated()

			o := job.RebaseOptions{Options: job.Options{ID: "r"}, Top: top, Chunk: 64 << 10}
			var newDrv *cowMem
			var n *block.Node
			same := int64(-1) // a cluster the new backing reads as T did, unallocated in T
			switch mode {
			case "unrelated":
				newDrv = newCow(size, nil)
				fillRandom(newDrv, 4)
				for c := int64(0); c < size/cowCluster; c++ {
					if !before[c] {
						newDrv.writeAt(orig[c*cowCluster:(c+1)*cowCluster], c*cowCluster)
						same = c
						break
					}
				}
				n = e.Open(newDrv, block.Options{Name: "N"})
				o.NewBacking = n
			case "prefix":
				newDrv = db
				o.NewBacking, o.Prefix = b, b
				ma := dm.allocated()
				for c := int64(0); c < size/cowCluster; c++ {
					if !before[c] && !ma[c] {
						same = c
						break
					}
				}
			}
			j, _, err := job.NewRebase(job.NewManager(e.G, nil), o)
			if err != nil {
				t.Fatal(err)
			}
			j.Start()
			if err := waitDone(t, j); err != nil {
				t.Fatal(err)
			}
			if cur, total := j.Progress(); cur != total || total != size {
				t.Fatalf("progress %d/%d, want %d", cur, total, size)
			}
			// What the caller does next: T's backing becomes the new one.
			dt.backing.Store(newDrv)
			if got := dt.view(); !bytes.Equal(got, orig) {
				t.Fatalf("T over its new backing differs at %d", firstDiff(got, orig))
			}
			after := dt.allocated()
			if same >= 0 && after[same] {
				t.Errorf("cluster %d reads the same over both backings but was written", same)
			}
			for c := range before {
				if before[c] && !after[c] {
					t.Fatalf("cluster %d lost its allocation", c)
				}
			}
			wantQuiet(t, top, mid, b)
			if n != nil {
				wantQuiet(t, n)
				n.Unref()
			}
			top.Unref()
			mid.Unref()
			b.Unref()
		})
	}
}
