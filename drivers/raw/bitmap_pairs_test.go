package raw_test

import (
	"fmt"
	"slices"
	"testing"
)

// pairWrites is the length of one side of one pair of
// BenchmarkTrackedWritePairs.
const pairWrites = 20000

// BenchmarkTrackedWritePairs: the cost of dirty-bitmap tracking on a real
// write path: 4 KiB random writes at queue depth 32 through the raw
// driver on a 64 MiB file under /var/tmp (ext4 here), buffered and
// O_DIRECT. Two setups, each on its own file, one with a bitmap (64 KiB
// granularity) on its node, run alternately — b.N pairs of pairWrites
// writes per side, the first side alternating — so both sides see the
// same machine load. Reported: the median ns per write of each side and
// the median of the per-pair ratios (tracked / untracked).
func BenchmarkTrackedWritePairs(b *testing.B) {
	for _, direct := range []bool{false, true} {
		b.Run(fmt.Sprintf("direct=%v", direct), func(b *testing.B) {
			var side [2]*benchSetup
			for i := range side {
				path, _ := image(b, 64<<20, uint64(i+1))
				side[i] = newBench(b, benchSpec{file: path, rw: "randwrite", bs: 4096, qd: 32, jobs: 1, direct: direct})
				if i == 1 {
					if _, err := side[i].fe.Root().AddBitmap("dirty", 64<<10); err != nil {
						b.Fatal(err)
					}
				}
				side[i].runFor(0, 2000)
			}
			var ns [2][]float64
			var ratios []float64
			b.ResetTimer()
			for p := 0; p < b.N; p++ {
				var t [2]float64
				for k := 0; k < 2; k++ {
					i := (p + k) % 2
					res := side[i].runFor(0, pairWrites)
					if res.Errors > 0 {
						b.Fatalf("%d write errors: %v", res.Errors, side[i].jobs[0].err)
					}
					t[i] = res.Secs * 1e9 / float64(res.IOs)
				}
				ns[0], ns[1] = append(ns[0], t[0]), append(ns[1], t[1])
				ratios = append(ratios, t[1]/t[0])
			}
			b.StopTimer()
			if bm := side[1].fe.Root().Bitmap("dirty"); bm.Count() == 0 {
				b.Fatal("tracked side marked nothing")
			}
			b.ReportMetric(median(ns[0]), "untracked-ns/write")
			b.ReportMetric(median(ns[1]), "tracked-ns/write")
			b.ReportMetric(median(ratios), "ratio")
		})
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}
