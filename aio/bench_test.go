package aio

import (
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringblk/ringblk/uring/uringtest"
)

// nopSink is a Done that counts; a package-level value so passing it never
// allocates.
type nopSink struct{ n int }

func (s *nopSink) OpDone(uint64, int, error) { s.n++ }

// batch32 issues 32 NOPs in one plugged batch and polls until all 32
// callbacks ran: prepare, submit (one enter), CQE, callback.
func batch32(c *Context, s *nopSink) {
	want := s.n + 32
	c.Plug()
	for i := 0; i < 32; i++ {
		c.Nop(s, uint64(i))
	}
	c.Unplug()
	for s.n < want {
		c.Poll(true)
	}
}

// The hot paths allocate nothing: op submit and complete, BH schedule and
// run, one-shot Schedule and run, a read into a preallocated buffer.
func TestZeroAllocHotPaths(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates (and drops sync.Pool entries)")
	}
	forEachRing(t, func(t *testing.T, e *env) {
		var q *uringtest.Ring
		if e.kind == "fake" {
			q = e.fake(uringtest.Options{NoLog: true})
		}
		var qi = any(q)
		_ = qi
		c := e.start(Options{}, nil)
		if q != nil {
			c = e.start(Options{}, q)
		}
		f := e.testFile(8192, q)
		results := map[string]float64{}
		onOwner(t, c, time.Minute, func() {
			s := &nopSink{}
			bh := c.NewBH(func() { s.n++ })
			fn := func() { s.n++ }
			buf := make([]byte, 4096)
			read := func() {
				want := s.n + 1
				c.Read(f, buf, 4096, s, 0)
				for s.n < want {
					c.Poll(true)
				}
			}
			for i := 0; i < 100; i++ { // warm up: slots, slices, pool
				batch32(c, s)
				c.Schedule(fn)
				c.Poll(false)
				read()
			}
			results["nop batch of 32"] = testing.AllocsPerRun(200, func() { batch32(c, s) })
			results["BH schedule+run"] = testing.AllocsPerRun(1000, func() { bh.Schedule(); c.Poll(false) })
			results["one-shot Schedule+run"] = testing.AllocsPerRun(1000, func() { c.Schedule(fn); c.Poll(false) })
			results["read"] = testing.AllocsPerRun(200, read)
		})
		for what, n := range results {
			if n != 0 {
				t.Errorf("%s: %v allocs/op, want 0", what, n)
			}
		}
	})
}

func benchCtx(b *testing.B, kind string) *Context {
	t := &testing.T{}
	_ = t
	o := Options{CPU: NoCPU}
	if kind == "fake" {
		o.Queue = uringtest.New(uringtest.Options{NoLog: true})
	} else if kernelRingErr != nil {
		b.Skip(kernelRingErr)
	}
	c, err := New(o)
	if err != nil {
		b.Fatal(err)
	}
	if err := c.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Stop() })
	return c
}

func runOnOwner(c *Context, fn func()) {
	done := make(chan struct{})
	c.Schedule(func() { fn(); close(done) })
	<-done
}

// BenchmarkBHScheduleRun: a reusable BH scheduled and run by the owner
// (Schedule, then one non-blocking Poll that runs it).
func BenchmarkBHScheduleRun(b *testing.B) {
	for _, kind := range ringKinds {
		b.Run(kind, func(b *testing.B) {
			c := benchCtx(b, kind)
			runOnOwner(c, func() {
				n := 0
				bh := c.NewBH(func() { n++ })
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					bh.Schedule()
					c.Poll(false)
				}
				b.StopTimer()
			})
		})
	}
}

// BenchmarkScheduleOneShot: Context.Schedule(fn) and its run, by the owner.
func BenchmarkScheduleOneShot(b *testing.B) {
	for _, kind := range ringKinds {
		b.Run(kind, func(b *testing.B) {
			c := benchCtx(b, kind)
			runOnOwner(c, func() {
				n := 0
				fn := func() { n++ }
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					c.Schedule(fn)
					c.Poll(false)
				}
				b.StopTimer()
			})
		})
	}
}

// BenchmarkNopRoundTrip: a no-op op through the Context — prepare, submit
// (one io_uring_enter per batch of 32), CQE, callback — per op.
func BenchmarkNopRoundTrip(b *testing.B) {
	for _, kind := range ringKinds {
		b.Run(kind, func(b *testing.B) {
			c := benchCtx(b, kind)
			runOnOwner(c, func() {
				s := &nopSink{}
				for i := 0; i < 100; i++ {
					batch32(c, s)
				}
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i += 32 {
					batch32(c, s)
				}
				b.StopTimer()
			})
		})
	}
}

// BenchmarkWakeLatency: another goroutine schedules a BH on a Context whose
// owner sleeps in the ring; reports the time until the BH runs (p50, p99).
func BenchmarkWakeLatency(b *testing.B) {
	for _, kind := range ringKinds {
		b.Run(kind, func(b *testing.B) {
			c := benchCtx(b, kind)
			lat := make([]time.Duration, 0, b.N)
			var ranAt atomic.Int64
			ran := make(chan struct{}, 1)
			// The owner stamps the time; the producer then blocks on a
			// channel rather than spinning, so it does not hold one of the
			// Ps the waking owner thread needs.
			fn := func() { ranAt.Store(nanotime()); ran <- struct{}{} }
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				time.Sleep(100 * time.Microsecond) // let the owner go to sleep
				b.StartTimer()
				start := nanotime()
				c.Schedule(fn)
				<-ran
				lat = append(lat, time.Duration(ranAt.Load()-start))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
		})
	}
}

// BenchmarkCoSwitch: one enter/yield round trip of a coroutine, driven by
// the owner (Wake schedules its BH; the non-blocking Poll runs the BH,
// which enters the coroutine until it yields again). The cost of every
// slow-path step of a driver (a qcow2 L2 miss, an allocation).
func BenchmarkCoSwitch(b *testing.B) {
	for _, kind := range ringKinds {
		b.Run(kind, func(b *testing.B) {
			c := benchCtx(b, kind)
			runOnOwner(c, func() {
				stop := false
				n := 0
				co := c.Go(func(co *Co) {
					for !stop {
						n++
						co.Yield()
					}
				})
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					co.Wake()
					c.Poll(false)
				}
				b.StopTimer()
				stop = true
				co.Wake()
				c.Poll(false)
				if n < b.N {
					b.Fatalf("coroutine ran %d times for %d wakes", n, b.N)
				}
			})
		})
	}
}
