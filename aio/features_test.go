package aio

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/internal/invariants"
	"github.com/ringblk/ringblk/uring"
	"github.com/ringblk/ringblk/uring/uringtest"
)

// Vectored reads and writes, fixed-buffer ops on arena memory (they must go
// out as READ_FIXED/WRITE_FIXED), and a short vectored read resubmitted
// across an iovec boundary.
func TestVectoredAndFixedIO(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		q, fq := e.queue(64, uringtest.Options{})
		f := e.testFile(64*1024, fq)
		if fq != nil {
			fq.Inject(uringtest.Fault{Ops: uringtest.Ops(uring.IORING_OP_READV), Fd: int32(f.Fd()), Nth: 1, Short: 5000})
		} else {
			done := false
			q.hook = func(cqe *uring.CQE) {
				if !done && cqe.Res == 3*4096 {
					cqe.Res, done = 5000, true
				}
			}
		}
		c := e.start(Options{}, q)
		cnt := newCounter()
		v := [][]byte{make([]byte, 4096), make([]byte, 4096), make([]byte, 4096)}
		w := [][]byte{bytes.Repeat([]byte{1}, 1000), bytes.Repeat([]byte{2}, 3096)}
		var fixed bool
		var fr []byte
		onOwner(t, c, hang, func() {
			c.Readv(f, v, 4096, cnt, 1)
			c.WaitWhile(func() bool { return cnt.n < 1 })
			c.Writev(f, w, 32768, cnt, 2)
			c.WaitWhile(func() bool { return cnt.n < 2 })
			a := c.Arena()
			fixed = a.Fixed()
			fw, err := a.Alloc(8192)
			if err != nil {
				t.Error(err)
				return
			}
			fr, _ = a.Alloc(8192)
			copy(fw, bytes.Repeat([]byte{9}, 8192))
			c.Write(f, fw, 40960, cnt, 3)
			c.WaitWhile(func() bool { return cnt.n < 3 })
			c.Read(f, fr, 40960, cnt, 4)
			c.WaitWhile(func() bool { return cnt.n < 4 })
			fr = append([]byte(nil), fr...)
			a.Free(fw)
		})
		for i, b := range v {
			if !bytes.Equal(b, pattern(make([]byte, 4096), int64(4096+i*4096))) {
				t.Fatalf("readv buffer %d wrong", i)
			}
		}
		if cnt.res[1] != 3*4096 || cnt.res[2] != 4096 || cnt.res[3] != 8192 || cnt.res[4] != 8192 {
			t.Fatalf("results %v", cnt.res)
		}
		if !bytes.Equal(e.fileBytes(f, fq, 32768, 4096), append(w[0], w[1]...)) {
			t.Fatal("writev data wrong on disk")
		}
		if !bytes.Equal(fr, bytes.Repeat([]byte{9}, 8192)) {
			t.Fatal("fixed read/write data wrong")
		}
		readvs := q.ops(uring.IORING_OP_READV, f)
		if len(readvs) != 2 || readvs[1].Off != 4096+5000 || readvs[1].Len != 2 {
			t.Fatalf("short readv resubmission: %v (want second at offset %d with 2 iovecs)", offLens(readvs), 4096+5000)
		}
		if !fixed {
			t.Fatal("arena not registered as a fixed buffer")
		}
		if len(q.ops(uring.IORING_OP_WRITE_FIXED, f)) != 1 || len(q.ops(uring.IORING_OP_READ_FIXED, f)) != 1 {
			t.Fatal("arena buffers did not go out as WRITE_FIXED/READ_FIXED")
		}
	})
}

// fsync, fdatasync, and fallocate punch-hole and zero-range.
func TestFsyncFallocate(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		q, fq := e.queue(64, uringtest.Options{})
		c := e.start(Options{}, q)
		f := e.testFile(64*1024, fq)
		cnt := newCounter()
		onOwner(t, c, hang, func() {
			c.Fsync(f, false, cnt, 1)
			c.Fsync(f, true, cnt, 2)
			c.Fallocate(f, uring.FALLOC_FL_PUNCH_HOLE|uring.FALLOC_FL_KEEP_SIZE, 4096, 8192, cnt, 3)
			c.Fallocate(f, uring.FALLOC_FL_ZERO_RANGE, 32768, 4096, cnt, 4)
			c.WaitWhile(func() bool { return cnt.n < 4 })
		})
		for tag := uint64(1); tag <= 4; tag++ {
			if cnt.errs[tag] != nil || cnt.res[tag] != 0 {
				t.Fatalf("op %d: res %d err %v", tag, cnt.res[tag], cnt.errs[tag])
			}
		}
		got := e.fileBytes(f, fq, 0, 64*1024)
		want := pattern(make([]byte, 64*1024), 0)
		clear(want[4096 : 4096+8192])
		clear(want[32768 : 32768+4096])
		if !bytes.Equal(got, want) {
			t.Fatal("punched or zeroed range does not read as zeros (or too much was zeroed)")
		}
		if len(q.ops(uring.IORING_OP_FSYNC, f)) != 2 || q.ops(uring.IORING_OP_FSYNC, f)[1].OpFlags != uring.IORING_FSYNC_DATASYNC {
			t.Fatal("fsync/fdatasync not issued as expected")
		}
	})
}

// The arena: 4096-aligned blocks, power-of-two rounding, exhaustion as an
// error, and buddies merge back so the whole arena can be taken again.
func TestArenaBuddy(t *testing.T) {
	e := newEnv(t, "fake")
	c := e.start(Options{ArenaSize: 1 << 20}, nil)
	onOwner(t, c, hang, func() {
		a := c.Arena()
		var blocks [][]byte
		for _, size := range []int{1, 4096, 4097, 100000, 65536, 3} {
			b, err := a.Alloc(size)
			if err != nil {
				t.Errorf("Alloc(%d): %v", size, err)
				return
			}
			if len(b) != size || !a.Contains(b) || uintptr(unsafePointer(b))%4096 != 0 {
				t.Errorf("Alloc(%d): len %d, inside %v, aligned %v", size, len(b), a.Contains(b), uintptr(unsafePointer(b))%4096 == 0)
			}
			blocks = append(blocks, b)
		}
		if want := 4096 + 4096 + 8192 + 131072 + 65536 + 4096; a.Used() != want {
			t.Errorf("Used %d, want %d", a.Used(), want)
		}
		if _, err := a.Alloc(1 << 20); !errors.Is(err, ErrArenaFull) {
			t.Errorf("over-allocation: %v, want ErrArenaFull", err)
		}
		for _, b := range blocks {
			a.Free(b)
		}
		if a.Used() != 0 {
			t.Errorf("Used %d after freeing everything", a.Used())
		}
		all, err := a.Alloc(1 << 20)
		if err != nil {
			t.Errorf("whole arena after frees: %v (buddies did not merge)", err)
			return
		}
		a.Free(all)
		if msg := panicMsg(func() { a.Free(all[4096:]) }); !strings.HasPrefix(msg, "assertion failed") {
			t.Errorf("freeing a non-allocated block: %q", msg)
		}
	})
}

// O_DIRECT I/O from arena buffers on a file system that supports it.
func TestODirectArena(t *testing.T) {
	e := newEnv(t, "kernel")
	dir, _ := os.Getwd() // the test's tmpdir may be tmpfs, which has no O_DIRECT
	p := filepath.Join(dir, ".odirect-test")
	osf, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|syscall.O_DIRECT, 0o600)
	if err != nil {
		t.Skipf("O_DIRECT unsupported here: %v", err)
	}
	defer os.Remove(p)
	f := NewFile(osf)
	defer f.Close()
	c := e.start(Options{}, nil)
	var res [2]int
	var errs [2]error
	var ok bool
	onOwner(t, c, hang, func() {
		a := c.Arena()
		w, _ := a.Alloc(8192)
		r, _ := a.Alloc(8192)
		pattern(w, 0)
		cnt := newCounter()
		c.Write(f, w, 0, cnt, 0)
		c.WaitWhile(func() bool { return cnt.n < 1 })
		c.Read(f, r, 0, cnt, 1)
		c.WaitWhile(func() bool { return cnt.n < 2 })
		res[0], res[1], errs[0], errs[1] = cnt.res[0], cnt.res[1], cnt.errs[0], cnt.errs[1]
		ok = bytes.Equal(r, w)
	})
	if errors.Is(errs[0], syscall.EINVAL) {
		t.Skipf("O_DIRECT refused by the file system: %v", errs[0])
	}
	if errs[0] != nil || errs[1] != nil || res != [2]int{8192, 8192} || !ok {
		t.Fatalf("O_DIRECT: res %v errs %v data ok %v", res, errs, ok)
	}
}

// Timers run in deadline order; Stop prevents, Reset moves; a timer armed
// by a timer callback with a past deadline runs in a later iteration.
func TestTimers(t *testing.T) {
	e := newEnv(t, "fake")
	c := e.start(Options{}, nil)
	var log []string
	onOwner(t, c, hang, func() {
		add := func(name string, d time.Duration) *Timer {
			return c.AfterFunc(d, func() { log = append(log, name) })
		}
		add("c", 3*time.Millisecond)
		add("a", 1*time.Millisecond)
		stopped := add("x", 2*time.Millisecond)
		moved := add("b", 10*time.Second)
		if !stopped.Stop() || stopped.Stop() {
			t.Error("Stop reports wrong")
		}
		moved.Reset(2 * time.Millisecond)
		var chained bool
		c.AfterFunc(4*time.Millisecond, func() {
			log = append(log, "d")
			c.AfterFunc(0, func() { chained = true; log = append(log, "e") })
			if chained {
				t.Error("timer armed by a timer ran in the same iteration")
			}
		})
		c.WaitWhile(func() bool { return !chained })
	})
	if got := strings.Join(log, ""); got != "abcde" {
		t.Fatalf("timer order %q, want abcde", got)
	}
}

// fd handlers: readiness is dispatched on the owner; external handlers are
// held while DisableExternal (nested) is in force and dispatched after the
// outermost EnableExternal; internal ones keep running; Remove stops it.
func TestFDHandlerExternal(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		c := e.start(Options{}, nil)
		var pe, pi [2]int
		if err := unix.Pipe2(pe[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
			t.Fatal(err)
		}
		if err := unix.Pipe2(pi[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(pe[0])
		defer unix.Close(pe[1])
		defer unix.Close(pi[0])
		defer unix.Close(pi[1])
		// The counters are written by handlers on the owner and read here:
		// atomics, because the owner's own loop may dispatch a handler at
		// any time, not only inside poll below.
		var ext, internal atomic.Int32
		drain := func(fd int) {
			var b [64]byte
			unix.Read(fd, b[:])
		}
		var hExt *FDHandler
		onOwner(t, c, hang, func() {
			hExt = c.SetFDHandler(pe[0], unix.POLLIN, func(uint32) { ext.Add(1); drain(pe[0]) }, true)
			c.SetFDHandler(pi[0], unix.POLLIN, func(uint32) { internal.Add(1); drain(pi[0]) }, false)
		})
		c.DisableExternal()
		c.DisableExternal()
		unix.Write(pe[1], []byte{1})
		unix.Write(pi[1], []byte{1})
		poll := func() {
			onOwner(t, c, hang, func() {
				// Blocking polls, each bounded by a 1ms timer: a blocking
				// poll enters the ring, which is where the fake completes
				// the armed POLL_ADDs (non-blocking polls may not enter).
				deadline := time.Now().Add(50 * time.Millisecond)
				for time.Now().Before(deadline) {
					tm := c.AfterFunc(time.Millisecond, func() {})
					c.Poll(true)
					tm.Stop()
				}
			})
		}
		poll()
		if ext.Load() != 0 || internal.Load() != 1 {
			t.Fatalf("while disabled: external ran %d times (want 0), internal %d (want 1)", ext.Load(), internal.Load())
		}
		c.EnableExternal()
		poll()
		if ext.Load() != 0 {
			t.Fatalf("external ran after the inner EnableExternal")
		}
		c.EnableExternal()
		poll()
		if ext.Load() != 1 {
			t.Fatalf("external ran %d times after the outermost EnableExternal, want 1", ext.Load())
		}
		onOwner(t, c, hang, func() { hExt.Remove() })
		unix.Write(pe[1], []byte{1})
		poll()
		if ext.Load() != 1 {
			t.Fatal("handler ran after Remove")
		}
	})
}

// Stop cancels an op that can never complete (a poll on a pipe nobody
// writes): its Done gets ECANCELED and the report counts it; timers and fd
// handlers still registered are counted too; no goroutine is left.
func TestStopCancelsInFlight(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		checkLeak := leakCheck(t)
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(p[1])
		c := e.start(Options{}, nil)
		f := NewFileFd(p[0], func() error { return unix.Close(p[0]) })
		cnt := newCounter()
		onOwner(t, c, hang, func() {
			c.PollAdd(f, unix.POLLIN, cnt, 1)
			c.AfterFunc(time.Hour, func() {})
			c.SetFDHandler(p[0], unix.POLLIN, func(uint32) {}, false)
		})
		rep, err := c.Stop()
		if err != nil || rep.OpsCancelled != 1 || rep.TimersCancelled != 1 || rep.FDHandlersRemoved != 1 {
			t.Fatalf("Stop: %v %+v", err, rep)
		}
		if cnt.n != 1 || !errors.Is(cnt.errs[1], syscall.ECANCELED) {
			t.Fatalf("Done ran %d times with %v, want once with ECANCELED", cnt.n, cnt.errs[1])
		}
		f.Close()
		if err := f.Wait(); err != nil {
			t.Fatalf("deferred close: %v", err)
		}
		checkLeak()
	})
}

// An op the kernel never returns (held forever in the fake) is abandoned
// after StopTimeout: Stop reports it and fails with ErrLeaked, and Done
// still gets ECANCELED exactly once.
func TestStopAbandonsStuckOp(t *testing.T) {
	e := newEnv(t, "fake")
	q, fq := e.queue(64, uringtest.Options{})
	f := e.testFile(4096, fq)
	fq.Inject(uringtest.Fault{Ops: uringtest.ReadOps, Fd: int32(f.Fd()), Hold: true})
	c := e.start(Options{StopTimeout: 50 * time.Millisecond}, q)
	cnt := newCounter()
	onOwner(t, c, hang, func() { c.Read(f, make([]byte, 4096), 0, cnt, 1) })
	rep, err := c.Stop()
	if !errors.Is(err, ErrLeaked) || rep.OpsAbandoned != 1 || rep.OpsCancelled != 0 {
		t.Fatalf("Stop: %v %+v", err, rep)
	}
	if cnt.n != 1 || !errors.Is(cnt.errs[1], syscall.ECANCELED) {
		t.Fatalf("Done ran %d times with %v", cnt.n, cnt.errs[1])
	}
}

// Stop ends parked and never-entered coroutines (Goexit runs their defers)
// and leaves no goroutine behind, over repeated start/stop cycles.
func TestStopEndsCoroutinesNoLeak(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		checkLeak := leakCheck(t)
		for round := 0; round < 5; round++ {
			c := e.start(Options{}, nil)
			var deferred atomic.Int32
			onOwner(t, c, hang, func() {
				for i := 0; i < 3; i++ {
					c.Go(func(co *Co) {
						defer deferred.Add(1)
						co.Yield() // never woken
					})
				}
			})
			c.Go(func(co *Co) { defer deferred.Add(1) }) // scheduled from outside
			rep, err := c.Stop()
			if err != nil || rep.Coroutines < 3 || rep.Coroutines > 4 || deferred.Load() != 4 {
				t.Fatalf("Stop: %v %+v; deferred calls run %d, want 4", err, rep, deferred.Load())
			}
		}
		checkLeak()
	})
}

// A duplicated CQE is rejected by the generation check: Done runs once.
func TestStaleCQERejected(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		q, _ := e.queue(64, uringtest.Options{})
		c := e.start(Options{}, q)
		cnt := newCounter()
		var st Stats
		onOwner(t, c, hang, func() {
			q.dupNext = true
			c.Nop(cnt, 1)
			c.WaitWhile(func() bool { return cnt.n == 0 })
			for i := 0; i < 5; i++ {
				c.Nop(cnt, 2) // reuses the slot: the duplicate must not complete it
				c.WaitWhile(func() bool { return cnt.byTag[2] == 0 })
				cnt.byTag[2] = 0
			}
			st = c.Stats()
		})
		if cnt.byTag[1] != 1 || st.StaleCQEs != 1 {
			t.Fatalf("Done ran %d times, stale CQEs %d; want 1, 1", cnt.byTag[1], st.StaleCQEs)
		}
	})
}

// File.Close while an op is in flight defers the real close until the op
// completes.
func TestFileCloseDeferred(t *testing.T) {
	e := newEnv(t, "fake")
	q, fq := e.queue(64, uringtest.Options{})
	fd := fq.AddMemFile(make([]byte, 4096))
	var closed atomic.Bool
	f := NewFileFd(int(fd), func() error { closed.Store(true); return nil })
	fq.Hold(func(s *uring.SQE) bool { return s.Fd == fd })
	c := e.start(Options{}, q)
	cnt := newCounter()
	onOwner(t, c, hang, func() { c.Read(f, make([]byte, 4096), 0, cnt, 1) })
	if err := f.Close(); err != nil || closed.Load() || f.InFlight() != 1 {
		t.Fatalf("Close with an op in flight: err %v, closed %v, in flight %d", err, closed.Load(), f.InFlight())
	}
	if err := f.Close(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
	onOwner(t, c, hang, func() {
		fq.ReleaseAll()
		fq.Hold(nil)
		c.WaitWhile(func() bool { return cnt.n == 0 })
	})
	if err := f.Wait(); err != nil || !closed.Load() {
		t.Fatalf("deferred close: %v, closed %v", err, closed.Load())
	}
	if msg := panicMsg(func() { onOwnerRaw(c, func() { c.Read(f, nil, 0, cnt, 9) }) }); !strings.Contains(msg, "closed File") {
		t.Fatalf("op on a closed File: %q", msg)
	}
}

// onOwnerRaw runs fn on the owner and re-raises its panic here.
func onOwnerRaw(c *Context, fn func()) {
	ch := make(chan any, 1)
	c.Schedule(func() {
		defer func() { ch <- recover() }()
		fn()
	})
	if p := <-ch; p != nil {
		panic(p)
	}
}

// Coroutine helpers: synchronous I/O from a coroutine, errors as *OpError.
func TestCoroutineSyncIO(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		q, fq := e.queue(64, uringtest.Options{})
		f := e.testFile(16384, fq)
		if fq != nil {
			fq.Inject(uringtest.Fault{Ops: uringtest.ReadOps, Fd: int32(f.Fd()), Off: 12288, Errno: syscall.EIO})
		} else {
			q.hook = func(cqe *uring.CQE) {
				if cqe.Res == 100 {
					cqe.Res = -int32(syscall.EIO)
				}
			}
		}
		c := e.start(Options{}, q)
		var n1, n2 int
		var err1, err2, err3 error
		var buf []byte
		onOwner(t, c, hang, func() {
			done := false
			c.Go(func(co *Co) {
				n1, err1 = co.Write(f, []byte("hello"), 8192)
				buf = make([]byte, 5)
				_, err2 = co.Read(f, buf, 8192)
				n2, err3 = co.Read(f, make([]byte, 100), 12288)
				if err := co.Fsync(f, true); err != nil {
					t.Error(err)
				}
				co.Sleep(time.Millisecond)
				done = true
			})
			c.WaitWhile(func() bool { return !done })
		})
		var oe *OpError
		if n1 != 5 || err1 != nil || err2 != nil || string(buf) != "hello" {
			t.Fatalf("write %d %v, read %q %v", n1, err1, buf, err2)
		}
		if !errors.As(err3, &oe) || oe.Op != "read" || oe.Off != 12288 || !errors.Is(err3, syscall.EIO) || n2 != 0 {
			t.Fatalf("failed read: %d, %v", n2, err3)
		}
	})
}

// While idle the owner sleeps in the ring (no spinning): over 50ms it makes
// at most a couple of waits, and a Schedule from another goroutine wakes
// it with one eventfd write.
func TestIdleSleepsAndWakes(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		c := e.start(Options{}, nil)
		var before, after Stats
		onOwner(t, c, hang, func() { before = c.Stats() })
		time.Sleep(50 * time.Millisecond)
		wakes := c.wakeups.Load()
		onOwner(t, c, hang, func() { after = c.Stats() })
		if d := after.Waits - before.Waits; d > 3 {
			t.Fatalf("%d waits in 50ms of idleness: the loop spins", d)
		}
		if c.wakeups.Load() != wakes+1 {
			t.Fatalf("waking a sleeping owner took %d eventfd writes, want 1", c.wakeups.Load()-wakes)
		}
	})
}

// Adaptive polling: with PollTime set, a ping-pong with another goroutine
// finds work while spinning, so the loop avoids some sleeps.
func TestAdaptivePolling(t *testing.T) {
	e := newEnv(t, "kernel")
	c := e.start(Options{PollTime: 200 * time.Microsecond}, nil)
	var pong atomic.Int64
	for i := int64(1); i <= 2000; i++ {
		c.Schedule(func() { pong.Store(i) })
		for pong.Load() != i {
		}
	}
	var st Stats
	onOwner(t, c, hang, func() { st = c.Stats() })
	if st.SpinHits == 0 {
		t.Fatalf("no spin hit in 2000 round trips (stats %+v)", st)
	}
	t.Logf("spin hits %d, waits %d, wake-ups %d", st.SpinHits, st.Waits, st.Wakeups)
}

// StartDefault: one IOThread per physical core, each pinned to its CPU,
// plus an unpinned main Context.
func TestStartDefault(t *testing.T) {
	if kernelRingErr != nil {
		t.Skip(kernelRingErr)
	}
	checkLeak := leakCheck(t)
	s, err := StartDefault(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.IOThreads) != len(topo.CoreCPUs) || !s.Main.IsMain() || len(topo.CoreCPUs) < 1 {
		t.Fatalf("%d IOThreads for cores %v", len(s.IOThreads), topo.CoreCPUs)
	}
	for i, c := range s.IOThreads {
		var set unix.CPUSet
		c.Run(func() { unix.SchedGetaffinity(0, &set) })
		if set.Count() != 1 || !set.IsSet(topo.CoreCPUs[i]) {
			t.Errorf("%s not pinned to CPU %d", c.Name(), topo.CoreCPUs[i])
		}
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	checkLeak()
	t.Logf("topology %+v", MachineTopology())
}

// Past the preallocated slots the table grows (once per new high-water
// mark) and nothing fails.
func TestSlotGrowth(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		c := e.start(Options{Entries: 32, Slots: 16}, nil)
		cnt := newCounter()
		var st Stats
		onOwner(t, c, hang, func() {
			c.Plug()
			for i := 0; i < 600; i++ {
				c.Nop(cnt, uint64(i))
			}
			c.Unplug()
			c.WaitWhile(func() bool { return cnt.n < 600 })
			st = c.Stats()
		})
		if cnt.n != 600 || st.SlotsGrown < 2 {
			t.Fatalf("%d completions, %d chunks grown", cnt.n, st.SlotsGrown)
		}
	})
}

// Owner-only calls from elsewhere panic under invariants.
func TestOwnerCheck(t *testing.T) {
	if !invariants.Enabled {
		t.Skip("owner checks run under the invariants tag and -race")
	}
	e := newEnv(t, "fake")
	c := e.start(Options{}, nil)
	if msg := panicMsg(func() { c.Nop(newCounter(), 0) }); !strings.HasPrefix(msg, "assertion failed") {
		t.Fatalf("Nop from a foreign goroutine: %q", msg)
	}
	if msg := panicMsg(func() { c.Poll(false) }); !strings.HasPrefix(msg, "assertion failed") {
		t.Fatalf("Poll from a foreign goroutine: %q", msg)
	}
}

// One-shot BHs scheduled concurrently by several goroutines each run
// exactly once, also while main drains the Context with nested non-blocking
// polls from a run-and-wait task (the B7 detach shape).
func TestOneShotRunsExactlyOnce(t *testing.T) {
	e := newEnv(t, "kernel")
	c := e.start(Options{}, nil)
	main := e.start(Options{Main: true}, nil)
	n := int64(200000)
	if raceEnabled {
		n = 20000
	}
	ran := make([]atomic.Int32, n)
	var wg sync.WaitGroup
	var next atomic.Int64
	for g := 0; g < 2; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				id := next.Add(1)
				if id >= n {
					return
				}
				c.Schedule(func() { ran[id].Add(1) })
			}
		}()
	}
	onOwner(t, main, hang, func() {
		for next.Load() < n {
			c.Run(func() {
				for i := 0; i < 100 && c.Poll(false); i++ {
				}
			})
		}
	})
	wg.Wait()
	onOwner(t, c, hang, func() { c.Poll(false) })
	for i := int64(1); i < n; i++ {
		if ran[i].Load() != 1 {
			t.Fatalf("id %d ran %d", i, ran[i].Load())
		}
	}
}

// readChain issues one O_DIRECT read from each completion until left runs
// out: a chain of dependent I/O at queue depth 1 whose completions arrive
// asynchronously (from the device, not inline in the submitting enter).
type readChain struct {
	c    *Context
	f    *File
	buf  []byte
	left int
	done bool
	err  error
}

func (ch *readChain) OpDone(tag uint64, res int, err error) {
	if err != nil && ch.err == nil {
		ch.err = err
	}
	if ch.left == 0 || err != nil {
		ch.done = true
		return
	}
	ch.left--
	ch.c.Read(ch.f, ch.buf, int64(ch.left%256)*4096, ch, 0)
}

// TestDependentOpsOneEnterEach: an op issued from a completion callback is
// submitted by the next wait's io_uring_enter, the one that also waits for
// it, so a chain of dependent reads costs one enter per read instead of two
// (a submit, then a wait). Kernel ring only: it needs completions that do
// not arrive inside the submitting enter (O_DIRECT on a disk filesystem).
func TestDependentOpsOneEnterEach(t *testing.T) {
	e := newEnv(t, "kernel")
	dir, err := os.MkdirTemp("/var/tmp", "aio-chain-")
	if err != nil {
		t.Skipf("no /var/tmp for an O_DIRECT file: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "data")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	osf, err := os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Skipf("O_DIRECT unsupported under /var/tmp: %v", err)
	}
	f := NewFile(osf)
	t.Cleanup(func() { f.Close() })
	c := e.start(Options{Name: "chain", ArenaSize: 1 << 20}, nil)
	const n = 500
	var enters, waits int64
	var chErr error
	onOwner(t, c, 30*time.Second, func() {
		buf, err := c.Arena().Alloc(4096)
		if err != nil {
			chErr = err
			return
		}
		ch := &readChain{c: c, f: f, buf: buf, left: n}
		before := c.Stats()
		c.Read(f, buf, 0, ch, 0)
		c.WaitWhile(func() bool { return !ch.done })
		after := c.Stats()
		enters, waits = after.Enters-before.Enters, after.Waits-before.Waits
		chErr = ch.err
		c.Arena().Free(buf)
	})
	if chErr != nil {
		t.Fatalf("read chain: %v", chErr)
	}
	t.Logf("%d enters (%d waits) for %d dependent O_DIRECT reads", enters, waits, n+1)
	// Reads that happened to complete before the loop slept cost no wait;
	// every other read must share its enter with the wait.
	if enters > n+1+16 {
		t.Errorf("%d io_uring_enter calls for %d dependent reads: want about one per read", enters, n+1)
	}
}

// The slot table grows up to MaxSlots (rounded to its chunk); SlotsFree
// counts down as ops are issued; an op started with the table full still
// runs, grows the table and is counted over the cap.
func TestSlotCap(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		c := e.start(Options{Entries: 16, MaxSlots: 50}, nil)
		cnt := newCounter()
		var capSlots, free0, freeAt40 int
		var mid, end Stats
		onOwner(t, c, hang, func() {
			capSlots = c.SlotCap()
			free0 = c.SlotsFree() // the loop's own ops (eventfd read) hold some
			c.Plug()
			for i := 0; i < 40; i++ {
				c.Nop(cnt, uint64(i))
			}
			freeAt40 = c.SlotsFree()
			mid = c.Stats()
			for i := 40; i < 100; i++ {
				c.Nop(cnt, uint64(i))
			}
			c.Unplug()
			c.WaitWhile(func() bool { return cnt.n < 100 })
			end = c.Stats()
		})
		if capSlots != 64 || free0-freeAt40 != 40 || free0 < 60 {
			t.Fatalf("cap %d, free %d before and %d after 40 ops; want 64 and 40 fewer", capSlots, free0, freeAt40)
		}
		if mid.SlotTable != 64 || mid.SlotsOverCap != 0 {
			t.Fatalf("after 40 ops: table %d, over cap %d; want 64, 0", mid.SlotTable, mid.SlotsOverCap)
		}
		if cnt.n != 100 || end.SlotTable != 128 || end.SlotsOverCap != 1 {
			t.Fatalf("%d of 100 ops ran, table %d, over cap %d; want 100, 128, 1", cnt.n, end.SlotTable, end.SlotsOverCap)
		}
	})
}
