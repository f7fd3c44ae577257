package job_test

import (
	"bytes"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/job"
)

// TestBackupPointInTime: a full backup taken while a guest on an IOThread
// keeps overwriting the source (the copy slowed by a speed limit, so the
// guest overwrites clusters the job has not copied yet) holds exactly the
// source as it was when the backup's setup drained it. The filter is gone
// afterwards and the guest's front end is back on the source.
func TestBackupPointInTime(t *testing.T) {
	const size = 1 << 20
	me := newMirrorEnv(t, size, 50*time.Microsecond)
	var want []byte
	me.src.DrainedBegin()
	want = me.srcMem.Snapshot()
	j, bk, err := job.NewBackup(me.m, job.BackupOptions{Options: job.Options{ID: "b", Speed: 2 << 20},
		Source: me.src, Target: me.tgt, Sync: job.BackupFull, Drained: true, MaxRequest: 64 << 10, Parallel: 2})
	me.src.DrainedEnd()
	if err != nil {
		t.Fatal(err)
	}
	w0 := me.g.writes.Load()
	j.Start()
	if err := waitDone(t, j); err != nil {
		t.Fatal(err)
	}
	if me.g.writes.Load() == w0 || bk.CopiedBeforeWrite() == 0 {
		t.Fatalf("%d guest writes during the backup, %d bytes copied before writes: nothing raced the job",
			me.g.writes.Load()-w0, bk.CopiedBeforeWrite())
	}
	if bytes.Equal(me.srcMem.Snapshot(), want) {
		t.Fatal("the guest did not change the source")
	}
	if got := me.tgtMem.Snapshot(); !bytes.Equal(got, want) {
		t.Fatalf("target differs from the point-in-time source at byte %d", firstDiff(got, want))
	}
	if me.fe.Root() != me.src {
		t.Fatalf("front end on %s after the backup", me.fe.Root().Name())
	}
	me.close(t)
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// TestBackupBitmapModes: incremental backups copy only what the bitmap
// marks; after success the bitmap holds only writes made during the
// backup (on-success) or everything since it was created (never =
// differential); a failed backup with always keeps what was not copied
// and with on-success keeps everything.
func TestBackupBitmapModes(t *testing.T) {
	for _, tc := range []struct {
		sync job.BackupSync
		mode job.BitmapMode
		fail bool
	}{
		{job.BackupIncremental, 0, false},
		{job.BackupDifferential, 0, false},
		{job.BackupBitmap, job.Always, true},
		{job.BackupBitmap, job.OnSuccess, true},
		{job.BackupBitmap, job.Never, false},
	} {
		t.Run(fmt.Sprintf("sync%d-mode%d-fail%v", tc.sync, tc.mode, tc.fail), func(t *testing.T) {
			const size = 1 << 20
			e := blocktest.NewEnv(t, 0)
			srcMem := randomMem(size, 3)
			src := e.Open(srcMem, block.Options{Name: "src"})
			tgt, dbg, tgtMem := debugTarget(e, "tgt", size)
			m := job.NewManager(e.G, nil)
			bm := markedSource(t, src)
			chunk := bytes.Repeat([]byte{0xab}, 64<<10)
			gw := bytes.Repeat([]byte{0xcd}, 4096)
			if bm.Count() != 3<<16 {
				t.Fatalf("bitmap count %d", bm.Count())
			}
			if tc.fail {
				dbg.AddRule(blocktest.Rule{Op: block.OpWrite, OffMin: 9 << 16, Err: syscall.EIO})
			}
			var j *job.Job
			// Writes racing with the backup: one to a cluster in the bitmap
			// (copied before write), one elsewhere; made from the job's
			// first iteration via a slow speed limit.
			j, _, err := job.NewBackup(m, job.BackupOptions{Options: job.Options{ID: "b", Speed: 1 << 20}, Source: src, Target: tgt,
				Sync: tc.sync, Bitmap: "inc", BitmapMode: tc.mode, MaxRequest: 64 << 10, Parallel: 1})
			if err != nil {
				t.Fatal(err)
			}
			if !bm.Busy() || bm.Enabled() {
				t.Fatal("user bitmap not frozen during the backup")
			}
			if err := src.RemoveBitmap("inc"); err == nil {
				t.Fatal("removed a bitmap a backup holds")
			}
			fe := e.FrontEnd("fe", e.G.NodeByName("#backup-cbw-b"), block.FrontEndOptions{})
			j.Start()
			res := blocktest.NewResult()
			e.OnMain(func() { fe.Queue(e.Main).Write(gw, 5<<16, 0, res, 0) })
			res.Wait(e)
			res2 := blocktest.NewResult()
			e.OnMain(func() { fe.Queue(e.Main).Write(gw, 12<<16, 0, res2, 0) })
			res2.Wait(e)
			err = waitDone(t, j)
			if tc.fail != (err != nil) {
				t.Fatalf("result %v", err)
			}
			if bm.Busy() || !bm.Enabled() || len(src.Bitmaps()) != 1 {
				t.Fatalf("bitmap not released: busy %v enabled %v, %d bitmaps", bm.Busy(), bm.Enabled(), len(src.Bitmaps()))
			}
			var got []int64
			bm.Extents(func(o, n int64) bool { got = append(got, o>>16, n>>16); return true })
			var want []int64
			mode := tc.mode
			switch tc.sync {
			case job.BackupIncremental:
				mode = job.OnSuccess
			case job.BackupDifferential:
				mode = job.Never
			}
			switch {
			case mode != job.Never && !tc.fail:
				want = []int64{5, 1, 12, 1} // writes during the backup
			case tc.fail && tc.mode == job.Always:
				want = []int64{5, 1, 9, 1, 12, 1} // not copied, and new
			default:
				want = []int64{0, 1, 5, 1, 9, 1, 12, 1} // everything since creation
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("bitmap after the backup: %v (64 KiB chunks: start, count), want %v", got, want)
			}
			if !tc.fail {
				// Only the marked clusters were copied, as of the start.
				tg := tgtMem.Snapshot()
				for c, want := range map[int64][]byte{0: chunk, 5: chunk, 9: chunk, 1: make([]byte, 64<<10), 12: make([]byte, 64<<10)} {
					if !bytes.Equal(tg[c<<16:(c+1)<<16], want) {
						t.Fatalf("target cluster %d wrong (copied: 0, 5, 9 as of the start)", c)
					}
				}
			}
			fe.Close()
			src.Unref()
			tgt.Unref()
		})
	}
}

// TestBackupAlwaysAfterSourceGrew: a bitmap backup with bitmap-mode
// always that fails after its source grew (a host's Device.Resize; QMP
// refuses block_resize under a job, as QEMU does) keeps what it did not
// copy and the writes past the old end. Before, the copy bitmap of the
// old size could not be merged into the grown user bitmap ("sizes ...
// differ") after the user bitmap was cleared: the uncopied chunks were
// lost.
func TestBackupAlwaysAfterSourceGrew(t *testing.T) {
	const size = 1 << 20
	e := blocktest.NewEnv(t, 0)
	src := e.Open(randomMem(size, 3), block.Options{Name: "src"})
	tgt, dbg, _ := debugTarget(e, "tgt", size)
	m := job.NewManager(e.G, nil)
	bm := markedSource(t, src)
	dbg.AddRule(blocktest.Rule{Op: block.OpWrite, OffMin: 9 << 16, Err: syscall.EIO})
	j, _, err := job.NewBackup(m, job.BackupOptions{Options: job.Options{ID: "b", Speed: 1 << 20}, Source: src, Target: tgt,
		Sync: job.BackupBitmap, Bitmap: "inc", BitmapMode: job.Always, MaxRequest: 64 << 10, Parallel: 1})
	if err != nil {
		t.Fatal(err)
	}
	var terr error
	e.OnMain(func() { terr = src.Truncate(2 * size) })
	if terr != nil {
		t.Fatal(terr)
	}
	src.WriteAt(bytes.Repeat([]byte{0xab}, 4096), 24<<16)
	j.Start()
	if err := waitDone(t, j); err == nil {
		t.Fatal("backup succeeded past an injected error")
	}
	var got []int64
	bm.Extents(func(o, n int64) bool { got = append(got, o>>16, n>>16); return true })
	if want := []int64{9, 1, 24, 1}; bm.Size() != 2*size || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("bitmap after the failed backup: size %d, %v (64 KiB chunks: start, count), want %v", bm.Size(), got, want)
	}
	src.Unref()
	tgt.Unref()
}
