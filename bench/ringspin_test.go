package bench

import (
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/ringblk/ringblk/uring"
)

// TestRingEngineSpins: aio_poll reaches the io_uring engine's loop. With a
// 20 ms window the clone finds nearly every completion of O_DIRECT reads
// by spinning, so it hardly ever enters the kernel to wait; with aio_poll=0
// it waits for most rounds. Before the io_uring engine had the spin,
// aio_poll= was refused for it.
//
// At iodepth=1, so that the test does not depend on how fast the device is
// against the loop: with one I/O in flight, each round's enter submits it
// and must wait, unless a spin saw it complete first. At iodepth=4 the
// clone found its completions already posted whenever its own loop was
// the slower side (under -race in CI: 18 waits for 12718 I/Os without the
// spin), and the test could not tell the two settings apart.
func TestRingEngineSpins(t *testing.T) {
	dir := benchDir(t)
	f := filepath.Join(dir, "f")
	waits := func(poll string) (ios, waited uint64) {
		t.Helper()
		spec := mustParse(t, "--name=s", "--filename="+f, "--size=4m", "--rw=randread", "--direct=1",
			"--ioengine=io_uring", "--iodepth=1", "--runtime=300ms", "--time_based", "--aio_poll="+poll)
		res := mustRun(t, spec)
		for _, w := range res.Jobs[0].Clones {
			if w.err != nil {
				t.Fatal(w.err)
			}
			for d := range w.prog.ios {
				ios += w.prog.ios[d].Load()
			}
			waited += w.enterReap
		}
		if ios == 0 {
			t.Fatalf("aio_poll=%s: no I/O done", poll)
		}
		return ios, waited
	}
	ios0, waited0 := waits("0")
	ios1, waited1 := waits("20000")
	t.Logf("aio_poll=0: %d waits for %d I/Os; aio_poll=20000: %d waits for %d I/Os", waited0, ios0, waited1, ios1)
	// Without a spin the clone must have slept often enough for a tenth of
	// it to be told apart: at depth 1 nearly once per I/O.
	if waited0 < 100 || waited0*2 < ios0 {
		t.Fatalf("aio_poll=0: %d waits for %d I/Os: the clone did not wait for its one O_DIRECT read in flight on %s", waited0, ios0, dir)
	}
	if waited1*10 > waited0 || waited1*20 > ios1 {
		t.Errorf("aio_poll=20000: %d waits for %d I/Os (aio_poll=0: %d for %d), want a tenth as many and under 1 in 20: the clone does not spin", waited1, ios1, waited0, ios0)
	}
}

// TestRingSpinAndAdapt: the bare ring's spin sees a completion the kernel
// holds as task work (a timeout, on a DEFER_TASKRUN ring) within its
// window, gives up after it, and the window adapts by aio's rule.
func TestRingSpinAndAdapt(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r, err := uring.New(4)
	if err != nil {
		t.Skipf("io_uring: %v", err)
	}
	defer r.Close()
	w := &worker{base: time.Now()}
	c := &threadClone{w: w, ring: r, pollMax: 20 * time.Millisecond, pollWindow: 20 * time.Millisecond}
	timeout := func(d time.Duration) {
		t.Helper()
		ts := uring.Timespec{Nsec: int64(d)}
		sqe := r.GetSQE()
		sqe.PrepTimeout(&ts, 0, 0, 1)
		if _, err := r.SubmitAndWait(0, 0); err != nil {
			t.Fatal(err)
		}
	}
	reap := func() {
		var cq [4]uring.CQE
		if _, err := r.SubmitAndWait(1, time.Second); err != nil {
			t.Fatal(err)
		}
		r.Reap(cq[:])
	}
	timeout(200 * time.Microsecond)
	start := time.Now()
	if !c.spin(1) {
		t.Fatalf("a 200 µs timeout not seen within a 20 ms spin (%v)", time.Since(start))
	}
	reap()

	c.pollWindow = 100 * time.Microsecond
	timeout(50 * time.Millisecond)
	start = time.Now()
	if c.spin(1) {
		t.Fatal("a 50 ms timeout seen within a 100 µs spin")
	}
	if el := time.Since(start); el > 20*time.Millisecond {
		t.Errorf("a 100 µs spin lasted %v", el)
	}
	reap()

	c.pollMax, c.pollWindow = 20*time.Microsecond, 0
	c.adaptPoll(5 * time.Microsecond) // would have been caught: open at 4 µs
	if c.pollWindow != 4*time.Microsecond {
		t.Errorf("window after a short wait from closed: %v, want 4µs", c.pollWindow)
	}
	c.adaptPoll(5 * time.Microsecond)
	c.adaptPoll(5 * time.Microsecond)
	c.adaptPoll(5 * time.Microsecond)
	if c.pollWindow != 20*time.Microsecond {
		t.Errorf("window after short waits: %v, want the 20µs bound", c.pollWindow)
	}
	c.adaptPoll(time.Millisecond) // a long wait halves it
	if c.pollWindow != 10*time.Microsecond {
		t.Errorf("window after a long wait: %v, want 10µs", c.pollWindow)
	}
	c.adaptPoll(time.Millisecond)
	c.adaptPoll(time.Millisecond)
	if c.pollWindow != 0 {
		t.Errorf("window after long waits: %v, want closed", c.pollWindow)
	}
}
