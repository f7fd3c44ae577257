package aio

// Tests of drain.md §4.3 (W1–W5): how the main Context waits for IOThreads.
// W4 and W5 need the block layer's drain; the tests build the aio-level
// equivalents and say how they map.

import (
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// W1: lost-wakeup stress. 10⁵ iterations (10⁴ with -short): main hands a
// request to an IOThread, the IOThread completes it, decrements the
// in-flight count and Kicks main, while main waits for zero in WaitWhile.
// A lost wake-up shows up as an iteration that takes longer than a second.
func TestW1LostWakeupStress(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		iters := 100000
		if testing.Short() || raceEnabled {
			iters = 10000
		}
		main := e.start(Options{Name: "main", Main: true}, nil)
		io := e.start(Options{Name: "io"}, nil)
		var inflight atomic.Int64
		var worst time.Duration
		var slow int
		onOwner(t, main, 2*time.Minute, func() {
			done := DoneFunc(func(uint64, int, error) {
				inflight.Add(-1)
				main.Kick()
			})
			issue := func() { io.Nop(done, 0) }
			for i := 0; i < iters; i++ {
				start := time.Now()
				inflight.Add(1)
				io.Schedule(issue)
				main.WaitWhile(func() bool { return inflight.Load() > 0 })
				d := time.Since(start)
				worst = max(worst, d)
				if d > time.Second {
					slow++
				}
			}
		})
		if slow > 0 {
			t.Fatalf("%d of %d iterations took over 1s (worst %v): lost wake-up", slow, iters, worst)
		}
		t.Logf("%d iterations, worst %v", iters, worst)
	})
}

// W2: an IOThread waiting for a condition on another IOThread's Context is
// rejected (panics), as is Run across IOThreads and a wait from a goroutine
// that owns no Context. The main Context's owner may wait (see U10).
func TestW2ForeignWaitRejected(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		a := e.start(Options{Name: "ioA"}, nil)
		b := e.start(Options{Name: "ioB"}, nil)
		var waitMsg, runMsg string
		onOwner(t, a, hang, func() {
			waitMsg = panicMsg(func() { b.WaitWhile(func() bool { return true }) })
			runMsg = panicMsg(func() { b.Run(func() {}) })
		})
		plainMsg := panicMsg(func() { b.WaitWhile(func() bool { return true }) })
		for what, msg := range map[string]string{"WaitWhile from IOThread": waitMsg, "Run from IOThread": runMsg, "WaitWhile from a plain goroutine": plainMsg} {
			if !strings.HasPrefix(msg, "assertion failed") {
				t.Errorf("%s: got %q, want an assertion panic", what, msg)
			}
		}
	})
}

// W3: run-and-wait. The main Context runs 10⁴ closures on an IOThread with
// Run (waiting in its own loop), and a plain goroutine runs 10³ more; each
// Run returns only after its closure ran, exactly once, on the IOThread.
func TestW3RunAndWait(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		n := 10000
		if raceEnabled {
			n = 2000
		}
		main := e.start(Options{Name: "main", Main: true}, nil)
		io := e.start(Options{Name: "io"}, nil)
		var bad atomic.Int64
		runs := make([]int, n+1000)
		onOwner(t, main, time.Minute, func() {
			for i := 0; i < n; i++ {
				io.Run(func() {
					if !io.InContext() {
						bad.Add(1)
					}
					runs[i]++
				})
				if runs[i] != 1 {
					bad.Add(1)
				}
			}
		})
		for i := n; i < n+1000; i++ {
			io.Run(func() { runs[i]++ })
			if runs[i] != 1 {
				bad.Add(1)
			}
		}
		if bad.Load() != 0 {
			t.Fatalf("%d Runs returned before their closure ran once on the IOThread", bad.Load())
		}
	})
}

// W4 (aio level): a coroutine on an IOThread that needs main-Context work
// done (the shape of "drain from an IOThread coroutine", T12) hands it over
// with Co.RunOn: the work runs on main, never on the IOThread; the IOThread
// keeps running meanwhile (the work itself waits for an IOThread event);
// and the coroutine is resumed exactly once, after the work.
func TestW4CoroutineHandsOverToMain(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		main := e.start(Options{Name: "main", Main: true}, nil)
		io := e.start(Options{Name: "io"}, nil)
		var onMain, onIO, ioTicked, workDone atomic.Bool
		var resumed atomic.Int32
		var coDone atomic.Bool
		io.Go(func(co *Co) {
			co.RunOn(main, func() {
				onMain.Store(main.InContext())
				onIO.Store(io.InContext())
				io.Schedule(func() { ioTicked.Store(true); main.Kick() })
				main.WaitWhile(func() bool { return !ioTicked.Load() })
				workDone.Store(true)
			})
			if !workDone.Load() {
				resumed.Add(100) // resumed before the work finished
			}
			resumed.Add(1)
			coDone.Store(true)
		})
		deadline := time.Now().Add(hang)
		for !coDone.Load() && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		onOwner(t, io, hang, func() {
			for i := 0; i < 10; i++ {
				io.Poll(false) // a stray second resume would show up here
			}
		})
		if !onMain.Load() || onIO.Load() || !ioTicked.Load() || resumed.Load() != 1 {
			t.Fatalf("work on main %v, on IOThread %v, IOThread ran meanwhile %v, resumed %d (want true false true 1)",
				onMain.Load(), onIO.Load(), ioTicked.Load(), resumed.Load())
		}
	})
}

// W5 (aio level): recursive waits on one IOThread (the QMP-transaction
// shape, Q2, iotest 202): main waits for node 1's requests on an IOThread,
// and while it polls, a main BH starts a second, nested wait for node 2's
// requests on the same IOThread. Both complete: no loop-wide lock is held
// across a nested wait.
func TestW5NestedWaitsOnOneIOThread(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		main := e.start(Options{Name: "main", Main: true}, nil)
		io := e.start(Options{Name: "io"}, nil)
		var n1, n2 atomic.Int64
		var depth, maxDepth int
		var mu sync.Mutex
		onOwner(t, main, hang, func() {
			issue := func(n *atomic.Int64, k int) {
				n.Add(int64(k))
				io.Schedule(func() {
					for i := 0; i < k; i++ {
						io.AfterFunc(time.Duration(i)*50*time.Microsecond, func() {
							n.Add(-1)
							main.Kick()
						})
					}
				})
			}
			nested := main.NewBH(func() {
				depth++
				mu.Lock()
				maxDepth = max(maxDepth, depth)
				mu.Unlock()
				issue(&n2, 20)
				io.WaitWhile(func() bool { return n2.Load() > 0 })
				depth--
			})
			depth++
			issue(&n1, 20)
			nested.Schedule()
			io.WaitWhile(func() bool { return n1.Load() > 0 })
			depth--
		})
		if n1.Load() != 0 || n2.Load() != 0 || maxDepth != 2 {
			t.Fatalf("left n1=%d n2=%d, max wait depth %d (want 0 0 2)", n1.Load(), n2.Load(), maxDepth)
		}
	})
}

// Lost-wakeup stress for the eventfd protocol itself (complements W1):
// several goroutines schedule onto a Context that is mostly asleep, with
// jitter so pushes land at every point of the owner's sleep decision. Each
// scheduled function must run without help. The owner sleeps without a
// timeout when it has no timers, so a lost wake-up never ends by itself:
// one that has not run 15 s after its Schedule is lost (the test then
// nudges the owner so it fails instead of hanging). One that runs after a
// second but before that was only late — on a loaded machine the owner's
// thread can wait that long for a CPU — and is logged, not failed.
func TestScheduleWakeupStress(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		c := e.start(Options{}, nil)
		per := 20000
		if testing.Short() || raceEnabled {
			per = 3000
		}
		var wg sync.WaitGroup
		var stalls, late atomic.Int64
		for g := 0; g < 3; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ch := make(chan struct{}, 1)
				fn := func() { ch <- struct{}{} }
				timer := time.NewTimer(time.Hour)
				for i := 0; i < per; i++ {
					for j := 0; j < i%7; j++ {
						runtime.Gosched()
					}
					c.Schedule(fn)
					timer.Reset(time.Second)
					select {
					case <-ch:
					case <-timer.C:
						timer.Reset(14 * time.Second)
						select {
						case <-ch:
							late.Add(1)
						case <-timer.C:
							stalls.Add(1)
							c.Schedule(func() {}) // nudge the sleeper so the test fails instead of hanging
							<-ch
						}
					}
				}
			}()
		}
		wg.Wait()
		if n := late.Load(); n != 0 {
			t.Logf("%d scheduled functions ran 1-15 s after their Schedule (a loaded machine; not lost)", n)
		}
		if stalls.Load() != 0 {
			t.Fatalf("%d scheduled functions had not run 15 s after their Schedule: lost wake-up", stalls.Load())
		}
	})
}

// TestRunFromMainOnStoppingContext: main's Run on an IOThread that stops
// meanwhile either runs the function or panics saying the Context stopped
// first; it never hangs (the exiting Context kicks main, and Run's wait
// ends when its target has exited).
func TestRunFromMainOnStoppingContext(t *testing.T) {
	e := newEnv(t, "kernel")
	rounds := 60
	if testing.Short() {
		rounds = 20
	}
	m := e.start(Options{Name: "main", Main: true}, nil)
	ran, stopped := 0, 0
	for i := 0; i < rounds; i++ {
		io, err := New(Options{Name: "io", CPU: NoCPU})
		if err != nil {
			t.Fatal(err)
		}
		if err := io.Start(); err != nil {
			t.Fatal(err)
		}
		go func() {
			time.Sleep(time.Duration(i%7) * 100 * time.Microsecond)
			io.Stop()
		}()
		onOwner(t, m, 10*time.Second, func() {
			for {
				msg := panicMsg(func() { io.Run(func() {}) })
				switch {
				case msg == "":
					ran++
					continue
				case strings.Contains(msg, "stopped before a Run function ran"),
					strings.Contains(msg, "that is not running"):
					stopped++
				default:
					panic(msg)
				}
				return
			}
		})
		<-io.Stopped()
	}
	if stopped != rounds {
		t.Fatalf("%d of %d rounds ended with the stop reported", stopped, rounds)
	}
	t.Logf("%d Runs completed, %d ended by the stop, no hang", ran, stopped)
}
