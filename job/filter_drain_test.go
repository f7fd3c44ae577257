package job_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/job"
)

// TestFilterTargetWriteWaitsForDrainedEnd: [JOB][DRAIN] D3 for a job's
// target: a guest write that the job's filter passes on to the target (a
// backup's copy-before-write, a write-blocking mirror's second write) does
// not reach the target while the target is drained. The filter is a parent
// of the target, so the drain quiesces it and the guest's front end above
// it: the write waits at the front end and completes after the drained
// end, with the target holding the old data (backup) or the new (mirror).
// The jobs are paused, so only the filter could write the target. CI saw
// the stress test's drain of a backup target find a request in flight.
func TestFilterTargetWriteWaitsForDrainedEnd(t *testing.T) {
	for _, kind := range []string{"backup", "mirror-write-blocking"} {
		t.Run(kind, func(t *testing.T) {
			const size = 1 << 20
			e := blocktest.NewEnv(t, 1)
			srcMem, tgtMem := randomMem(size, 3), blocktest.NewMem(size)
			src := e.Open(srcMem, block.Options{Name: "src"})
			tgt := e.Open(tgtMem, block.Options{Name: "tgt"})
			fe := e.FrontEnd("fe", src, block.FrontEndOptions{AllowContextChange: true})
			if err := fe.SetContext(e.IO[0]); err != nil {
				t.Fatal(err)
			}
			m := job.NewManager(e.G, nil)
			old := srcMem.Snapshot()
			var j *job.Job
			var err error
			if kind == "backup" {
				j, _, err = job.NewBackup(m, job.BackupOptions{Options: job.Options{ID: "b", Speed: 64 << 10},
					Source: src, Target: tgt, Sync: job.BackupFull, MaxRequest: 64 << 10, Parallel: 1})
			} else {
				j, _, err = job.NewMirror(m, job.MirrorOptions{Options: job.Options{ID: "m"}, Source: src, Target: tgt,
					Sync: job.MirrorNone, CopyMode: job.WriteBlocking, Granularity: 4096})
			}
			if err != nil {
				t.Fatal(err)
			}
			j.Start()
			if err := j.Pause(); err != nil {
				t.Fatal(err)
			}
			e.WaitFor("job parked", j.Parked)

			const off = size - 64<<10 // the backup copies from the start: this cluster is not copied yet
			buf := bytes.Repeat([]byte{0xa5}, 4096)
			d := blocktest.NewResult()
			tgt.DrainedBegin()
			before := tgtMem.Snapshot()
			e.On(e.IO[0], func() { fe.Queue(e.IO[0]).Write(buf, off, 0, d, 0) })
			time.Sleep(50 * time.Millisecond)
			if d.Finished() {
				t.Errorf("the guest write completed while the target was drained")
			}
			if !bytes.Equal(tgtMem.Snapshot(), before) {
				t.Errorf("the target changed inside its drained section")
			}
			if n := tgt.InFlight(); n != 0 {
				t.Errorf("%d requests in flight on the drained target", n)
			}
			tgt.DrainedEnd()
			d.Wait(e)
			if d.Err != nil {
				t.Fatal(d.Err)
			}
			want := buf
			if kind == "backup" {
				want = old[off : off+4096]
			}
			if got := tgtMem.Snapshot()[off : off+4096]; !bytes.Equal(got, want) {
				t.Errorf("target at %d holds %x..., want %x...", off, got[:8], want[:8])
			}
			if err := j.Cancel(true); err != nil {
				t.Fatal(err)
			}
			waitDone(t, j)
			wantQuiet(t, src, tgt)
			if err := fe.SetContext(e.Main); err != nil {
				t.Fatal(err)
			}
			fe.Close()
			src.Unref()
			tgt.Unref()
		})
	}
}
