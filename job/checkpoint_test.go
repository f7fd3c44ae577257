package job_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/job"
)

// TestCheckpointIncrementalChain: a full backup at checkpoint 1 and
// incremental backups at checkpoints 2, 3 and 4, each started inside its
// checkpoint's drained section while a guest keeps writing the source.
// The full backup is a raw file; each incremental is a qcow2 overlay of
// the previous backup that receives only the checkpoint's changed
// clusters. Restored by qemu-img (compare reads the overlay through its
// backing chain), each backup equals the source at its checkpoint.
func TestCheckpointIncrementalChain(t *testing.T) {
	needQemuImg(t)
	const size = 4 << 20
	dir := t.TempDir()
	e := blocktest.NewEnv(t, 1)
	srcMem := randomMem(size, 40)
	src := e.Open(srcMem, block.Options{Name: "src"})
	fe := e.FrontEnd("fe", src, block.FrontEndOptions{AllowContextChange: true})
	if err := fe.SetContext(e.IO[0]); err != nil {
		t.Fatal(err)
	}
	g := startGuest(e, fe, e.IO[0], size, 2, 41, 300*time.Microsecond)
	m := job.NewManager(e.G, nil)
	ch, err := job.NewChain(src, "cbt", 4096)
	if err != nil {
		t.Fatal(err)
	}
	prev := ""
	for k := 1; k <= 4; k++ {
		// The target: raw for the full backup, else a qcow2 overlay of
		// the previous backup.
		var tgt *block.Node
		var path string
		if k == 1 {
			path = filepath.Join(dir, "full.raw")
			if err := os.WriteFile(path, make([]byte, size), 0o644); err != nil {
				t.Fatal(err)
			}
			tgt = openRaw(t, e, path, "tgt1")
		} else {
			path = filepath.Join(dir, fmt.Sprintf("inc%d.qcow2", k))
			fmtPrev := "qcow2"
			if k == 2 {
				fmtPrev = "raw"
			}
			if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", prev, "-F", fmtPrev, path).CombinedOutput(); err != nil {
				t.Fatalf("qemu-img create: %v: %s", err, out)
			}
			img, err := chain.Open(e.G, path, chain.Options{Format: "qcow2", Name: fmt.Sprintf("tgt%d", k)})
			if err != nil {
				t.Fatal(err)
			}
			tgt = img.Node
		}
		want := filepath.Join(dir, fmt.Sprintf("want%d.raw", k))
		var j *job.Job
		var changed int64
		cp, err := ch.Checkpoint(func(cp *job.Checkpoint) error {
			// Inside the drained section: the state to back up.
			if err := os.WriteFile(want, srcMem.Snapshot(), 0o644); err != nil {
				return err
			}
			o := job.BackupOptions{Options: job.Options{ID: fmt.Sprint("b", k)}, Source: src, Target: tgt, Drained: true}
			if cp.Changes == nil {
				o.Sync = job.BackupFull
			} else {
				o.Sync, o.CopyBitmap = job.BackupBitmap, cp.Changes
				changed = cp.Changes.Count()
			}
			var err error
			j, _, err = job.NewBackup(m, o)
			return err
		})
		if err != nil {
			t.Fatalf("checkpoint %d: %v", k, err)
		}
		if cp.Seq != uint64(k) || (k > 1) != (cp.Changes != nil) {
			t.Fatalf("checkpoint %d: %+v", k, cp)
		}
		if k > 1 && (changed == 0 || changed >= size) {
			t.Fatalf("checkpoint %d: %d changed bytes: not an increment", k, changed)
		}
		j.Start()
		if err := waitDone(t, j); err != nil {
			t.Fatalf("backup %d: %v", k, err)
		}
		if err := tgt.Unref(); err != nil {
			t.Fatal(err)
		}
		f := "raw"
		if k > 1 {
			f = "qcow2"
		}
		if out, st := qemuCompare(t, path, f, want, "raw"); st != 0 {
			t.Fatalf("restore of checkpoint %d differs from the source at the checkpoint: %s", k, out)
		}
		if out, err := exec.Command("qemu-img", "check", "-q", path).CombinedOutput(); k > 1 && err != nil {
			t.Fatalf("qemu-img check %s: %v %s", path, err, out)
		}
		prev = path
		w := g.writes.Load()
		e.WaitFor("guest writes before the next checkpoint", func() bool { return g.writes.Load() > w+50 })
	}
	// Chain maintenance: Since(1) equals the merge of 2..4; deleting 3
	// moves its changes into 4, so Since(2) is unchanged.
	all, err := ch.Since(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := ch.Since(2, 0)
	if err := ch.Delete(3); err != nil {
		t.Fatal(err)
	}
	after, _ := ch.Since(2, 0)
	if !before.Equal(after) || len(ch.Checkpoints()) != 3 {
		t.Fatal("deleting a checkpoint lost changes")
	}
	if err := ch.Rotate(1); err != nil {
		t.Fatal(err)
	}
	cps := ch.Checkpoints()
	// The oldest checkpoint left stands for "everything" (nothing older
	// exists to be incremental against), so it keeps no bitmap.
	if len(cps) != 1 || cps[0].Seq != 4 || cps[0].Changes != nil {
		t.Fatalf("after rotate: %d checkpoints", len(cps))
	}
	if all.Count() == 0 || ch.Active() == nil || !ch.Active().Enabled() {
		t.Fatal("chain state")
	}
	var names []string
	for _, b := range src.Bitmaps() {
		names = append(names, b.Name())
	}
	if fmt.Sprint(names) != "[cbt]" {
		t.Fatalf("bitmaps left on the node: %v", names)
	}
	g.halt(e)
	fe.SetContext(e.Main)
	fe.Close()
	src.Unref()
}

// TestCheckpointAtomic: no write is lost or double-counted at a
// checkpoint boundary: with a guest writing continuously, the union of the
// frozen bitmaps plus the active one equals a bitmap that tracked
// everything, and During failing undoes the checkpoint.
func TestCheckpointAtomic(t *testing.T) {
	const size = 2 << 20
	e := blocktest.NewEnv(t, 1)
	src := e.Open(randomMem(size, 1), block.Options{Name: "src"})
	fe := e.FrontEnd("fe", src, block.FrontEndOptions{AllowContextChange: true})
	fe.SetContext(e.IO[0])
	ref, _ := src.AddBitmap("ref", 4096)
	ch, _ := job.NewChain(src, "c", 4096)
	if _, err := ch.Checkpoint(nil); err != nil {
		t.Fatal(err)
	}
	// ref tracks from checkpoint 1 on, like the chain: both restart inside
	// one drained section.
	src.DrainedBegin()
	ref.Clear()
	ch.Active().Clear()
	src.DrainedEnd()
	g := startGuest(e, fe, e.IO[0], size, 4, 2, 20*time.Microsecond)
	for i := 0; i < 20; i++ {
		if _, err := ch.Checkpoint(nil); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := ch.Checkpoint(func(*job.Checkpoint) error { return fmt.Errorf("export refused") }); err == nil {
		t.Fatal("failing During accepted")
	}
	g.halt(e)
	union, err := ch.Since(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := union.Merge(ch.Active()); err != nil {
		t.Fatal(err)
	}
	if !union.Equal(ref) || ref.IsEmpty() {
		t.Fatalf("checkpoints %d dirty bytes, reference %d", union.Count(), ref.Count())
	}
	if len(ch.Checkpoints()) != 21 || ch.Active().Name() != "c" {
		t.Fatalf("%d checkpoints after a refused one", len(ch.Checkpoints()))
	}
	fe.SetContext(e.Main)
	fe.Close()
	src.Unref()
}

// TestCheckpointExport: a checkpoint whose During starts a fleecing backup
// (sync=none) gives an export the exact state of the checkpoint: while a
// guest keeps writing the source, the snapshot node reads what the source
// held inside the checkpoint's drained section, and the frozen bitmap
// names what changed since the previous checkpoint. After the job ends
// the snapshot fails reads instead of showing a mix.
func TestCheckpointExport(t *testing.T) {
	const size = 2 << 20
	e := blocktest.NewEnv(t, 1)
	srcMem := randomMem(size, 50)
	src := e.Open(srcMem, block.Options{Name: "src"})
	tmp := e.Open(blocktest.NewMem(size), block.Options{Name: "fleece"})
	fe := e.FrontEnd("fe", src, block.FrontEndOptions{AllowContextChange: true})
	fe.SetContext(e.IO[0])
	g := startGuest(e, fe, e.IO[0], size, 4, 51, 30*time.Microsecond)
	m := job.NewManager(e.G, nil)
	ch, _ := job.NewChain(src, "cbt", 4096)
	if _, err := ch.Checkpoint(nil); err != nil {
		t.Fatal(err)
	}
	w := g.writes.Load()
	e.WaitFor("guest writes", func() bool { return g.writes.Load() > w+100 })
	var want []byte
	var j *job.Job
	var bk *job.Backup
	cp, err := ch.Checkpoint(func(cp *job.Checkpoint) error {
		want = srcMem.Snapshot()
		var err error
		j, bk, err = job.NewBackup(m, job.BackupOptions{Options: job.Options{ID: "fleece"}, Source: src, Target: tmp,
			Sync: job.BackupNone, Drained: true, ClusterSize: 4096})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	j.Start()
	e.WaitFor("ready", func() bool { return j.IsReady() })
	snap := bk.Snapshot()
	exp := e.FrontEnd("export", snap, block.FrontEndOptions{})
	w = g.writes.Load()
	e.WaitFor("guest writes after the checkpoint", func() bool { return g.writes.Load() > w+300 })
	got := make([]byte, size)
	for off := int64(0); off < size; off += 256 << 10 {
		if _, err := snap.ReadAt(got[off:off+256<<10], off); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("export differs from the checkpoint state at %d", firstDiff(got, want))
	}
	if bytes.Equal(srcMem.Snapshot(), want) || bk.CopiedBeforeWrite() == 0 {
		t.Fatal("the guest did not change the source after the checkpoint")
	}
	if cp.Changes == nil || cp.Changes.IsEmpty() {
		t.Fatal("no changes recorded between the checkpoints")
	}
	exp.Close()
	if err := j.Complete(); err != nil {
		t.Fatal(err)
	}
	if err := waitDone(t, j); err != nil {
		t.Fatal(err)
	}
	g.halt(e)
	fe.SetContext(e.Main)
	fe.Close()
	src.Unref()
	tmp.Unref()
}
