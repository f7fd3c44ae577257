package uringtest_test

import (
	"encoding/binary"
	"errors"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/uring"
	"github.com/ringblk/ringblk/uring/uringtest"
)

func eventfd(t *testing.T) int {
	t.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func kick(fd int, v uint64) error {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], v)
	_, err := unix.Write(fd, b[:])
	return err
}

//go:noinline
func heapCounter() *[8]byte { return new([8]byte) }

// TestEventfdWakesWait: a goroutine writing an eventfd wakes a
// SubmitAndWait blocked on a POLL_ADD and an eventfd READ of it.
func TestEventfdWakesWait(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	efd := eventfd(t)
	counter := heapCounter()
	prep(t, r, func(s *uring.SQE) { s.PrepPollAdd(int32(efd), unix.POLLIN, 1) })
	prep(t, r, func(s *uring.SQE) { s.PrepEventfdRead(int32(efd), counter, 2) })

	errc := make(chan error, 1)
	go func() {
		time.Sleep(30 * time.Millisecond)
		errc <- kick(efd, 5)
	}()
	start := time.Now()
	n, err := r.SubmitAndWait(2, 10*time.Second)
	if err != nil || n != 2 {
		t.Fatalf("SubmitAndWait = %d, %v", n, err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 25*time.Millisecond || el > 5*time.Second {
		t.Errorf("woke after %v, want about 30ms", el)
	}
	got := results(t, reapAll(r))
	if got[1]&unix.POLLIN == 0 {
		t.Errorf("POLL_ADD result %#x lacks POLLIN", got[1])
	}
	wantRes(t, got, 2, 8)
	if v := binary.NativeEndian.Uint64(counter[:]); v != 5 {
		t.Errorf("eventfd READ got %d, want 5", v)
	}
}

func TestPollTimesOutWithoutEvent(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	efd := eventfd(t)
	prep(t, r, func(s *uring.SQE) { s.PrepPollAdd(int32(efd), unix.POLLIN, 1) })
	start := time.Now()
	if _, err := r.SubmitAndWait(1, 30*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 30*time.Millisecond {
		t.Errorf("returned after %v, before the 30ms timeout", el)
	}
	if r.Ready() != 0 {
		t.Error("poll completed with no event")
	}
	// POLLOUT on an eventfd is ready at once.
	prep(t, r, func(s *uring.SQE) { s.PrepPollAdd(int32(efd), unix.POLLOUT, 2) })
	submit(t, r, 1, -1)
	if got := results(t, reapAll(r)); got[2]&unix.POLLOUT == 0 {
		t.Errorf("POLLOUT poll result %#x", got[2])
	}
}

func TestTimeoutOp(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	ts := heapTimespec(30 * time.Millisecond)
	prep(t, r, func(s *uring.SQE) { s.PrepTimeout(ts, 0, 0, 1) })
	start := time.Now()
	submit(t, r, 1, -1)
	if el := time.Since(start); el < 30*time.Millisecond || el > 5*time.Second {
		t.Errorf("TIMEOUT of 30ms fired after %v", el)
	}
	wantRes(t, results(t, reapAll(r)), 1, errno(syscall.ETIME))

	// A count timeout completes with 0 after two other completions; its own
	// CQE and other timeouts' do not count.
	long := heapTimespec(time.Hour)
	prep(t, r, func(s *uring.SQE) { s.PrepTimeout(long, 2, 0, 2) })
	prep(t, r, func(s *uring.SQE) { s.PrepNop(3) })
	submit(t, r, 0, 0)
	if r.Ready() != 1 {
		t.Fatalf("Ready %d after one NOP, want 1 (count not reached)", r.Ready())
	}
	prep(t, r, func(s *uring.SQE) { s.PrepNop(4) })
	submit(t, r, 0, 0)
	got := results(t, reapAll(r))
	wantRes(t, got, 2, 0)

	// TIMEOUT_REMOVE and ASYNC_CANCEL cancel a pending timeout.
	prep(t, r, func(s *uring.SQE) { s.PrepTimeout(long, 0, 0, 5) })
	prep(t, r, func(s *uring.SQE) { s.PrepTimeout(long, 0, 0, 6) })
	submit(t, r, 0, 0)
	prep(t, r, func(s *uring.SQE) { s.PrepTimeoutRemove(5, 7) })
	prep(t, r, func(s *uring.SQE) { s.PrepCancel(6, 8) })
	prep(t, r, func(s *uring.SQE) { s.PrepTimeoutRemove(5, 9) }) // already gone
	submit(t, r, 5, -1)
	got = results(t, reapAll(r))
	wantRes(t, got, 5, errno(syscall.ECANCELED))
	wantRes(t, got, 6, errno(syscall.ECANCELED))
	wantRes(t, got, 7, 0)
	wantRes(t, got, 8, 0)
	wantRes(t, got, 9, errno(syscall.ENOENT))

	// An absolute CLOCK_MONOTONIC deadline.
	var now unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &now); err != nil {
		t.Fatal(err)
	}
	abs := heapTimespec(time.Duration(now.Nano()) + 20*time.Millisecond)
	prep(t, r, func(s *uring.SQE) { s.PrepTimeout(abs, 0, uring.IORING_TIMEOUT_ABS, 10) })
	start = time.Now()
	submit(t, r, 1, -1)
	if el := time.Since(start); el < 15*time.Millisecond || el > 5*time.Second {
		t.Errorf("absolute TIMEOUT 20ms ahead fired after %v", el)
	}
	wantRes(t, results(t, reapAll(r)), 10, errno(syscall.ETIME))

	// A malformed TIMEOUT fails at submission.
	prep(t, r, func(s *uring.SQE) { s.PrepTimeout(long, 0, 0, 11); s.Len = 2 })
	submit(t, r, 1, -1)
	wantRes(t, results(t, reapAll(r)), 11, errno(syscall.EINVAL))
}

func TestCancel(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	efd := eventfd(t)
	mem := r.AddMemFile(make([]byte, 4096))
	b, counter := heapBytes(4096), heapCounter()
	prep(t, r, func(s *uring.SQE) { s.PrepPollAdd(int32(efd), unix.POLLIN, 1) })
	prep(t, r, func(s *uring.SQE) { s.PrepEventfdRead(int32(efd), counter, 2) })
	prep(t, r, func(s *uring.SQE) { s.PrepPollAdd(int32(efd), unix.POLLIN, 3) })
	r.Hold(func(s *uring.SQE) bool { return s.Opcode == uring.IORING_OP_READ && s.Fd == mem })
	prep(t, r, func(s *uring.SQE) { s.PrepRead(mem, b, 0, 4) })
	submit(t, r, 0, 0)
	r.Hold(nil)
	prep(t, r, func(s *uring.SQE) { s.PrepCancel(1, 11) })
	prep(t, r, func(s *uring.SQE) { s.PrepCancel(2, 12) })
	prep(t, r, func(s *uring.SQE) { s.PrepPollRemove(3, 13) })
	prep(t, r, func(s *uring.SQE) { s.PrepCancel(4, 14) })  // held "on the device"
	prep(t, r, func(s *uring.SQE) { s.PrepCancel(99, 15) }) // nothing
	prep(t, r, func(s *uring.SQE) { s.PrepPollRemove(4, 16) })
	submit(t, r, 9, -1)
	got := results(t, reapAll(r))
	for _, ud := range []uint64{1, 2, 3} {
		wantRes(t, got, ud, errno(syscall.ECANCELED))
	}
	wantRes(t, got, 11, 0)
	wantRes(t, got, 12, 0)
	wantRes(t, got, 13, 0)
	wantRes(t, got, 14, errno(syscall.EALREADY))
	wantRes(t, got, 15, errno(syscall.ENOENT))
	wantRes(t, got, 16, errno(syscall.ENOENT)) // not a poll
	if _, ok := got[4]; ok {
		t.Error("the held read completed")
	}
	if r.ReleaseAll() != 1 {
		t.Error("ReleaseAll did not find the held read")
	}
	wantRes(t, results(t, reapAll(r)), 4, 4096)

	// Cancelling a linked poll cancels its successors too.
	prep(t, r, func(s *uring.SQE) { s.PrepPollAdd(int32(efd), unix.POLLIN, 20); s.SetLink() })
	prep(t, r, func(s *uring.SQE) { s.PrepNop(21) })
	submit(t, r, 0, 0)
	prep(t, r, func(s *uring.SQE) { s.PrepCancel(21, 22) }) // not issued yet: not found
	prep(t, r, func(s *uring.SQE) { s.PrepCancel(20, 23) })
	submit(t, r, 4, -1)
	got = results(t, reapAll(r))
	wantRes(t, got, 20, errno(syscall.ECANCELED))
	wantRes(t, got, 21, errno(syscall.ECANCELED))
	wantRes(t, got, 22, errno(syscall.ENOENT))
	wantRes(t, got, 23, 0)
}

func TestWaitBlocksOnRealFdWithoutDeadlock(t *testing.T) {
	// A held MemFile op alongside an eventfd poll: the wait blocks in poll
	// instead of reporting a deadlock, and the kick ends it.
	r := uringtest.New(uringtest.Options{})
	efd := eventfd(t)
	r.Hold(func(s *uring.SQE) bool { return s.Opcode == uring.IORING_OP_NOP })
	prep(t, r, func(s *uring.SQE) { s.PrepNop(1) })
	prep(t, r, func(s *uring.SQE) { s.PrepPollAdd(int32(efd), unix.POLLIN, 2) })
	go func() {
		time.Sleep(20 * time.Millisecond)
		kick(efd, 1)
	}()
	if _, err := r.SubmitAndWait(1, -1); err != nil {
		t.Fatalf("wait: %v", err)
	}
	wantRes(t, results(t, reapAll(r)), 2, unix.POLLIN)
	if _, err := r.SubmitAndWait(1, -1); !errors.Is(err, uringtest.ErrDeadlock) {
		t.Errorf("only a held op left: %v, want ErrDeadlock", err)
	}
}

// TestMemFilePollNeverReady: a MemFile never reports POLLPRI, so such a
// poll can only be removed.
func TestMemFilePollNeverReady(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	fd := r.AddMemFile(nil)
	prep(t, r, func(s *uring.SQE) { s.PrepPollAdd(fd, unix.POLLPRI, 1) })
	prep(t, r, func(s *uring.SQE) { s.PrepPollAdd(fd, unix.POLLIN, 2) })
	if _, err := r.SubmitAndWait(2, -1); !errors.Is(err, uringtest.ErrDeadlock) {
		t.Fatalf("wait: %v, want ErrDeadlock", err)
	}
	wantRes(t, results(t, reapAll(r)), 2, unix.POLLIN)
	prep(t, r, func(s *uring.SQE) { s.PrepPollRemove(1, 3) })
	submit(t, r, 2, -1)
	got := results(t, reapAll(r))
	wantRes(t, got, 1, errno(syscall.ECANCELED))
	wantRes(t, got, 3, 0)
}
