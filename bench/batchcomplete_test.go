package bench

import (
	"os"
	"path/filepath"
	"testing"
)

// TestBatchCompleteMin: with iodepth_batch_complete=8 a clone of depth 16
// issues again only after 8 completions (or once all finished), and the
// ring engine waits for that many.
func TestBatchCompleteMin(t *testing.T) {
	spec := mustParse(t, "--name=b", "--ioengine=io_uring", "--rw=randread", "--size=1m", "--iodepth=16",
		"--iodepth_batch_complete=8", "--time_based", "--runtime=1h")
	j := spec.Jobs[0]
	if j.IODepthBatchCompleteMin != 8 {
		t.Fatalf("iodepth_batch_complete parsed as %d", j.IODepthBatchCompleteMin)
	}
	w := newWorker(j, 0, 0, 1<<20)
	bufs := make([][]byte, 16)
	for i := range bufs {
		bufs[i] = make([]byte, 4096)
	}
	w.setBuffers(bufs)
	w.start()
	var batch []*unit
	for u := w.take(); u != nil; u = w.take() {
		w.fill(u, 0)
		batch = append(batch, u)
	}
	w.submitted(batch, 0)
	if got := w.reapMin(); got != 8 {
		t.Errorf("reapMin with 16 in flight: %d, want 8", got)
	}
	for i, u := range batch[:8] {
		if w.refillDue() {
			t.Fatalf("refill due after %d completions", i)
		}
		w.completed(u, 1, nil)
	}
	if !w.refillDue() {
		t.Error("refill not due after 8 completions")
	}
	for _, u := range batch[8:12] {
		w.completed(u, 1, nil)
	}
	if got := w.reapMin(); got != 4 {
		t.Errorf("reapMin with 4 in flight: %d, want 4", got)
	}
}

// TestFilenameFormat: without filename=, each clone's file is named by
// filename_format in directory=.
func TestFilenameFormat(t *testing.T) {
	dir := benchDir(t)
	spec := mustParse(t, "--name=ff", "--ioengine=psync", "--rw=write", "--size=64k", "--numjobs=2",
		"--directory="+dir, "--filename_format=data.$jobname.$jobnum.$filenum", "--runtime=10s")
	mustRun(t, spec)
	for _, n := range []string{"data.ff.0.0", "data.ff.1.0"} {
		st, err := os.Stat(filepath.Join(dir, n))
		if err != nil || st.Size() != 64<<10 {
			t.Errorf("%s: %v", n, err)
		}
	}
}
