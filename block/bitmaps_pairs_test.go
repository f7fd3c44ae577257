package block_test

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

// BenchmarkWrite4KRandomPairs: the tracking cost on the null node's 4 KiB
// random write path (as BenchmarkWrite4KRandom{NoBitmap,Bitmap}: two null
// nodes, one with a bitmap, front ends on one main Context) measured in
// one process: b.N pairs of 100k writes, the untracked and the
// tracked setup alternating which runs first, so both see the same load.
// Reported: the median ns per write of each side and the median of the
// per-pair ratios (tracked / untracked).
func BenchmarkWrite4KRandomPairs(b *testing.B) {
	const writes = 100000
	// One Env, so both sides run on the same main Context (thread).
	e := blocktest.NewEnv(b, 0)
	const size = 1 << 30
	var ws [2]*writer
	for i, name := range []string{"untracked", "tracked"} {
		n := e.Open(&blocktest.Null{Size: size}, block.Options{Name: name})
		if i == 1 {
			if _, err := n.AddBitmap("dirty", 65536); err != nil {
				b.Fatal(err)
			}
		}
		fe := e.FrontEnd("fe-"+name, n, block.FrontEndOptions{})
		n.Unref()
		defer fe.Close()
		ws[i] = &writer{q: fe.Queue(e.Main), buf: make([]byte, 4096), rng: rand.New(rand.NewPCG(1, 1)), size: size}
	}
	run := func(tracked bool) float64 {
		w := ws[0]
		if tracked {
			w = ws[1]
		}
		var d time.Duration
		e.OnMain(func() {
			t0 := time.Now()
			w.run(e.Main, writes, 32)
			d = time.Since(t0)
		})
		return float64(d.Nanoseconds()) / writes
	}
	run(false)
	run(true)
	var nsU, nsT, ratios []float64
	b.ResetTimer()
	for p := 0; p < b.N; p++ {
		var u, t float64
		if p%2 == 0 {
			u, t = run(false), run(true)
		} else {
			t, u = run(true), run(false)
		}
		nsU, nsT, ratios = append(nsU, u), append(nsT, t), append(ratios, t/u)
	}
	b.StopTimer()
	med := func(v []float64) float64 {
		slices.Sort(v)
		return v[len(v)/2]
	}
	b.ReportMetric(med(nsU), "untracked-ns/write")
	b.ReportMetric(med(nsT), "tracked-ns/write")
	b.ReportMetric(med(ratios), "ratio")
}
