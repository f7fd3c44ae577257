package block_test

import (
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

// TestThrottleGroupRoundRobin: two front ends share a throttle group; one
// floods it with small writes, the other then sends two writes larger than
// the burst (each must wait for an empty bucket). Without turns the
// flooder's backlog keeps the bucket from ever emptying and the light front
// end waits for all of it. The group serves waiting members in turn (QEMU's
// throttle-groups round robin) and admits only the member whose turn it is,
// so the light front end finishes after a bounded number of the flooder's
// requests.
func TestThrottleGroupRoundRobin(t *testing.T) {
	for _, c := range []struct {
		name    string
		ioFlood bool // the flooder submits from an IOThread
	}{{"same-context", false}, {"cross-context", true}} {
		t.Run(c.name, func(t *testing.T) {
			e := blocktest.NewEnv(t, 1)
			tg := block.NewThrottleGroup("g", block.ThrottleLimits{BPSTotal: 16 << 20, BPSTotalBurst: 64 << 10}, nil)
			mk := func(name string, ctx *aio.Context, drv block.Driver) (*block.FrontEnd, *block.Queue) {
				n := e.Open(drv, block.Options{Name: name + "-node"})
				fe := e.FrontEnd(name, n, block.FrontEndOptions{AllowContextChange: true})
				n.Unref()
				if ctx != e.Main {
					if err := fe.SetContext(ctx); err != nil {
						t.Fatal(err)
					}
				}
				fe.SetThrottle(tg)
				return fe, fe.Queue(ctx)
			}
			floodCtx := e.Main
			if c.ioFlood {
				floodCtx = e.IO[0]
			}
			hd := blocktest.NewDriver(1 << 20) // counts the writes that got through
			heavy, hq := mk("heavy", floodCtx, hd)
			light, lq := mk("light", e.Main, &blocktest.Null{Size: 1 << 20})

			const flood, few = 64, 2
			var heavyDone, lightDone atomic.Int64 // completions
			var heavyAtLight [few]int64
			small, big := make([]byte, 4<<10), make([]byte, 128<<10)
			var early, atJoin int64
			e.On(floodCtx, func() {
				for i := 0; i < flood; i++ {
					hq.Write(small, 0, 0, &funcDone{fn: func(error) { heavyDone.Add(1) }}, 0)
				}
				early = int64(flood - hq.Throttled()) // admitted before anyone waited
			})
			e.OnMain(func() {
				atJoin = hd.Writes.Load() // the flooder's requests through so far
				for i := 0; i < few; i++ {
					lq.Write(big, 0, 0, &funcDone{fn: func(error) {
						heavyAtLight[lightDone.Load()] = hd.Writes.Load()
						lightDone.Add(1)
					}}, 0)
				}
			})
			e.WaitFor("all requests", func() bool { return heavyDone.Load() == flood && lightDone.Load() == few })
			// Alternating turns: from the moment the light front end
			// joins, at most `few` of the flooder's requests pass before
			// its last one (+1: the flooder may hold the turn as it joins).
			if early < 1 || atJoin >= flood-few-1 {
				t.Fatalf("%d flooding requests admitted at once, %d before the light one joined: the test does not throttle", early, atJoin)
			}
			if got := heavyAtLight[few-1] - atJoin; got > few+1 {
				t.Fatalf("light front end finished after %d more of the flooder's requests (%d through when it joined, %v): starved", got, atJoin, heavyAtLight)
			}
			if c.ioFlood {
				if err := heavy.SetContext(e.Main); err != nil {
					t.Fatal(err)
				}
			}
			heavy.Close()
			light.Close()
		})
	}
}

// TestThrottleGroupDrainReleasesMember: draining one member of a group
// releases its throttled requests at once while the other member keeps
// being throttled and then completes (seed 003 with a group).
func TestThrottleGroupDrainReleasesMember(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	tg := block.NewThrottleGroup("g", block.ThrottleLimits{IOPSTotal: 20, IOPSTotalBurst: 1}, nil)
	var fes []*block.FrontEnd
	var nodes []*block.Node
	for _, name := range []string{"a", "b"} {
		n := e.Open(&blocktest.Null{Size: 1 << 20}, block.Options{Name: name})
		fe := e.FrontEnd(name, n, block.FrontEndOptions{})
		n.Unref()
		fe.SetThrottle(tg)
		fes = append(fes, fe)
		nodes = append(nodes, n)
	}
	qa, qb := fes[0].Queue(e.Main), fes[1].Queue(e.Main)
	var aDone, bDone int
	var took time.Duration
	var bThrottled int
	buf := make([]byte, 512)
	e.OnMain(func() {
		for i := 0; i < 4; i++ {
			qa.Write(buf, 0, 0, &funcDone{fn: func(error) { aDone++ }}, 0)
			qb.Write(buf, 0, 0, &funcDone{fn: func(error) { bDone++ }}, 0)
		}
		start := time.Now()
		nodes[0].DrainedBegin()
		took = time.Since(start)
		bThrottled = qb.Throttled()
		nodes[0].DrainedEnd()
		e.Main.WaitWhile(func() bool { return bDone < 4 })
	})
	if aDone != 4 || took > 100*time.Millisecond {
		t.Fatalf("drain of a finished %d of its requests in %v: throttled requests waited for their turn", aDone, took)
	}
	if bThrottled == 0 {
		t.Fatal("b was released by a's drain: throttling is off only for the drained member")
	}
	if bDone != 4 {
		t.Fatalf("b finished %d of 4", bDone)
	}
	for _, fe := range fes {
		fe.Close()
	}
}

// TestThrottleWaitNeverOverflows: a wait longer than an int64 of
// nanoseconds (a 1 TiB read at 1 byte/s, any request at a rate far below
// one per second) is a long wait, re-checked at most an hour later, not a
// tiny one: the conversion of the seconds to a Duration overflowed to a
// negative number, taken as "1µs", and the queue's timer then fired every
// microsecond for ever. A NaN rate, which the block API takes, made the
// bucket's level NaN and every request wait the same way; it is no limit,
// as a zero or negative rate is.
func TestThrottleWaitNeverOverflows(t *testing.T) {
	now := time.Unix(1000, 0)
	clock := func() time.Time { return now }
	for _, c := range []struct {
		name  string
		l     block.ThrottleLimits
		write bool
		n     int64
	}{
		{"1 TiB at 1 B/s", block.ThrottleLimits{BPSTotal: 1}, false, 1 << 40},
		{"QEMU's largest burst at 1 B/s", block.ThrottleLimits{BPSWrite: 1, BPSWriteBurst: 1e15}, true, 1 << 40},
		{"1e-300 IOPS", block.ThrottleLimits{IOPSTotal: 1e-300}, false, 512},
		{"1e-12 B/s", block.ThrottleLimits{BPSRead: 1e-12}, false, 512},
	} {
		tg := block.NewThrottleGroup("g", c.l, clock)
		if d := tg.Admit(c.write, c.n); d != 0 {
			t.Fatalf("%s: the first request waits %v (an empty bucket takes any one)", c.name, d)
		}
		admitted := 1
		for ; admitted < 2000 && tg.Admit(c.write, c.n) == 0; admitted++ {
		} // the burst's worth
		if admitted == 2000 {
			t.Fatalf("%s: 2000 requests admitted without a wait", c.name)
		}
		for i := 0; i < 3; i++ {
			d := tg.Admit(c.write, c.n)
			if d < time.Hour {
				t.Fatalf("%s: the next request waits %v, want a long wait (at least the hour before a re-check)", c.name, d)
			}
			now = now.Add(d) // the re-check finds it still waiting
		}
	}
	for _, rate := range []float64{math.NaN(), -1, math.Inf(-1)} {
		tg := block.NewThrottleGroup("g", block.ThrottleLimits{IOPSTotal: rate, BPSTotal: rate}, clock)
		for i := 0; i < 5; i++ {
			now = now.Add(time.Second)
			if d := tg.Admit(false, 4096); d != 0 {
				t.Fatalf("rate %v: request %d waits %v, want no limit", rate, i, d)
			}
		}
	}
	for _, l := range []block.ThrottleLimits{{IOPSTotal: math.NaN()}, {BPSRead: -1}, {BPSWriteBurst: 2e15}, {IOPSWrite: math.Inf(1)}} {
		if err := l.Check(); err == nil || err.Error() != "bps/iops/max values must be within [0, 1000000000000000]" {
			t.Errorf("Check(%+v): %v, want QEMU's range error", l, err)
		}
	}
	if err := (block.ThrottleLimits{BPSTotal: 1e15, IOPSTotalBurst: 1e15, IOPSRead: 1}).Check(); err != nil {
		t.Errorf("Check of QEMU's largest values: %v", err)
	}
}
