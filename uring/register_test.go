package uring_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ringblk/ringblk/uring"
	"golang.org/x/sys/unix"
)

func TestRegisteredFiles(t *testing.T) {
	r := newRing(t, 8)
	f := tempFile(t, 8192, 0)
	if err := r.UpdateFile(0, int(f.Fd())); err == nil {
		t.Fatal("UpdateFile before RegisterFiles succeeded")
	}
	if err := r.RegisterFiles(0); err == nil {
		t.Fatal("RegisterFiles(0) succeeded")
	}
	if err := r.RegisterFiles(4); err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterFiles(4); err == nil {
		t.Fatal("second RegisterFiles succeeded")
	}
	for _, slot := range []int{-1, 4} {
		if err := r.UpdateFile(slot, int(f.Fd())); err == nil {
			t.Errorf("UpdateFile(%d) succeeded on a 4-slot table", slot)
		}
	}
	mem := mmapBuf(t, 2*4096)
	src, dst := mem[:4096], mem[4096:]
	pattern(src, 0x33)

	// An empty slot fails the operation, not the ring.
	sqe := getSQE(t, r)
	sqe.PrepWrite(2, src, 0, 1)
	sqe.SetFixedFile()
	if c := wait1(t, r); c.Res != -int32(unix.EBADF) {
		t.Fatalf("write through an empty slot: %s", errno(c))
	}

	if err := r.UpdateFile(2, int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	sqe = getSQE(t, r)
	sqe.PrepWrite(2, src, 4096, 2)
	sqe.SetFixedFile()
	if c := wait1(t, r); c.Res != 4096 {
		t.Fatalf("write through slot 2: %s", errno(c))
	}
	check := make([]byte, 4096)
	if _, err := f.ReadAt(check, 4096); err != nil || !bytes.Equal(check, src) {
		t.Fatalf("pread after a fixed-file write: %v equal=%t", err, bytes.Equal(check, src))
	}
	sqe = getSQE(t, r)
	sqe.PrepRead(2, dst, 4096, 3)
	sqe.SetFixedFile()
	if c := wait1(t, r); c.Res != 4096 || !bytes.Equal(dst, src) {
		t.Fatalf("read through slot 2: %s", errno(c))
	}

	// Closing our fd does not matter to the table, which holds its own
	// reference; clearing the slot does.
	if err := r.UpdateFile(2, -1); err != nil {
		t.Fatal(err)
	}
	sqe = getSQE(t, r)
	sqe.PrepRead(2, dst, 0, 4)
	sqe.SetFixedFile()
	if c := wait1(t, r); c.Res != -int32(unix.EBADF) {
		t.Fatalf("read through a cleared slot: %s", errno(c))
	}
	if err := r.UnregisterFiles(); err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterFiles(2); err != nil {
		t.Fatalf("RegisterFiles after UnregisterFiles: %v", err)
	}
}

func TestUpdateFileDoesNotAllocate(t *testing.T) {
	r := newRing(t, 8)
	f := tempFile(t, 0, 0)
	if err := r.RegisterFiles(2); err != nil {
		t.Fatal(err)
	}
	fd := int(f.Fd())
	if a := testing.AllocsPerRun(50, func() {
		if err := r.UpdateFile(1, fd); err != nil {
			panic(err)
		}
	}); a != 0 {
		t.Fatalf("UpdateFile: %.1f allocations", a)
	}
}

func TestSetIOWQMaxWorkers(t *testing.T) {
	r := newRing(t, 8)
	getSQE(t, r).PrepNop(1) // the first submit gives this thread an io-wq
	wait1(t, r)
	if _, _, err := r.SetIOWQMaxWorkers(3, 5); err != nil {
		if errors.Is(err, unix.EINVAL) && !kernelAtLeast(t, 5, 15) {
			t.Skip("skipping: IORING_REGISTER_IOWQ_MAX_WORKERS needs Linux 5.15")
		}
		t.Fatal(err)
	}
	b, u, err := r.SetIOWQMaxWorkers(0, 0) // 0: read back without changing
	if err != nil || b != 3 || u != 5 {
		t.Fatalf("SetIOWQMaxWorkers(0, 0) = %d, %d, %v; want 3, 5", b, u, err)
	}
	if _, _, err := r.SetIOWQMaxWorkers(-1, 0); err == nil {
		t.Error("negative worker limit accepted")
	}
}

// TestSetWorkerAffinity: io-wq workers of a thread pinned to CPU 0 run on
// the CPUs SetWorkerAffinity names (left alone they inherit CPU 0 and take
// turns with their owner: issue 20). An ASYNC NOP always goes to a worker.
// The mask applies to workers made after the call, so the test runs on a
// thread without workers from an earlier ring (each try's goroutine keeps
// its thread locked and so ends it).
func TestSetWorkerAffinity(t *testing.T) {
	var proc unix.CPUSet
	if err := unix.SchedGetaffinity(0, &proc); err != nil {
		t.Fatal(err)
	}
	if !proc.IsSet(0) || !proc.IsSet(1) {
		t.Skip("skipping: needs CPUs 0 and 1")
	}
	var one unix.CPUSet
	one.Set(1)
	type result struct {
		used    bool // the thread had workers already: try another
		skip    string
		err     error
		workers []unix.CPUSet
	}
	for try := 0; try < 20; try++ {
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
			tid := unix.Gettid()
			if len(ioWorkers(tid)) > 0 {
				ch <- result{used: true}
				return
			}
			var zero unix.CPUSet
			zero.Set(0)
			if err := unix.SchedSetaffinity(0, &zero); err != nil {
				ch <- result{err: err}
				return
			}
			r, err := uring.New(8)
			if err != nil {
				ch <- result{skip: err.Error()}
				return
			}
			defer r.Close()
			if err := r.SetWorkerAffinity(&one); err != nil {
				ch <- result{err: err}
				return
			}
			sqe := r.GetSQE()
			sqe.PrepNop(1)
			sqe.Flags |= uring.IOSQE_ASYNC
			if _, err := r.SubmitAndWait(1, 5*time.Second); err != nil {
				ch <- result{err: err}
				return
			}
			ch <- result{workers: ioWorkers(tid)}
		}()
		res := <-ch
		switch {
		case res.used:
			continue
		case res.skip != "":
			t.Skipf("skipping: %s", res.skip)
		case errors.Is(res.err, unix.EINVAL) && !kernelAtLeast(t, 5, 14):
			t.Skip("skipping: IORING_REGISTER_IOWQ_AFF needs Linux 5.14")
		case res.err != nil:
			t.Fatal(res.err)
		case len(res.workers) == 0:
			t.Fatal("no io-wq worker after an IOSQE_ASYNC NOP")
		}
		for _, set := range res.workers {
			if set != one {
				t.Errorf("a worker may run on %d CPUs, want only CPU 1 (CPU 0: %v)", set.Count(), set.IsSet(0))
			}
		}
		r := newRing(t, 8)
		r.Close()
		if err := r.SetWorkerAffinity(&one); !errors.Is(err, uring.ErrClosed) {
			t.Errorf("SetWorkerAffinity after Close: %v", err)
		}
		return
	}
	t.Fatal("20 threads in a row already had io-wq workers")
}

// ioWorkers returns the affinity of each io-wq worker of thread tid (the
// kernel names them iou-wrk-<tid>).
func ioWorkers(tid int) []unix.CPUSet {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil
	}
	name := fmt.Sprintf("iou-wrk-%d", tid)
	var out []unix.CPUSet
	for _, e := range ents {
		comm, _ := os.ReadFile("/proc/self/task/" + e.Name() + "/comm")
		if strings.TrimSpace(string(comm)) != name {
			continue
		}
		w, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var set unix.CPUSet
		if unix.SchedGetaffinity(w, &set) == nil { // else it exited meanwhile
			out = append(out, set)
		}
	}
	return out
}

func TestSQPoll(t *testing.T) {
	const idle = 10 * time.Millisecond
	r := newRing(t, 8, uring.WithSQPoll(idle))
	p := r.Params()
	if p.Flags&uring.IORING_SETUP_SQPOLL == 0 || p.SQThreadIdle != idle {
		t.Fatalf("setup %v: no SQPOLL or idle %v", p, p.SQThreadIdle)
	}
	for round := 0; round < 3; round++ {
		for i := 0; i < 3; i++ {
			getSQE(t, r).PrepNop(uint64(round*10 + i))
		}
		got := waitCQEs(t, r, 3)
		for i, c := range got {
			if c.UserData != uint64(round*10+i) || c.Res != 0 {
				t.Fatalf("round %d: CQE %+v", round, c)
			}
		}
		// Let the SQ thread go to sleep; the next round must wake it.
		deadline := time.Now().Add(2 * time.Second)
		for r.SQFlags()&uring.IORING_SQ_NEED_WAKEUP == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("SQ thread never went idle (sq flags %#x)", r.SQFlags())
			}
			time.Sleep(idle)
		}
	}
	// A full SQ: SubmitAndWait(0, 0) returns once the (sleeping) SQ thread
	// has made room, so GetSQE succeeds right after it.
	for i := 0; i < 8; i++ {
		getSQE(t, r).PrepNop(uint64(50 + i))
	}
	if _, err := r.SubmitAndWait(0, 0); err != nil {
		t.Fatal(err)
	}
	if sqe := r.GetSQE(); sqe == nil {
		t.Fatalf("GetSQE after SubmitAndWait(0, 0) on a full SQPOLL SQ: still full (Pending %d)", r.Pending())
	} else {
		sqe.PrepNop(58)
	}
	waitCQEs(t, r, 9)
	for deadline := time.Now().Add(2 * time.Second); r.SQFlags()&uring.IORING_SQ_NEED_WAKEUP == 0; {
		if time.Now().After(deadline) {
			t.Fatalf("SQ thread never went idle (sq flags %#x)", r.SQFlags())
		}
		time.Sleep(idle)
	}

	// Submitting without waiting still reaches a sleeping SQ thread.
	getSQE(t, r).PrepNop(99)
	if n, err := r.SubmitAndWait(0, 0); err != nil || n != 1 {
		t.Fatalf("SubmitAndWait(0, 0) = %d, %v", n, err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for r.Ready() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("NOP submitted to a sleeping SQ thread never completed")
		}
		time.Sleep(time.Millisecond)
	}
	var c [1]uring.CQE
	if r.Reap(c[:]) != 1 || c[0].UserData != 99 {
		t.Fatalf("CQE %+v", c[0])
	}
}

// TestRegisteredRingFallsBackOffThread: an unlocked goroutine that moves
// threads loses the registered ring index, and the ring falls back to the
// plain fd instead of failing. (Only rings without SINGLE_ISSUER allow it.)
func TestRegisteredRingFallsBackOffThread(t *testing.T) {
	r := newRing(t, 8, uring.WithoutSetupFlags(uring.IORING_SETUP_SINGLE_ISSUER))
	getSQE(t, r).PrepNop(1)
	wait1(t, r)
	if !r.Params().RegisteredRing {
		t.Skip("skipping: the kernel did not register the ring fd (before 5.18)")
	}
	done := make(chan uring.CQE)
	errc := make(chan error, 1)
	go func() {
		// A locked goroutine of its own: certainly another thread.
		lockAndRun(func() {
			r.GetSQE().PrepNop(2)
			if _, err := r.SubmitAndWait(1, time.Second); err != nil {
				errc <- err
				return
			}
			var c [1]uring.CQE
			r.Reap(c[:])
			done <- c[0]
		})
	}()
	select {
	case err := <-errc:
		t.Fatalf("SubmitAndWait from another thread: %v", err)
	case c := <-done:
		if c.UserData != 2 {
			t.Fatalf("CQE %+v", c)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("hung")
	}
	if r.Params().RegisteredRing {
		t.Error("still using the registered index after it failed")
	}
}
