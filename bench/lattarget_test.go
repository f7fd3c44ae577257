package bench

import (
	"testing"
	"time"
)

// TestLatencyTargetSearch drives one clone whose I/Os take 0.3 ms per unit
// in flight: depths up to 3 meet a 1 ms target, 4 and deeper do not. The
// search must never exceed the depth it is probing, settle on 3, stop the
// job there and report it as latency_depth.
func TestLatencyTargetSearch(t *testing.T) {
	spec := mustParse(t, "--name=lt", "--ioengine=io_uring", "--rw=randread", "--size=1g", "--iodepth=16", "--time_based", "--runtime=1h",
		"--latency_target=1000", "--latency_window=10ms", "--latency_percentile=99")
	j := spec.Jobs[0]
	if j.LatencyTarget != time.Millisecond || j.LatencyWindow != 10*time.Millisecond || j.LatencyPercentile != 99 {
		t.Fatalf("parsed target %v window %v percentile %v", j.LatencyTarget, j.LatencyWindow, j.LatencyPercentile)
	}
	w := newWorker(j, 0, 0, 1<<30)
	bufs := make([][]byte, 16)
	for i := range bufs {
		bufs[i] = make([]byte, 4096)
	}
	w.setBuffers(bufs)
	w.start()
	var now int64
	var batch []*unit
	depths := map[int]bool{}
	for round := 0; round < 100000 && !w.stopIssuing; round++ {
		batch = batch[:0]
		for u := w.take(); u != nil; u = w.take() {
			if !w.fill(u, now) {
				w.untake(u)
				break
			}
			batch = append(batch, u)
		}
		if len(batch) > w.lt.high {
			t.Fatalf("%d in flight, search bound %d", len(batch), w.lt.high)
		}
		depths[len(batch)] = true
		w.submitted(batch, now)
		now += int64(len(batch)) * 300e3
		for _, u := range batch {
			w.completed(u, now, nil)
		}
	}
	if !w.stopIssuing || !w.lt.found {
		t.Fatalf("search did not end: qd=%d low=%d high=%d", w.lt.qd, w.lt.low, w.lt.high)
	}
	e := &entry{job: j, clones: []*worker{w}}
	if got := e.latencyDepth(); got != 3 {
		t.Errorf("latency_depth %d, want 3 (probed %v)", got, depths)
	}
	if !depths[1] || !depths[4] || depths[16] {
		t.Errorf("probed depths %v: want the search to start at 1, probe past 3 (4 fails) and never reach 16", depths)
	}
}

// TestRandomGeneratorLFSR: with norandommap, random_generator=lfsr still
// visits every block once per pass (fio's LFSR), tausworthe may repeat.
func TestRandomGeneratorLFSR(t *testing.T) {
	for _, gen := range []string{"lfsr", "tausworthe"} {
		spec := mustParse(t, "--name=r", "--rw=randread", "--size=256k", "--bs=4k", "--norandommap", "--random_generator="+gen)
		g := newGenerator(spec.Jobs[0], 0, 0, 256<<10)
		seen := map[int64]bool{}
		for i := 0; i < 64; i++ {
			_, off, _, ok := g.next()
			if !ok {
				t.Fatalf("%s: generator ended after %d", gen, i)
			}
			seen[off] = true
		}
		if gen == "lfsr" && len(seen) != 64 {
			t.Errorf("lfsr: %d distinct blocks of 64 in one pass", len(seen))
		}
		if gen == "tausworthe" && len(seen) == 64 {
			t.Errorf("tausworthe with norandommap: no repeat in 64 draws of 64 blocks (the map is not off?)")
		}
	}
	if _, err := ParseArgs([]string{"--name=r", "--random_generator=tausworthe64"}); err == nil {
		t.Error("tausworthe64 accepted")
	}
}
