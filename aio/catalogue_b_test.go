package aio

// Bottom-half tests of drain.md §4.1 (B1–B7), against both rings. B7 needs
// the block layer's node switch; the test builds its aio-level skeleton and
// says how it maps.

import (
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// B1: a BH that reschedules itself on every run does not starve the loop:
// completions and timers still run between its invocations, and it runs at
// most once per iteration.
func TestB1SelfReschedulingBHDoesNotStarve(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		c := e.start(Options{}, nil)
		var runs, maxPerPoll, polls int
		nopDone, timerDone := false, false
		onOwner(t, c, hang, func() {
			var bh *BH
			bh = c.NewBH(func() { runs++; bh.Schedule() })
			bh.Schedule()
			c.Nop(DoneFunc(func(uint64, int, error) { nopDone = true }), 0)
			c.AfterFunc(2*time.Millisecond, func() { timerDone = true })
			deadline := time.Now().Add(5 * time.Second)
			for (!nopDone || !timerDone) && time.Now().Before(deadline) {
				before := runs
				c.Poll(true) // blocking: a scheduled BH must keep it from sleeping
				polls++
				maxPerPoll = max(maxPerPoll, runs-before)
			}
			bh.Delete()
			c.Poll(false)
		})
		if !nopDone || !timerDone {
			t.Fatalf("starved: completion ran %v, timer ran %v after %d polls", nopDone, timerDone, polls)
		}
		if maxPerPoll != 1 || runs < 2 {
			t.Fatalf("the BH ran %d times in one iteration (want 1), %d in total", maxPerPoll, runs)
		}
	})
}

// B2: a BH scheduled while BHs run runs in a later iteration, not the
// current one.
func TestB2BHScheduledDuringBHsRunsLater(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		c := e.start(Options{}, nil)
		var log []string
		onOwner(t, c, hang, func() {
			b := c.NewBH(func() { log = append(log, "B") })
			a := c.NewBH(func() { log = append(log, "A"); b.Schedule() })
			a.Schedule()
			c.Poll(false)
			log = append(log, "|")
			c.Poll(false)
		})
		if got := join(log); got != "A,|,B" {
			t.Fatalf("order %q, want A,|,B", got)
		}
	})
}

// B3: a nested Poll inside a BH runs the BHs that were scheduled before the
// outer Poll before those scheduled later (by the BH itself).
func TestB3NestedPollRunsOlderBHsFirst(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		c := e.start(Options{}, nil)
		var log []string
		onOwner(t, c, hang, func() {
			mk := func(name string, fn func()) *BH {
				return c.NewBH(func() { log = append(log, name); fn() })
			}
			var cc, d *BH
			cc = mk("C", func() {})
			d = mk("D", func() {})
			a := mk("A", func() {
				cc.Schedule() // scheduled during the outer Poll
				c.Poll(false) // nested: must run B (older) before C
				log = append(log, "a-done")
			})
			b := mk("B", func() { d.Schedule() })
			a.Schedule()
			b.Schedule()
			c.Poll(false)
			log = append(log, "|")
			c.Poll(false)
		})
		// B runs inside A's nested Poll, before C; D (scheduled by B during
		// the nested Poll's BH run) waits for a later iteration.
		if got := join(log); got != "A,B,C,a-done,|,D" {
			t.Fatalf("order %q, want A,B,C,a-done,|,D", got)
		}
	})
}

// B4: wake-ups of parked coroutines issued from another goroutine resume
// them in wake-up order; one-shot BHs scheduled from one goroutine run in
// scheduling order.
func TestB4CrossGoroutineWakeupsFIFO(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		c := e.start(Options{}, nil)
		const n = 8
		cos := make([]*Co, n)
		var resumed []int
		parked := 0
		onOwner(t, c, hang, func() {
			for i := range cos {
				i := i
				cos[i] = c.Go(func(co *Co) {
					parked++
					co.Yield()
					resumed = append(resumed, i)
				})
			}
		})
		order := []int{5, 2, 7, 0, 3, 6, 1, 4}
		for _, i := range order {
			cos[i].Wake()
		}
		var ran []int
		var mu sync.Mutex
		for i := 0; i < 100; i++ {
			i := i
			c.Schedule(func() { mu.Lock(); ran = append(ran, i); mu.Unlock() })
		}
		onOwner(t, c, hang, func() {
			c.WaitWhile(func() bool { return len(resumed) < n })
		})
		if parked != n || !equalInts(resumed, order) {
			t.Fatalf("resumed %v, want %v (parked %d)", resumed, order, parked)
		}
		mu.Lock()
		defer mu.Unlock()
		for i, v := range ran {
			if v != i {
				t.Fatalf("one-shot BHs ran in order %v", ran)
			}
		}
	})
}

// B5: idle BHs are not progress and do not keep a blocking Poll from
// sleeping; they run after (at most) the idle timeout.
func TestB5IdleBH(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		c := e.start(Options{}, nil)
		runs := 0
		var progress1, progress2 bool
		var slept time.Duration
		onOwner(t, c, hang, func() {
			idle := c.NewBH(func() { runs++ })
			idle.ScheduleIdle()
			progress1 = c.Poll(false)
			idle.ScheduleIdle()
			start := time.Now()
			progress2 = c.Poll(true)
			slept = time.Since(start)
		})
		if progress1 || progress2 || runs != 2 {
			t.Fatalf("idle BH: progress %v %v (want false false), runs %d (want 2)", progress1, progress2, runs)
		}
		if slept < 5*time.Millisecond {
			t.Fatalf("blocking Poll with only an idle BH returned after %v; it should sleep ~10ms", slept)
		}
	})
}

// B6: closing a Context with a BH that is scheduled but can never run (it
// reschedules itself forever) is reported; a BH scheduled normally before
// Stop runs and is not reported.
func TestB6LeakedBHReported(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		c := e.start(Options{}, nil)
		ranBeforeStop := false
		onOwner(t, c, hang, func() {
			var forever *BH
			forever = c.NewBH(func() { forever.Schedule() })
			forever.Schedule()
			c.NewBH(func() { ranBeforeStop = true }).Schedule()
		})
		rep, err := c.Stop()
		if !errors.Is(err, ErrLeaked) || rep.LeakedBHs != 1 {
			t.Fatalf("Stop: err %v, report %+v; want ErrLeaked with one leaked BH", err, rep)
		}
		if !ranBeforeStop {
			t.Fatal("a BH scheduled before Stop did not run")
		}
	})
}

// B7 (aio level): a node whose state has BHs pending on its old Context is
// moved between two IOThreads 1000 times while other goroutines load both.
// The block layer's switch is modelled as: quiesce (no new callbacks are
// scheduled for the node), wait from main until the node's in-flight count
// is zero, then "detach": a run-and-wait task on the old Context that polls
// it from its own thread until no progress (so its pending BHs — here the
// node's reusable "notify" BH — run there, never later elsewhere), switch,
// and "attach": re-create the notify BH on the new Context and schedule a
// re-entry there. Every callback must run exactly once, on the Context it
// was scheduled on, and no BH may be left at shutdown.
func TestB7DetachRunsOldBHsThenReschedules(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		checkLeak := leakCheck(t)
		main := e.start(Options{Name: "main", Main: true}, nil)
		io := []*Context{e.start(Options{Name: "io1"}, nil), e.start(Options{Name: "io2"}, nil)}
		type node struct {
			cur      int // index into io; changed by main while quiesced
			notify   *BH
			quiesced atomic.Bool
			inflight atomic.Int64
		}
		var nd node
		const ids = 1 << 20
		ran := make([]atomic.Int32, ids)
		var wrong, nextID, notifies, attaches, completed atomic.Int64
		var mu sync.Mutex // serialises the load goroutine's admission with quiesce

		makeNotify := func(ctx *Context) *BH {
			return ctx.NewBH(func() {
				if !ctx.InContext() {
					wrong.Add(1)
				}
				notifies.Add(1)
			})
		}
		nd.notify = makeNotify(io[0])

		stop := make(chan struct{})
		var wg sync.WaitGroup
		stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
		defer stopLoad()
		wg.Add(2)
		go func() { // node load: callbacks for the node on its current Context
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				mu.Lock()
				if nd.quiesced.Load() || nd.inflight.Load() >= 32 {
					mu.Unlock()
					time.Sleep(time.Microsecond)
					continue
				}
				nd.inflight.Add(1)
				ctx, notify := io[nd.cur], nd.notify
				mu.Unlock()
				id := nextID.Add(1) % ids
				ctx.Schedule(func() {
					if !ctx.InContext() {
						wrong.Add(1)
					}
					ran[id].Add(1)
					notify.Schedule() // node state left pending on this Context
					completed.Add(1)
					nd.inflight.Add(-1)
					main.Kick()
				})
			}
		}()
		go func() { // unrelated load on both IOThreads
			defer wg.Done()
			noop := func() {}
			for {
				select {
				case <-stop:
					return
				default:
				}
				io[0].Schedule(noop)
				io[1].Schedule(noop)
				time.Sleep(time.Microsecond)
			}
		}()

		switches := 1000
		if testing.Short() {
			switches = 200
		}
		onOwner(t, main, 60*time.Second, func() {
			for s := 0; s < switches; s++ {
				mu.Lock()
				nd.quiesced.Store(true)
				mu.Unlock()
				main.WaitWhile(func() bool { return nd.inflight.Load() > 0 })
				old, neu := io[nd.cur], io[1-nd.cur]
				old.Run(func() { // detach: drain the old loop from its own thread
					// Until no progress — bounded, because the unrelated load
					// keeps scheduling BHs there.
					for i := 0; i < 100 && old.Poll(false); i++ {
					}
					if nd.notify.Scheduled() {
						wrong.Add(1) // still pending on the old Context
					}
				})
				nd.cur = 1 - nd.cur
				nd.notify = makeNotify(neu)
				neu.Run(func() { // attach: re-enter on the new Context
					neu.Schedule(func() {
						if !neu.InContext() {
							wrong.Add(1)
						}
						attaches.Add(1)
					})
				})
				mu.Lock()
				nd.quiesced.Store(false)
				mu.Unlock()
				target := completed.Load() + 3 // some load between switches
				main.WaitWhile(func() bool { return completed.Load() < target })
			}
		})
		stopLoad()
		onOwner(t, main, hang, func() {
			main.WaitWhile(func() bool { return nd.inflight.Load() > 0 })
		})
		for _, c := range []*Context{io[0], io[1], main} {
			rep, err := c.Stop()
			if err != nil || rep.LeakedBHs != 0 {
				t.Fatalf("Stop(%s): %v, %+v", c.name, err, rep)
			}
		}
		n := nextID.Load()
		if n >= ids {
			t.Fatalf("%d callbacks overflow the %d-entry check table", n, ids)
		}
		for id := int64(1); id <= n; id++ {
			if ran[id].Load() != 1 {
				t.Fatalf("callback %d ran %d times", id, ran[id].Load())
			}
		}
		if wrong.Load() != 0 || attaches.Load() != int64(switches) || n < int64(switches) {
			t.Fatalf("wrong-Context runs %d, attaches %d of %d, callbacks %d", wrong.Load(), attaches.Load(), switches, n)
		}
		t.Logf("%d switches, %d node callbacks, %d notify BHs", switches, n, notifies.Load())
		checkLeak()
	})
}

func join(s []string) string { return strings.Join(s, ",") }

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
