package bench

import (
	"path/filepath"
	"testing"
)

// TestDepthHistogramKeepsQueueFull (issue 20): on a fast path, with fio's
// default completion batching (iodepth_batch_complete_min = max = 1), every
// I/O is issued at the depth asked for, as fio's own histogram shows
// (32=100%). The ringblk engine refills each completion at once and counts
// a refill at the depth of the io_uring_enter that submits it; the bare
// ring takes one CQE per round and refills it before it takes the next.
// Before the fix the histogram read 8=6% 16=38% 32=55% on zram: the clones
// reaped every completion first and then counted each refilled unit at the
// depth reached while refilling.
func TestDepthHistogramKeepsQueueFull(t *testing.T) {
	dir := benchDir(t)
	file := filepath.Join(dir, "f")
	cases := []struct{ name, engine, format string }{
		{"ringblk-null", "ringblk", "null"},
		{"ringblk-file", "ringblk", "raw"},
		{"io_uring-file", "io_uring", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A fixed amount of I/O (two passes over 8 MiB), not a time:
			// enough I/Os for the histogram however loaded the machine is.
			args := []string{"--name=d", "--ioengine=" + tc.engine, "--size=8m", "--rw=randread", "--bs=4k",
				"--iodepth=32", "--loops=2", "--norandommap"}
			if tc.format == "null" {
				args = append(args, "--format=null")
			} else {
				args = append(args, "--filename="+file)
				if tc.format != "" {
					args = append(args, "--format="+tc.format)
				}
			}
			res := mustRun(t, mustParse(t, args...))
			e := entries(res)[0]
			if e.dirs[DirRead].ios != 4096 {
				t.Fatalf("%d reads, want 4096 (8 MiB of 4 KiB, two loops)", e.dirs[DirRead].ios)
			}
			// Bucket 5 is 32..63. Only the first fill (1..31 on the bare
			// ring, which submits one unit per enter) may be below it,
			// plus 1% for the end of the run.
			ios := float64(e.dirs[DirRead].ios)
			if below := (100 - e.depth[5]) / 100 * ios; below > 31+ios/100 {
				t.Errorf("IO depths %v: %.0f of %.0f I/Os issued below depth 32, want at most the first fill (31) and 1%%", e.depth, below, ios)
			}
		})
	}
}

// TestBatchCompleteMax: iodepth_batch_complete_max is fio's, defaulting
// to (and raised to) the minimum; with the maximum at the depth the bare
// ring takes whole batches, so it issues below the full depth, and says so.
func TestBatchCompleteMax(t *testing.T) {
	j := mustParse(t, "--name=a", "--filename=x", "--iodepth=32", "--iodepth_batch_complete_min=4").Jobs[0]
	if j.IODepthBatchCompleteMax != 4 {
		t.Errorf("default iodepth_batch_complete_max = %d, want the minimum 4", j.IODepthBatchCompleteMax)
	}
	j = mustParse(t, "--name=a", "--filename=x", "--iodepth=32", "--iodepth_batch_complete_min=4", "--iodepth_batch_complete_max=2").Jobs[0]
	if j.IODepthBatchCompleteMax != 4 {
		t.Errorf("iodepth_batch_complete_max below the minimum = %d, want raised to 4", j.IODepthBatchCompleteMax)
	}
	dir := benchDir(t)
	// A fixed amount of I/O (not a time): enough rounds for a distribution
	// however loaded the machine is.
	res := mustRun(t, mustParse(t, "--name=b", "--ioengine=io_uring", "--filename="+filepath.Join(dir, "f"),
		"--size=8m", "--rw=randread", "--bs=4k", "--iodepth=32", "--iodepth_batch_complete_max=32",
		"--loops=2", "--norandommap"))
	e := entries(res)[0]
	if e.dirs[DirRead].ios != 4096 {
		t.Fatalf("%d reads, want 4096 (8 MiB of 4 KiB, two loops)", e.dirs[DirRead].ios)
	}
	if e.complete[1] == 100 {
		t.Errorf("complete distribution %v: every round took at most 4 CQEs with iodepth_batch_complete_max=32", e.complete)
	}
}

// TestRingblkQD1OneEnterPerIO (issue 20): at QD 1, O_DIRECT (completions
// arrive after the submitting enter returned), the ringblk engine
// refills inside the completion, so the next wait's io_uring_enter submits
// the new request and waits for it: one enter per I/O. A refill from a BH
// was submitted by the BH's own Unplug and then waited for by a second
// enter (0.50 I/Os per enter before the fix).
func TestRingblkQD1OneEnterPerIO(t *testing.T) {
	dir := benchDir(t)
	j := mustParse(t, "--name=e", "--filename="+filepath.Join(dir, "f"), "--size=4m", "--rw=randread",
		"--iodepth=1", "--direct=1", "--runtime=300ms", "--time_based").Jobs[0]
	s, err := runSelf(j, "ringblk")
	if err != nil {
		t.Fatal(err)
	}
	if s.perSubmit < 0.9 {
		t.Errorf("ringblk engine at QD 1: %.2f I/Os per io_uring_enter, want about 1", s.perSubmit)
	}
}

// TestRingQD1OneEnterPerIO: the bare ring at QD 1 (fio's default
// iodepth_batch of 1) submits each I/O in the io_uring_enter that waits
// for it, as the ringblk engine does: one enter per I/O, counted by the
// ring. It made two before (the full batch went out on its own, then the
// wait), as fio's io_uring engine does (commit, then getevents).
func TestRingQD1OneEnterPerIO(t *testing.T) {
	dir := benchDir(t)
	j := mustParse(t, "--name=e", "--filename="+filepath.Join(dir, "f"), "--size=4m", "--rw=randread",
		"--iodepth=1", "--direct=1", "--ioengine=io_uring", "--runtime=300ms", "--time_based").Jobs[0]
	res := mustRun(t, &Spec{Jobs: []*Job{j}})
	w := res.Jobs[0].Clones[0]
	ios := w.stats[DirRead].ios
	if ios < 100 || w.ringEnters == 0 {
		t.Fatalf("%d reads, %d enters: the job did not run as the test needs", ios, w.ringEnters)
	}
	if per := float64(ios) / float64(w.ringEnters); per < 0.9 {
		t.Errorf("bare ring at QD 1: %.2f I/Os per io_uring_enter (%d reads, %d enters), want about 1", per, ios, w.ringEnters)
	}
}
