package uring_test

import (
	"errors"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/uring"
	"golang.org/x/sys/unix"
)

func TestSetupChoosesBestFlags(t *testing.T) {
	r := newRing(t, 32)
	p := r.Params()
	t.Logf("setup: %v", p)
	if p.SQEntries != 32 || r.SQEntries() != 32 || p.CQEntries != 64 || r.CQEntries() != 64 {
		t.Errorf("sizes: params %d/%d, ring %d/%d; want 32/64", p.SQEntries, p.CQEntries, r.SQEntries(), r.CQEntries())
	}
	var want uint32 = uring.IORING_SETUP_CQSIZE
	if kernelAtLeast(t, 5, 18) {
		want |= uring.IORING_SETUP_SUBMIT_ALL
	}
	if kernelAtLeast(t, 5, 19) {
		want |= uring.IORING_SETUP_COOP_TASKRUN | uring.IORING_SETUP_TASKRUN_FLAG
	}
	if kernelAtLeast(t, 6, 1) {
		want |= uring.IORING_SETUP_SINGLE_ISSUER | uring.IORING_SETUP_DEFER_TASKRUN
	}
	if p.Flags != want {
		t.Errorf("flags %#x, want %#x", p.Flags, want)
	}
	if p.Features&uring.IORING_FEAT_NODROP == 0 {
		t.Errorf("features %#x lack NODROP", p.Features)
	}
	if kernelAtLeast(t, 5, 11) && p.Features&uring.IORING_FEAT_EXT_ARG == 0 {
		t.Errorf("features %#x lack EXT_ARG on a 5.11+ kernel", p.Features)
	}
	if !p.Probed || int(p.LastOp) <= uring.IORING_OP_WRITE {
		t.Errorf("probe: probed=%t last op %d", p.Probed, p.LastOp)
	}
	for _, op := range []uint8{uring.IORING_OP_NOP, uring.IORING_OP_READ, uring.IORING_OP_WRITE,
		uring.IORING_OP_READ_FIXED, uring.IORING_OP_FALLOCATE, uring.IORING_OP_ASYNC_CANCEL} {
		if !r.Supports(op) {
			t.Errorf("Supports(%d) = false", op)
		}
	}
	if !r.Supports(p.LastOp) || r.Supports(255) || r.Supports(p.LastOp+1) {
		t.Errorf("Supports disagrees with the probe's last op %d", p.LastOp)
	}
	if p.RegisteredRing {
		t.Error("RegisteredRing before the first enter")
	}
	getSQE(t, r).PrepNop(1)
	wait1(t, r)
	if kernelAtLeast(t, 5, 18) && !r.Params().RegisteredRing {
		t.Error("ring fd not registered on a 5.18+ kernel")
	}
}

func TestSetupWithoutFlags(t *testing.T) {
	r := newRing(t, 8, uring.WithoutSetupFlags(uring.IORING_SETUP_SINGLE_ISSUER))
	f := r.Params().Flags
	if f&(uring.IORING_SETUP_SINGLE_ISSUER|uring.IORING_SETUP_DEFER_TASKRUN) != 0 {
		t.Errorf("flags %#x still have SINGLE_ISSUER or DEFER_TASKRUN", f)
	}
	if kernelAtLeast(t, 5, 19) && f&uring.IORING_SETUP_COOP_TASKRUN == 0 {
		t.Errorf("flags %#x lack COOP_TASKRUN", f)
	}
	r2 := newRing(t, 8, setups[2].opts...)
	if f := r2.Params().Flags; f != uring.IORING_SETUP_CQSIZE {
		t.Errorf("plain ring flags %#x, want CQSIZE only", f)
	}
	getSQE(t, r2).PrepNop(1)
	wait1(t, r2)
	if r2.Params().RegisteredRing {
		t.Error("WithoutRegisteredRing ring registered its fd")
	}
}

// TestSetupFallsBackOnOlderKernels plays kernels that answer EINVAL to the
// newer setup flags and checks that New steps down one group at a time.
func TestSetupFallsBackOnOlderKernels(t *testing.T) {
	const (
		defer6_1  = uring.IORING_SETUP_SINGLE_ISSUER | uring.IORING_SETUP_DEFER_TASKRUN
		coop5_19  = uring.IORING_SETUP_COOP_TASKRUN | uring.IORING_SETUP_TASKRUN_FLAG
		submit518 = uring.IORING_SETUP_SUBMIT_ALL
	)
	for _, c := range []struct {
		kernel string
		lacks  uint32
		want   uint32
	}{
		{"6.0", uring.IORING_SETUP_DEFER_TASKRUN, coop5_19 | submit518},
		{"5.19", defer6_1, coop5_19 | submit518},
		{"5.18", defer6_1 | coop5_19, submit518},
		{"5.10", defer6_1 | coop5_19 | submit518, 0},
	} {
		t.Run(c.kernel, func(t *testing.T) {
			restore := uring.PretendKernelLacks(c.lacks)
			r := newRing(t, 8)
			restore()
			if got := r.Params().Flags; got != c.want|uring.IORING_SETUP_CQSIZE {
				t.Fatalf("flags %#x, want %#x", got, c.want|uring.IORING_SETUP_CQSIZE)
			}
			getSQE(t, r).PrepNop(1)
			if c := wait1(t, r); c.UserData != 1 {
				t.Fatalf("CQE %+v", c)
			}
		})
	}
	restore := uring.PretendKernelLacks(uring.IORING_SETUP_CQSIZE)
	defer restore()
	if r, err := uring.New(8); err == nil || !errors.Is(err, syscall.EINVAL) || errors.Is(err, uring.ErrUnavailable) {
		if r != nil {
			r.Close()
		}
		t.Fatalf("New on a kernel refusing every flag set: %v", err)
	}
}

func TestNewRejectsBadSizes(t *testing.T) {
	for _, n := range []int{0, -1, -32768, 32769, 1 << 20} {
		r, err := uring.New(n)
		if err == nil {
			r.Close()
			t.Errorf("New(%d) succeeded", n)
			continue
		}
		if !strings.Contains(err.Error(), "out of range") || errors.Is(err, uring.ErrUnavailable) {
			t.Errorf("New(%d): %v", n, err)
		}
	}
	for _, cq := range []int{2, -4, 1 << 17} {
		if r, err := uring.New(8, uring.WithCQEntries(cq)); err == nil {
			r.Close()
			t.Errorf("New(8, WithCQEntries(%d)) succeeded", cq)
		}
	}
	if r, err := uring.New(8, uring.WithSQPoll(-time.Second)); err == nil {
		r.Close()
		t.Error("negative SQPOLL idle accepted")
	}
}

func TestNewRoundsUpToPowerOfTwo(t *testing.T) {
	for _, c := range []struct{ in, sq, cqOpt, cq int }{
		{1, 1, 0, 2}, {3, 4, 0, 8}, {33, 64, 0, 128}, {32768, 32768, 0, 65536}, {8, 8, 100, 128}, {8, 8, 8, 8},
	} {
		var opts []uring.Option
		if c.cqOpt != 0 {
			opts = append(opts, uring.WithCQEntries(c.cqOpt))
		}
		r := newRing(t, c.in, opts...)
		if r.SQEntries() != c.sq || r.CQEntries() != c.cq {
			t.Errorf("New(%d, cq %d): sq %d cq %d, want %d %d", c.in, c.cqOpt, r.SQEntries(), r.CQEntries(), c.sq, c.cq)
		}
	}
}

func TestNopRoundTrip(t *testing.T) {
	forEachSetup(t, 8, func(t *testing.T, r *uring.Ring) {
		const ud = 0x7eadbeef_00c0ffee
		getSQE(t, r).PrepNop(ud)
		if r.Pending() != 1 {
			t.Fatalf("Pending = %d, want 1", r.Pending())
		}
		n, err := r.SubmitAndWait(1, -1)
		if err != nil || n != 1 {
			t.Fatalf("SubmitAndWait = %d, %v; want 1, nil", n, err)
		}
		if r.Pending() != 0 || r.Ready() != 1 {
			t.Fatalf("after submit: Pending %d Ready %d, want 0 1", r.Pending(), r.Ready())
		}
		var cqes [4]uring.CQE
		if k := r.Reap(cqes[:]); k != 1 || cqes[0].UserData != ud || cqes[0].Res != 0 {
			t.Fatalf("Reap = %d %+v", k, cqes[0])
		}
		if r.Ready() != 0 || r.Reap(cqes[:]) != 0 {
			t.Fatal("CQE reaped twice")
		}
	})
}

func TestNopBatches(t *testing.T) {
	forEachSetup(t, 32, func(t *testing.T, r *uring.Ring) {
		cqes := make([]uring.CQE, 64)
		for round := uint64(0); round < 100; round++ {
			for i := uint64(0); i < 32; i++ {
				getSQE(t, r).PrepNop(round<<8 | i)
			}
			if r.GetSQE() != nil {
				t.Fatal("GetSQE returned a 33rd SQE from a 32-entry SQ")
			}
			n, err := r.SubmitAndWait(32, -1)
			if err != nil || n != 32 {
				t.Fatalf("round %d: SubmitAndWait = %d, %v", round, n, err)
			}
			k := r.Reap(cqes)
			if k != 32 {
				t.Fatalf("round %d: reaped %d, want 32", round, k)
			}
			var seen uint32
			for _, c := range cqes[:k] {
				if c.UserData>>8 != round || c.Res != 0 {
					t.Fatalf("round %d: CQE %+v", round, c)
				}
				seen |= 1 << (c.UserData & 0xff)
			}
			if seen != ^uint32(0) {
				t.Fatalf("round %d: user_data set %#x", round, seen)
			}
		}
	})
}

func TestSQFullThenSubmit(t *testing.T) {
	r := newRing(t, 4)
	for i := 0; i < 4; i++ {
		getSQE(t, r).PrepNop(uint64(i))
	}
	if sqe := r.GetSQE(); sqe != nil {
		t.Fatal("GetSQE on a full SQ returned an SQE")
	}
	if r.Pending() != 4 {
		t.Fatalf("Pending = %d, want 4", r.Pending())
	}
	if n, err := r.SubmitAndWait(0, 0); err != nil || n != 4 {
		t.Fatalf("SubmitAndWait = %d, %v", n, err)
	}
	for i := 0; i < 4; i++ {
		getSQE(t, r).PrepNop(uint64(10 + i))
	}
	got := waitCQEs(t, r, 8)
	for i, c := range got {
		want := uint64(i)
		if i >= 4 {
			want = uint64(10 + i - 4)
		}
		if c.UserData != want {
			t.Errorf("CQE %d: user_data %d, want %d", i, c.UserData, want)
		}
	}
}

// TestCQOverflowLosesNothing submits four times as many NOPs as the CQ holds
// without reaping, then reaps them all: the kernel's overflow backlog
// (IORING_FEAT_NODROP) must be flushed by Reap, in order, with nothing lost.
func TestCQOverflowLosesNothing(t *testing.T) {
	for _, s := range setups {
		t.Run(s.name, func(t *testing.T) {
			testCQOverflow(t, newRing(t, 8, append([]uring.Option{uring.WithCQEntries(8)}, s.opts...)...))
		})
	}
}

func testCQOverflow(t *testing.T, r *uring.Ring) {
	{
		const total = 32
		next := 0
		for next < total {
			for next < total {
				sqe := r.GetSQE()
				if sqe == nil {
					break
				}
				sqe.PrepNop(uint64(next))
				next++
			}
			if _, err := r.SubmitAndWait(0, 0); err != nil {
				t.Fatalf("SubmitAndWait after %d NOPs: %v", next, err)
			}
		}
		if r.SQFlags()&uring.IORING_SQ_CQ_OVERFLOW == 0 {
			t.Fatalf("sq flags %#x: no CQ overflow after %d NOPs into an 8-entry CQ", r.SQFlags(), total)
		}
		if r.Ready() != 8 {
			t.Fatalf("Ready = %d with a full CQ of 8", r.Ready())
		}
		var got []uint64
		buf := make([]uring.CQE, 5) // smaller than the CQ: Reap flushes in several steps
		for tries := 0; len(got) < total && tries < 100; tries++ {
			k := r.Reap(buf)
			for _, c := range buf[:k] {
				got = append(got, c.UserData)
			}
		}
		if len(got) != total {
			t.Fatalf("reaped %d of %d: %v", len(got), total, got)
		}
		for i, ud := range got {
			if ud != uint64(i) {
				t.Fatalf("CQE %d has user_data %d: order or loss: %v", i, ud, got)
			}
		}
		if r.SQFlags()&uring.IORING_SQ_CQ_OVERFLOW != 0 || r.Ready() != 0 {
			t.Fatalf("after reaping everything: sq flags %#x, Ready %d", r.SQFlags(), r.Ready())
		}
	}
}

// blockedPoll arms a POLL_ADD for POLLIN on the read end of a fresh pipe,
// which completes only when the returned write end is written.
func blockedPoll(t *testing.T, r *uring.Ring, ud uint64) (wfd int) {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
	getSQE(t, r).PrepPollAdd(int32(p[0]), unix.POLLIN, ud)
	return p[1]
}

func TestSubmitAndWaitTimeout(t *testing.T) {
	for _, mode := range []string{"ext-arg", "timeout-sqe"} {
		t.Run(mode, func(t *testing.T) {
			r := newRing(t, 8)
			if mode == "timeout-sqe" {
				r.ForgetExtArg()
			}
			wfd := blockedPoll(t, r, 1)
			const timeout = 50 * time.Millisecond
			start := time.Now()
			n, err := r.SubmitAndWait(1, timeout)
			elapsed := time.Since(start)
			if err != nil {
				t.Fatalf("SubmitAndWait: %v", err)
			}
			if n < 1 {
				t.Fatalf("SubmitAndWait submitted %d", n)
			}
			// A signal (EINTR) may end the wait early: loop until the
			// timeout has passed, as an event loop would.
			for time.Since(start) < timeout {
				if _, err := r.SubmitAndWait(1, timeout-time.Since(start)); err != nil {
					t.Fatal(err)
				}
			}
			elapsed = time.Since(start)
			// The upper bound only catches a wait that ignores its
			// timeout: a loaded machine can hold the thread for seconds.
			if elapsed < timeout-5*time.Millisecond || elapsed > 200*timeout {
				t.Fatalf("wait took %v for a %v timeout", elapsed, timeout)
			}
			var cqes [4]uring.CQE
			if k := r.Reap(cqes[:]); k != 0 {
				t.Fatalf("Reap after a timeout returned %d CQEs: %+v", k, cqes[:k])
			}
			unix.Write(wfd, []byte{1})
			c := wait1(t, r)
			if c.UserData != 1 || c.Res&unix.POLLIN == 0 {
				t.Fatalf("poll CQE %+v", c)
			}
			// A wait that completes early leaves no ring-internal CQE behind.
			getSQE(t, r).PrepNop(2)
			if _, err := r.SubmitAndWait(1, time.Second); err != nil {
				t.Fatal(err)
			}
			got := waitCQEs(t, r, 1)
			if got[0].UserData != 2 {
				t.Fatalf("CQE %+v", got[0])
			}
			time.Sleep(5 * time.Millisecond)
			r.SubmitAndWait(0, 0)
			for _, c := range cqes[:r.Reap(cqes[:])] {
				t.Errorf("stray CQE %+v", c)
			}
		})
	}
}

// TestSubmitAndWaitTimeoutReturnsOnTime measures the plain case: nothing to
// submit, nothing will complete, wait 30 ms.
func TestSubmitAndWaitTimeoutReturnsOnTime(t *testing.T) {
	for _, mode := range []string{"ext-arg", "timeout-sqe"} {
		t.Run(mode, func(t *testing.T) {
			r := newRing(t, 8)
			if mode == "timeout-sqe" {
				r.ForgetExtArg()
			}
			blockedPoll(t, r, 1)
			if _, err := r.SubmitAndWait(0, 0); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if _, err := r.SubmitAndWait(1, 30*time.Millisecond); err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d < 25*time.Millisecond || d > 600*time.Millisecond {
				t.Fatalf("SubmitAndWait(1, 30ms) returned after %v", d)
			}
		})
	}
}

// TestDeferredCompletionsMakeProgress checks that completions which the
// kernel posts through task work (a poll woken from outside) become visible
// to Ready and to SubmitAndWait(0, 0) without a blocking wait.
func TestDeferredCompletionsMakeProgress(t *testing.T) {
	for _, via := range []string{"Ready", "SubmitAndWait(0,0)"} {
		t.Run(via, func(t *testing.T) {
			forEachSetup(t, 8, func(t *testing.T, r *uring.Ring) {
				wfd := blockedPoll(t, r, 1)
				if _, err := r.SubmitAndWait(0, 0); err != nil {
					t.Fatal(err)
				}
				if r.Ready() != 0 {
					t.Fatal("poll completed before the pipe was written")
				}
				unix.Write(wfd, []byte{1})
				deadline := time.Now().Add(2 * time.Second)
				for {
					if via == "SubmitAndWait(0,0)" {
						if _, err := r.SubmitAndWait(0, 0); err != nil {
							t.Fatal(err)
						}
					}
					if r.Ready() > 0 {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("completion never became ready (sq flags %#x, setup %v)", r.SQFlags(), r.Params())
					}
					time.Sleep(time.Millisecond)
				}
				var c [2]uring.CQE
				if k := r.Reap(c[:]); k != 1 || c[0].UserData != 1 {
					t.Fatalf("Reap = %d %+v", k, c[0])
				}
			})
		})
	}
}

func TestUseAfterClose(t *testing.T) {
	r := newRing(t, 8)
	blockedPoll(t, r, 1) // in flight at Close: the kernel cancels it
	if _, err := r.SubmitAndWait(0, 0); err != nil {
		t.Fatal(err)
	}
	getSQE(t, r).PrepNop(2) // prepared, never submitted
	if err := r.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if r.GetSQE() != nil {
		t.Error("GetSQE after Close")
	}
	if n, err := r.SubmitAndWait(1, time.Second); n != 0 || !errors.Is(err, uring.ErrClosed) {
		t.Errorf("SubmitAndWait after Close = %d, %v", n, err)
	}
	var c [1]uring.CQE
	if r.Pending() != 0 || r.Ready() != 0 || r.Reap(c[:]) != 0 || r.SQEntries() != 0 || r.CQEntries() != 0 {
		t.Error("counts after Close are not 0")
	}
	if r.Supports(uring.IORING_OP_NOP) {
		t.Error("Supports after Close")
	}
	for name, err := range map[string]error{
		"RegisterFiles":     r.RegisterFiles(1),
		"UpdateFile":        r.UpdateFile(0, 0),
		"UnregisterFiles":   r.UnregisterFiles(),
		"RegisterBuffers":   r.RegisterBuffers([][]byte{make([]byte, 1)}),
		"UnregisterBuffers": r.UnregisterBuffers(),
	} {
		if !errors.Is(err, uring.ErrClosed) {
			t.Errorf("%s after Close: %v", name, err)
		}
	}
	if _, _, err := r.SetIOWQMaxWorkers(1, 1); !errors.Is(err, uring.ErrClosed) {
		t.Errorf("SetIOWQMaxWorkers after Close: %v", err)
	}
	if r.Params().SQEntries != 8 {
		t.Error("Params lost after Close")
	}
}

// TestWrongThreadIsAnError pins the SINGLE_ISSUER contract: a bound ring used
// from another OS thread reports ErrWrongThread, and the owner carries on.
func TestWrongThreadIsAnError(t *testing.T) {
	r := newRing(t, 8)
	if r.Params().Flags&uring.IORING_SETUP_SINGLE_ISSUER == 0 {
		t.Skip("skipping: the kernel did not accept IORING_SETUP_SINGLE_ISSUER (before 6.0)")
	}
	getSQE(t, r).PrepNop(1)
	wait1(t, r) // binds the ring to this thread
	getSQE(t, r).PrepNop(2)
	errc := make(chan error, 2)
	go func() {
		runtime.LockOSThread() // a thread of its own, not the owner's
		defer runtime.UnlockOSThread()
		_, err := r.SubmitAndWait(0, 0)
		errc <- err
		errc <- r.RegisterFiles(1)
	}()
	if err := <-errc; !errors.Is(err, uring.ErrWrongThread) {
		t.Errorf("SubmitAndWait from another thread: %v", err)
	}
	if err := <-errc; !errors.Is(err, uring.ErrWrongThread) {
		t.Errorf("RegisterFiles from another thread: %v", err)
	}
	if c := wait1(t, r); c.UserData != 2 {
		t.Fatalf("owner's CQE %+v", c)
	}
}

func TestSetupErrorsNameTheCause(t *testing.T) {
	dir := t.TempDir()
	write := func(v string) string {
		p := dir + "/io_uring_disabled_" + v
		if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, c := range []struct {
		errno syscall.Errno
		path  string
		want  string
	}{
		{unix.EPERM, write("2"), "kernel.io_uring_disabled=2"},
		{unix.EPERM, write("1"), "kernel.io_uring_group"},
		{unix.EPERM, write("0"), "seccomp"},
		{unix.EPERM, dir + "/missing", "seccomp"},
		{unix.ENOSYS, write("0"), "no io_uring"},
	} {
		err := uring.SetupError(c.errno, c.path)
		if !errors.Is(err, uring.ErrUnavailable) || !errors.Is(err, c.errno) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("setup error for %v with %s: %v (want ErrUnavailable, the errno and %q)", c.errno, c.path, err, c.want)
		}
	}
	if err := uring.SetupError(unix.ENOMEM, dir+"/missing"); errors.Is(err, uring.ErrUnavailable) || !strings.Contains(err.Error(), "RLIMIT_MEMLOCK") {
		t.Errorf("ENOMEM: %v", err)
	}
}

// TestZeroAllocs pins the hot path at zero allocations: GetSQE, prep,
// SubmitAndWait and Reap of a 32-NOP batch.
func TestZeroAllocs(t *testing.T) {
	forEachSetup(t, 32, func(t *testing.T, r *uring.Ring) {
		cqes := make([]uring.CQE, 32)
		allocs := testing.AllocsPerRun(200, func() {
			for i := 0; i < 32; i++ {
				r.GetSQE().PrepNop(uint64(i))
			}
			if _, err := r.SubmitAndWait(32, -1); err != nil {
				panic(err)
			}
			for got := 0; got < 32; {
				got += r.Reap(cqes[got:])
			}
		})
		if allocs != 0 {
			t.Fatalf("%.1f allocations per 32-NOP batch, want 0", allocs)
		}
	})
}

// TestSignalEndsWaitWithoutError: a signal delivered to the owner thread
// during a wait (EINTR) returns SubmitAndWait early with err == nil, and the
// SQE it carried was still submitted.
func TestSignalEndsWaitWithoutError(t *testing.T) {
	for _, timeout := range []time.Duration{-1, 10 * time.Second} {
		t.Run(timeout.String(), func(t *testing.T) {
			r := newRing(t, 8)
			wfd := blockedPoll(t, r, 1)
			tid, pid := unix.Gettid(), unix.Getpid()
			go func() {
				time.Sleep(50 * time.Millisecond)
				// SIGURG: the runtime's own preemption signal, harmless here.
				unix.Tgkill(pid, tid, unix.SIGURG)
			}()
			start := time.Now()
			n, err := r.SubmitAndWait(1, timeout)
			if d := time.Since(start); err != nil || d > 5*time.Second {
				t.Fatalf("SubmitAndWait = %d, %v after %v", n, err, d)
			}
			if r.Pending() != 0 {
				t.Fatalf("the poll SQE was not submitted (Pending %d, n %d)", r.Pending(), n)
			}
			unix.Write(wfd, []byte{1})
			if c := wait1(t, r); c.UserData != 1 {
				t.Fatalf("CQE %+v", c)
			}
		})
	}
}

// TestCloseReleasesRegisteredRingFd: each ring registers its fd in the owner
// thread's table, which has 16 slots; Close must give the slot back, or the
// 17th ring on a thread would silently lose the registered fd.
func TestCloseReleasesRegisteredRingFd(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for i := 0; i < 24; i++ {
		r := newRing(t, 2)
		getSQE(t, r).PrepNop(1)
		wait1(t, r)
		if kernelAtLeast(t, 5, 18) && !r.Params().RegisteredRing {
			t.Fatalf("ring %d: ring fd not registered; earlier rings kept their slots", i)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
